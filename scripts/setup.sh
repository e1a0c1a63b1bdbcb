#!/usr/bin/env bash
# Set-up on a fresh machine, safe to run again: a virtual environment in .venv that also sees the
# system's packages (so a torch already installed there, a GPU user's own, is used and left alone),
# a CPU torch only when none is importable, triton, and aefast with its compiled extension and the
# test tools. The extension is rebuilt only when its sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."

outer_python=${PYTHON:-python3}
site_of() { "$1" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
if [ ! -x .venv/bin/python ]; then
  "$outer_python" -m venv --system-site-packages .venv
  # A torch in the environment .venv is made from (an active virtualenv or conda env: a GPU user's
  # own build) stays in use: that environment's packages go on .venv's path, after its own.
  if "$outer_python" -c "import torch" 2>/dev/null && [ "$(site_of "$outer_python")" != "$(site_of .venv/bin/python)" ]; then
    site_of "$outer_python" > "$(site_of .venv/bin/python)/aefast-outer-environment.pth"
  fi
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # Pinned: an open "torch" requirement takes the newest release with several GB of CUDA packages.
  pip install -q "torch==${AEFAST_TORCH_VERSION:-2.13.0}"
fi
if ! .venv/bin/python -c "import triton" 2>/dev/null; then
  pip install -q "triton>=3.0"
fi

# The extension's build inputs; Python edits need no reinstall (the install is editable).
stamp=$(cat setup.py pyproject.toml CMakeLists.txt $(find csrc -type f | sort) | sha256sum | cut -c1-16)
if [ "$(cat .venv/aefast-build-stamp 2>/dev/null)" != "$stamp" ] || ! .venv/bin/python -c "import aefast._C" 2>/dev/null; then
  pip install -q -e ".[test]"
  echo "$stamp" > .venv/aefast-build-stamp
fi
.venv/bin/python -c "
import aefast, torch
from aefast import _backends
cuda = _backends.compiled_module().build_info()['cuda']
print(f'aefast {aefast.__version__} ready: torch {torch.__version__}, CUDA kernels built: {cuda}')"

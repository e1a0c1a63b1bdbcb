#!/usr/bin/env bash
# The Triton tests that depend on Triton's version, run again with triton 3.6, the release on the lent
# GPU machines (.venv has the newest): every kernel compiled for sm_90 in every configuration its
# launcher picks, which must not spill (register use differs between releases: the narrow MLP kernels
# took 112 registers a thread with 3.9 and 127 with 3.6 in one case), every kernel through 3.6's own
# launch path on a fake GPU (tests/fake_gpu.py, which leans on Triton's driver interface) and aefast's
# shorter one past it (aefast/_triton_launch.py, which passes 3.6's launcher its arguments), the Philox
# and math helpers in 3.6's interpreter, and the backends' reading of TRITON_INTERPRET against 3.6's own. Needs
# scripts/setup.sh first. triton 3.6 and numpy<2.4 (3.6's interpreter converts 1-element arrays to
# scalars, which NumPy 2.4 refuses) go into .triton36/, put in front of .venv's packages for these
# tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."

is_triton36() { PYTHONPATH=$1 .venv/bin/python -c "import triton; assert triton.__version__.startswith('3.6.')" 2>/dev/null; }
overlay=.triton36
if is_triton36 ""; then
  overlay=""  # .venv has triton 3.6 itself (a GPU machine's environment): nothing to install
elif ! is_triton36 "$overlay"; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$overlay" \
    "triton==3.6.*" "numpy<2.4"
fi
PYTHONPATH=$overlay .venv/bin/python -c "import triton, numpy; print(f'triton {triton.__version__}, numpy {numpy.__version__}')"
PYTHONPATH=$overlay .venv/bin/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider \
  tests/mlp/test_compiled_kernels.py tests/willshaw/test_compiled_kernels.py tests/vae/test_compiled_kernels.py \
  tests/test_compiled_fill.py \
  tests/test_triton_random.py tests/test_triton_math.py tests/test_philox_tail.py tests/test_backends.py \
  tests/test_launch_path.py tests/test_triton_launch.py

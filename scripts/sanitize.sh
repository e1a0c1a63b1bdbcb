#!/usr/bin/env bash
# The C++-backed tests under AddressSanitizer + UndefinedBehaviorSanitizer (issue 8).
#
# A copy of the working tree is built with AEFAST_SANITIZE=1 (CPU only: ASan does not cover CUDA
# kernels) into .sanitize/, and the tests that reach csrc/ run against it with the sanitizer runtimes
# preloaded (python itself is not instrumented, so ASan must come first in the process). Any report
# aborts the test process (-fno-sanitize-recover), so a clean exit means the sanitizers found nothing.
# Left out, as they reach no C++ of ours: the Triton cases (they run in the interpreter), the cases the
# backend fixtures force onto the reference (plain torch), and the sm_90 compile checks (Triton's
# compiler and nvcc, in child processes).
# Needs scripts/setup.sh to have made .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

copy=.sanitize
mkdir -p "$copy"
# Tracked and new (not ignored) files, so uncommitted edits are checked too.
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$copy"
if ! (cd "$copy" && AEFAST_SANITIZE=1 AEFAST_CUDA=0 ../.venv/bin/python setup.py -q build_ext --inplace \
      >build.log 2>&1); then
  tail -n 40 "$copy/build.log"
  echo "sanitize.sh: the sanitizer build failed (log: $copy/build.log)" >&2
  exit 1
fi

runtimes="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
cd "$copy"
# detect_leaks=0: CPython and torch keep allocations alive until exit by design; those are not ours.
export PYTHONPATH="$PWD"
LD_PRELOAD="$runtimes" ASAN_OPTIONS=detect_leaks=0 ../.venv/bin/python -c \
  "import aefast._C as c, sys; sys.exit(0 if '/.sanitize/' in c.__file__ else f'not the sanitizer build: {c.__file__}')"
LD_PRELOAD="$runtimes" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ../.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not gpu" -k "not triton" \
  --skip-backend reference --ignore tests/vae/test_compiled_kernels.py --ignore tests/willshaw/test_compiled_kernels.py \
  tests/willshaw tests/vae tests/test_backends.py tests/test_compiled_inputs.py "$@"

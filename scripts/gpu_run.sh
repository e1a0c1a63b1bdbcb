#!/usr/bin/env bash
# What a session with a lent GPU runs, in one call: build aefast with CUDA, the gpu-marked tests, the
# benchmarks (pytest-benchmark JSON under benchmarks/results/, named by date and GPU), the Willshaw
# capacity experiment at n = 10^6, and its scaling experiment up to n = 2^19. Logs go to runs/gpu/; everything is packed into
# ${OUT:-runs/gpu-out}/gpu-run.tar.gz after each step, so a run cut short still returns what it did.
#
#   bash scripts/gpu_run.sh [step ...]     steps: build tests vae willshaw models mlp million scaling rest profile
#
# A step is cut at its own limit and at AEFAST_GPU_DEADLINE seconds after the start (default 570), so
# the whole run ends inside one 10-minute call. Run it on a machine with torch, triton and nvcc:
# `build` installs aefast there with --no-build-isolation --no-deps.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-runs/gpu-out}
work=runs/gpu
mkdir -p "$out" "$work" benchmarks/results
export PYTHONUNBUFFERED=1
started=$(date +%s)
deadline=${AEFAST_GPU_DEADLINE:-570}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z-')
tag="$(date +%F)_${gpu}"

pack() {
  tar czf "$out/gpu-run.tar.gz" "$work" $(ls benchmarks/results/"${tag}"_* 2>/dev/null) 2>/dev/null
}

# step NAME LIMIT COMMAND: run the shell command COMMAND (it may call the functions below) with its
# output in runs/gpu/NAME.log, cut at the limit.
step() {
  local name=$1 limit=$2 command=$3 left
  left=$((deadline - ($(date +%s) - started)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, no time left"
    return
  fi
  local begin=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" bash -c "$command" >"$work/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - begin)) s (limit $limit s)"
  tail -n "${AEFAST_GPU_TAIL:-15}" "$work/$name.log"
  pack
}

bench() {
  local component=$1
  (cd benchmarks && "$python" -m pytest "bench_${component}.py" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json "results/${tag}_bench_${component}.json")
}

info() {
  nvidia-smi
  "$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  nvcc --version | tail -2
}

million() {
  # The seeds' example: n = 10^6 units, M = 18 ones, capacity L = ln2 n^2 / M^2 = 2.14e9 pairs.
  "$python" -m aefast.cli willshaw capacity --n 1000000 --ones 18 --seed 0 --device cuda --queries 2000 \
    --pairs "${AEFAST_MILLION_PAIRS:-100000000,500000000,1000000000,1500000000,2139000000}" --out "$work/willshaw-million"
}

scaling() {
  # Bits per synapse at capacity and recalls per second against n, past what a CPU reaches (2^16).
  "$python" -m aefast.cli willshaw scaling --n "${AEFAST_SCALING_N:-524288}" --seed 0 --device cuda \
    --out "$work/willshaw-scaling"
}

export -f bench info million scaling
export python tag work

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build tests vae willshaw models mlp million scaling)
step info 30 info
for name in "${steps[@]}"; do
  case $name in
    build)
      step build 240 'CUDAARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 "$python" -m pip install --no-build-isolation --no-deps -e .'
      step aefast-info 60 '"$python" -m aefast.cli info' ;;
    tests) step tests 240 '"$python" -m pytest tests -m gpu -q -p no:cacheprovider -n 8 -rfEs -W ignore::pytest_benchmark.logger.PytestBenchmarkWarning' ;;
    rest) step tests-rest 300 'OMP_NUM_THREADS=1 "$python" -m pytest tests -m "not gpu" -q -p no:cacheprovider -n 14 -rfE -W ignore::pytest_benchmark.logger.PytestBenchmarkWarning' ;;
    vae|willshaw|models|mlp) step "bench-$name" 400 "bench $name" ;;
    million) step million 400 million ;;
    scaling) step scaling 400 scaling ;;
    profile) step profile 300 '"$python" benchmarks/profile_kernels.py ${AEFAST_PROFILE:-}' ;;
    *) echo "unknown step $name" >&2; exit 2 ;;
  esac
done
pack
echo "== done after $(($(date +%s) - started)) s"

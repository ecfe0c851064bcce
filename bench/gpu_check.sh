#!/usr/bin/env bash
# Every GPU check in one run, for a machine lent for minutes: each step under its own time
# limit, its whole output in LOGDIR, a step that fails or runs out of time noted and the next
# one run. Python packages the checks need: torch with CUDA, triton, gguf, ggml-python.
#
#   [BENCH_STEPS=convert,sweep] bench/gpu_check.sh LOGDIR
#
# 1. the CUDA tests: the GPU's bytes equal the CPU's and ggml's, chunk ends and odd shapes;
# 2. bench/gpu.py: codecs vs ggml's C, convert at 6.9 bpw, the cost sweep; ends with one JSON
#    line, copied to LOGDIR/gpu.json (also when a step fails or runs out of time).
# Seen on an H200 (2026-12-04): the codecs step plus the tests take over 400 s of a 600 s call,
# so a lease that has the codec figures already runs BENCH_STEPS=convert,sweep.
set -uo pipefail
log=${1:?usage: bench/gpu_check.sh LOGDIR}
cd "$(dirname "$0")/.."
mkdir -p "$log"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" >"$log/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc$([ $rc = 124 ] && echo ', out of time')"
  tail -n 8 "$log/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$log/device.txt"
# The tests' CPU side (torch's codecs on 3072-row corpora) dominates: one test takes ~20 s on
# one process, so they run over 8 workers of 2 threads each where pytest-xdist is installed.
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
OMP_NUM_THREADS=2 step cuda_tests 200 python3 -m pytest -q -p no:cacheprovider $workers tests/test_codecs.py -k cuda
step gpu_bench 330 python3 bench/gpu.py --steps "${BENCH_STEPS:-codecs,convert,sweep}" --workdir "${TMPDIR:-/tmp}/mxgguf-gpu-bench"
grep '^{' "$log/gpu_bench.log" | tail -n 1 >"$log/gpu.json"

#!/usr/bin/env bash
# GPU check, run on a lent H100/H200 through the device tool (README "Benchmarks"):
#   builds udm_fast._C against that machine's own torch (2.11, Python 3.12), runs the GPU tests and
#   the benchmarks, and writes JSON/XML/logs under $OUT. Budget: about 8 minutes.
# Needs compressai (no cp312 wheel there): carry its sdist in .whl/ (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --no-binary :all: -d .whl compressai==1.2.8
# then call the device tool with carry [".whl"] and command "bash bench/device_check.sh".
set -uo pipefail
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
log() { echo "[device_check $(date +%T)] $*"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'triton', triton.__version__, 'python', sys.version.split()[0], 'gpu', torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/device.txt"

if ! python3 -c "import compressai" 2>/dev/null; then
  if ls .whl/compressai-*.tar.gz >/dev/null 2>&1; then
    log "building compressai from the carried sdist"
    python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site .whl/compressai-*.tar.gz \
      > "$OUT/compressai_build.log" 2>&1 && export PYTHONPATH="/tmp/site:$PYTHONPATH" || log "compressai build failed (tests needing it skip)"
  else
    log "compressai not carried: tests needing it skip"
  fi
fi

log "building the extension (sm_90)"
start=$(date +%s)
if ! UDM_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 timeout 300 python3 setup.py build_ext --inplace \
    > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"; log "build failed"; exit 1
fi
log "built in $(( $(date +%s) - start )) s"
python3 -c "import udm_fast, json; print(json.dumps(udm_fast.build_info(), indent=1))" | tee "$OUT/build_info.json"

log "GPU tests"
timeout 100 python3 -m pytest tests -q -m gpu -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -15

# benchmarks: one JSON per suite, each under its own time limit
bench() {  # name, seconds, pytest arguments...
  local name=$1 seconds=$2; shift 2
  log "benchmarks: $name"
  timeout "$seconds" python3 -m pytest "$@" -q -p no:cacheprovider --benchmark-only \
    --benchmark-json="$OUT/bench_$name.json" --benchmark-max-time=0.5 2>&1 | tail -3
  [ -s "$OUT/bench_$name.json" ] && python3 bench/summarize.py "$OUT/bench_$name.json" >> "$OUT/bench_summary.md"
}
UDM_FAST_BENCH_LAYERS=quick bench layers 100 bench/test_bench_layers.py
bench train 90 bench/test_bench_train.py -k cuda
bench coder 30 bench/test_bench_coder.py -k cuda
bench degrade 20 bench/test_bench_degrade.py -k cuda
cat "$OUT/bench_summary.md" 2>/dev/null
log "done"

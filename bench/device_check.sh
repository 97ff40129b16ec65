#!/usr/bin/env bash
# GPU check, run on a lent H100/H200 through the device tool (README "Benchmarks"): uses or builds
# udm_fast._C for that machine's own torch (2.11, Python 3.12), runs the GPU tests and the benchmarks
# in order of importance, and writes JSON/XML/logs under $OUT. Steps start only while the time
# budget (BUDGET_S, default 500 s; call the tool with timeout_s ~570) lasts, each capped to what is left.
#
# Before the call, on the workstation:
#   * compressai (no cp312 wheel there): carry its sdist
#       python3 -m pip download --no-deps --no-binary :all: -d .whl compressai==1.2.8
#   * optional, saves the 2-3 min build there: a prebuilt extension, from a Python 3.12 venv holding
#     the GPU machine's torch (e.g. pip install torch==2.11.0); used only when built from these very
#     sources against that same torch version, else the script builds as usual:
#       bash bench/device_check.sh --prebuild /path/to/py312-venv/bin/python
# then call the device tool with carry [".whl", ".device_prebuilt"] and "bash bench/device_check.sh".
set -uo pipefail
cd "$(dirname "$0")/.."

# digest of everything the extension is built from (same command here and there)
source_digest() {
  find csrc kernels setup.py -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name 'setup.py' \) \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}
build_ext() {  # python, jobs
  UDM_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$2 "$1" setup.py build_ext --inplace
}
ext_name() { "$1" -c "import sysconfig; print('_C' + sysconfig.get_config_var('EXT_SUFFIX'))"; }
torch_version() { "$1" -c "import torch; print(torch.__version__)"; }

if [ "${1:-}" = "--prebuild" ]; then
  py=${2:?usage: bash bench/device_check.sh --prebuild PYTHON}
  build_ext "$py" "${MAX_JOBS:-2}" || exit 1
  mkdir -p .device_prebuilt && rm -f .device_prebuilt/*
  cp "udm_fast/$(ext_name "$py")" .device_prebuilt/ || exit 1
  echo "$(source_digest) $(torch_version "$py")" > .device_prebuilt/stamp
  echo "prebuilt $(ext_name "$py") for torch $(torch_version "$py"); carry .device_prebuilt"
  exit 0
fi

OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
BUDGET_S=${BUDGET_S:-500}
T0=$(date +%s)
log() { echo "[device_check +$(( $(date +%s) - T0 ))s] $*"; }
# seconds a step may run: its own limit, capped to the budget left; 0 when under 15 s are left
limit() { local left=$(( BUDGET_S - ($(date +%s) - T0) )); (( left < 15 )) && left=0; (( $1 < left )) && left=$1; echo "$left"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'python', sys.version.split()[0], 'gpu', torch.cuda.get_device_name())"
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

use_prebuilt() {
  local so; so=$(ext_name python3)
  [ -f .device_prebuilt/stamp ] || { log "no prebuilt extension carried"; return 1; }
  [ -f ".device_prebuilt/$so" ] || { log "prebuilt: no $so for this Python"; return 1; }
  [ "$(cat .device_prebuilt/stamp)" = "$(source_digest) $(torch_version python3)" ] \
    || { log "prebuilt: stale (stamp $(cat .device_prebuilt/stamp), here $(source_digest) $(torch_version python3))"; return 1; }
  cp ".device_prebuilt/$so" "udm_fast/$so"
  python3 -c "import sys, udm_fast._C as c; i = c.compiled_info(); sys.exit(0 if i['cuda_compiled'] and '9.0' in i['cuda_reason'] else 1)" \
    && { log "using the prebuilt extension"; return 0; }
  log "prebuilt: does not load or lacks sm_90 here"; rm -f "udm_fast/$so"; return 1
}
if ! use_prebuilt; then
  log "building the extension (sm_90)"
  if ! timeout 300 bash -c "$(declare -f build_ext); build_ext python3 16" > "$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"; log "build failed"; exit 1
  fi
  log "built"
fi
python3 -c "import udm_fast, json; print(json.dumps(udm_fast.build_info(), indent=1))" | tee "$OUT/build_info.json"

XDIST=""
python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
tests() {  # name, seconds, pytest arguments...
  local name=$1 seconds; seconds=$(limit "$2"); shift 2
  (( seconds > 0 )) || { log "skipped tests: $name (budget)"; return; }
  log "tests: $name (limit ${seconds}s)"
  timeout "$seconds" python3 -m pytest "$@" $XDIST -v -p no:cacheprovider --junitxml="$OUT/tests_$name.xml" \
    > "$OUT/tests_$name.log" 2>&1
  (( $? == 124 )) && log "tests: $name stopped at its time limit (per-test lines are in tests_$name.log)"
  grep -E "^=+ .*(passed|failed|skipped|error).* in " "$OUT/tests_$name.log" | tail -1
  grep -E "^FAILED|^ERROR" "$OUT/tests_$name.log" | head -20
}
tests gpu 80 tests -m gpu

bench() {  # name, seconds, pytest arguments...
  local name=$1 seconds; seconds=$(limit "$2"); shift 2
  (( seconds > 0 )) || { log "skipped benchmarks: $name (budget)"; return; }
  log "benchmarks: $name (limit ${seconds}s)"
  timeout "$seconds" python3 -m pytest "$@" -q -p no:cacheprovider --benchmark-only \
    --benchmark-json="$OUT/bench_$name.json" --benchmark-max-time=0.5 > "$OUT/bench_$name.log" 2>&1
  (( $? == 124 )) && log "benchmarks: $name stopped at its time limit (no JSON)"
  tail -2 "$OUT/bench_$name.log"
  [ -s "$OUT/bench_$name.json" ] && python3 bench/summarize.py "$OUT/bench_$name.json" >> "$OUT/bench_summary.md"
}
UDM_FAST_BENCH_LAYERS=quick bench layers 120 bench/test_bench_layers.py
bench generator 50 bench/test_bench_generator.py
bench train 70 bench/test_bench_train.py -k cuda
bench coder 35 bench/test_bench_coder.py -k cuda
bench degrade 15 bench/test_bench_degrade.py -k cuda
# the wider correctness sweep (every Triton test compiled for the GPU), then tuning data for the next round
tests kernels 90 tests/test_triton_kernels.py tests/test_layers.py -m "not gpu"
seconds=$(limit 40)
if (( seconds > 0 )); then
  log "per-kernel profile (limit ${seconds}s)"
  timeout "$seconds" python3 bench/profile_kernels.py --out "$OUT/profile_kernels.json" > "$OUT/profile_kernels.log" 2>&1
  grep -E "us per iteration|failed" "$OUT/profile_kernels.log"
else
  log "skipped the per-kernel profile (budget)"
fi
UDM_FAST_TRITON_AUTOTUNE=1 TRITON_PRINT_AUTOTUNING=1 UDM_FAST_BENCH_LAYERS=quick \
  bench layers_autotuned 60 bench/test_bench_layers.py -k "fused and (L1 or L3)"
cat "$OUT/bench_summary.md" 2>/dev/null
log "done"

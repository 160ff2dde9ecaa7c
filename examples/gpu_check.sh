#!/usr/bin/env bash
# The prepared GPU runs (an H100 lent for a few minutes; see ../shared/gpu/README.md, route 2).
# Everything is built and checked here first; the GPU's minutes go to tests and measurements only.
#
# Here, once:   bash ../shared/gpu/make-kit.sh --compiler        (.gpukit/, ~6 min on 2 cores)
#               bash examples/gpu_check.sh dry                   (every command below, --dry-run, on the CPU)
# On the GPU machine, three runs back to back (the machine stays warm ~30 s between them):
#   1. carry [".gpukit/compiler.so.xz", ".gpukit/on-device.sh"]:   bash .gpukit/on-device.sh stage-compiler
#   2. carry [".gpukit/runtime.tar.xz", ".gpukit/on-device.sh"]:   bash examples/gpu_check.sh check
#      the CUDA tests (tensor-core rule included), then the benchmark against cuDNN in each setting
#      the tensor-core issue names; tables and JSON under $OUT/bench-*.
#   3. same carry:                                                 bash examples/gpu_check.sh tune
#      tunes the benchmark suite for sm_90 (float16) and leaves the record folder in $OUT/tuning_logs;
#      here, copy its run folder into tuning_logs/cuda-sm_90/ and commit it.
# Each step has a time limit of its own so that one slow step cannot eat the run (10 minutes at most).
set -uo pipefail
mode=${1:?usage: gpu_check.sh dry|check|tune}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"

SETTINGS=(                                     # name : bench flags (most wanted first)
  "f16-b32:--dtype float16 --batch 32"
  "bf16-b32:--dtype bfloat16 --batch 32"
  "f16-b32-cl:--dtype float16 --batch 32 --channels-last"
  "f32-tf32:--dtype float32 --tf32"
  "f32:--dtype float32"
  "f16-b1:--dtype float16 --batch 1"
)

step() {   # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, say how it went
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$OUT/$name.log")"
}

case $mode in
  dry)            # the arguments of every benchmark and tuning command, checked here without a GPU
    for s in "${SETTINGS[@]}"; do
      flags=${s#*:}
      python -m compiler bench --dry-run --no-tuned ${flags/--tf32/} > /dev/null || exit 1   # --tf32 needs a GPU
      echo "bench ${s#*:}: arguments checked"
    done
    # measuring needs the GPU: here the same arguments are checked as if through an RPC tracker
    python -m compiler tune --dry-run --suite --target cuda/sm_90 --dtype float16 --trials 64 \
      --work-dir "$OUT/tuning_logs" --rpc-tracker 127.0.0.1:9190 --rpc-key h100 > /dev/null || exit 1
    echo "tune --suite --target cuda/sm_90 --dtype float16: arguments checked"
    ;;
  check)
    source .gpukit/on-device.sh
    python3 -c "import tvm; tvm.target.Target('cuda'); print('TVM', tvm.__version__)" || exit 1
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt"
    step tests 240 python3 -m pytest -q -x tests/test_cuda.py tests/test_tensorcore.py tests/test_cuda_emulated.py
    for s in "${SETTINGS[@]}"; do
      name=${s%%:*}
      step "bench-$name" 150 python3 -m compiler bench --device cuda --no-tuned ${s#*:} --json "$OUT/bench-$name.json"
    done
    grep -h "geometric-mean" "$OUT"/bench-*.log
    ;;
  tune)
    source .gpukit/on-device.sh
    step tune 540 python3 -m compiler tune --suite --target cuda/sm_90 --dtype float16 --trials 64 \
      --work-dir "$OUT/tuning_logs"
    ;;
  *) echo "unknown mode $mode (dry, check or tune)" >&2; exit 2 ;;
esac

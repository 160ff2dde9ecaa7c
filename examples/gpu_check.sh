#!/usr/bin/env bash
# The prepared GPU runs (an H100 lent for a few minutes; see ../shared/gpu/README.md, route 2).
# Everything is built and checked here first; the GPU's minutes go to tests and measurements only.
#
# Here, once:   bash ../shared/gpu/make-kit.sh --compiler        (.gpukit/, ~6 min on 2 cores)
#               bash examples/gpu_check.sh wheels                (.gpukit/wheels: xgboost, which the GPU
#                                                                 machine lacks: MetaSchedule's cost model)
#               python examples/tensorcore_sweep.py build .sweep --smem 227 [--layout NHWC] [--occupancies 8,4]
#                                                                (tile sweep, nvcc here, 1-3 min)
#               or, for split-K: ... build .sweep --smem 227 --batch 1 --splits [--layout NHWC]
#                                                                (every K slice count of the hand tile at
#                                                                 batch 1; then `sweep-bench f16-b1 f16-b1-cl`)
#               bash examples/gpu_check.sh dry                   (every command below, --dry-run, on the CPU)
#               (cd .gpukit && split -b 30M compiler.so.xz compiler.so.xz.part-)
#                   the tracked files (12 MB with tuning_logs/) and the 57 MB compiler no longer fit one
#                   run's 64 MiB: the compiler travels in two halves, one run each
# On the GPU machine, runs back to back (the machine stays warm ~30 s between them):
#   1a. carry [".gpukit/compiler.so.xz.part-aa"]:
#         mkdir -p /root/gpukit && cp .gpukit/compiler.so.xz.part-aa /root/gpukit/
#   1b. carry [".gpukit/compiler.so.xz.part-ab"]:
#         cat /root/gpukit/compiler.so.xz.part-aa .gpukit/compiler.so.xz.part-ab > /root/gpukit/c.xz &&
#         python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('/root/gpukit/c.xz'),
#           open('/root/gpukit/libtvm_compiler.so', 'wb'), 1 << 24)"          (what stage-compiler does)
#   2. carry [".gpukit/runtime.tar.xz", ".gpukit/on-device.sh", ".gpukit/wheels", ".sweep"]:
#                                                                  bash examples/gpu_check.sh check
#      the tile sweep, the benchmark against cuDNN (examples/cuda_layers.txt) in each setting the
#      tensor-core issue names, most wanted first, and the GPU tests; logs, tables and JSON in $OUT/results.tar.
#      or `nhwc` (the channels_last kernels: ~8 min), or `sweep-bench f16-b32-cl ...` (a short lease)
#   3. same carry:                                                 bash examples/gpu_check.sh tune
#      tunes the benchmark suite for sm_90 (float16) and leaves the record folder in $OUT/results.tar (tuning_logs/);
#      here, copy its run folder into tuning_logs/cuda-sm_90/ and commit it.
# Each step has a time limit of its own so that one slow step cannot eat the run (10 minutes at most).
set -uo pipefail
mode=${1:?usage: gpu_check.sh wheels|dry|check|nhwc|bench NAME...|sweep-bench NAME...|tune}
OUT=${OUT:-/tmp/gpu_check_out}
RES=/tmp/gpu_check_results        # logs and tables; $OUT/results.tar holds them all after every step
mkdir -p "$OUT" "$RES"            # (a run brings back at most 8 files)

LAYERS=examples/cuda_layers.txt
SETTINGS=(                                     # name : bench flags (most wanted first)
  "f16-b32:--dtype float16 --batch 32"
  "bf16-b32:--dtype bfloat16 --batch 32"
  "f32-tf32-b32:--dtype float32 --tf32 --batch 32"
  "f16-b32-cl:--dtype float16 --batch 32 --channels-last"
  "f32-b32:--dtype float32 --batch 32"
  "f16-b1:--dtype float16 --batch 1"
  "bf16-b32-cl:--dtype bfloat16 --batch 32 --channels-last"
  "f32-tf32-b32-cl:--dtype float32 --tf32 --batch 32 --channels-last"
  "f16-b1-cl:--dtype float16 --batch 1 --channels-last"
  "dw-f16-b32-cl:--dtype float16 --batch 32 --channels-last --layers-file examples/cuda_depthwise_layers.txt"
  "bwd-f32-b8:--backward --dtype float32 --batch 8"
  "bwd-f16-b32:--backward --dtype float16 --batch 32"
)
#: f16-b32, bf16-b32, f32-tf32-b32 (NCHW): cuda-tensorcore 6 reads the 3x3 layers' NCHW inputs through an
#: NHWC copy (two transpose kernels, the weight packed once per module; relayout_pays), untimed; the
#: tile sweep of an NCHW build (tensorcore_sweep.py build .sweep --smem 227) times it against the input
#: read in place (the sweep's second configuration of each conv2d layer), kernels alone
#: dw-f16-b32-cl: channels_last depthwise layers (cuda-depthwise-nhwc, 16-byte channel vectors), untimed
#: f32-b32: exact FP32 (TF32 off) at batch 32, where cuda-direct 3 takes its register-blocked tile
#: (8 channels x up to 4 columns per thread, channel-blocked weights): built and checked without a GPU,
#: not yet timed (tests/test_cuda_direct.py; the GPU test test_exact_float32_batches_take_the_...)
#: bwd-*: a training step per layer (forward, input, weight and bias gradients) against cuDNN's (the
#: drop-in issue's goal), e.g. `bench bwd-f32-b8 bwd-f16-b32` on a short lease
#: the NHWC lease (``nhwc``): what channels_last kernels need measured, most wanted first, seconds each
NHWC_BENCHES=("f16-b32-cl:80" "bf16-b32-cl:70" "f32-tf32-b32-cl:70" "f16-b1-cl:50")

on_device() {   # TVM from the kit, and the wheels it carries (installed under /tmp, not into the image)
  source .gpukit/on-device.sh
  if compgen -G ".gpukit/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpukit/wheels .gpukit/wheels/*.whl \
      && export PYTHONPATH=/tmp/gpukit/wheels:$PYTHONPATH
  fi
}

step() {   # step NAME SECONDS COMMAND...: run with a limit, log to $RES/NAME.log, say how it went
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$(tail -n 1 "$RES/$name.log")"
  tar -cf "$OUT/results.tar" -C "$RES" .
}

case $mode in
  wheels)         # here: the wheels on-device needs beyond TVM (Python 3.12, x86-64), at this machine's versions
    version=$(python3 -c "import importlib.metadata as m; print(m.version('xgboost'))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 -d .gpukit/wheels "xgboost-cpu==$version" && ls -la .gpukit/wheels
    ;;
  dry)            # the arguments of every benchmark and tuning command, checked here without a GPU
    for s in "${SETTINGS[@]}"; do
      flags=${s#*:}
      python -m compiler bench --dry-run --no-tuned --layers-file $LAYERS ${flags/--tf32/} > /dev/null || exit 1   # --tf32 needs a GPU
      echo "bench ${s#*:}: arguments checked"
    done
    # measuring needs the GPU: here the same arguments are checked as if through an RPC tracker
    python -m compiler tune --dry-run --suite --target cuda/sm_90 --dtype float16 --trials 64 \
      --work-dir "$RES/tuning_logs" --rpc-tracker 127.0.0.1:9190 --rpc-key h100 > /dev/null || exit 1
    echo "tune --suite --target cuda/sm_90 --dtype float16: arguments checked"
    ;;
  check)
    on_device
    python3 -c "import tvm; tvm.target.Target('cuda'); print('TVM', tvm.__version__)" || exit 1
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$RES/gpu.txt"
    [[ -f .sweep/manifest.json ]] && step sweep 100 python3 examples/tensorcore_sweep.py run .sweep "$RES/sweep.json" \
      && sed -n '/^per layer/,$p' "$RES/sweep.log"
    for s in "${SETTINGS[@]}"; do
      name=${s%%:*}
      step "bench-$name" 100 python3 -m compiler bench --device cuda --no-tuned --layers-file $LAYERS ${s#*:} \
        --json "$RES/bench-$name.json"
      # the tests after the three settings the issue's goals name (the GPU-only ones: the rest ran on the CPU)
      [[ $name == f32-tf32-b32 ]] && step tests 150 python3 -m pytest -q -x -rs -k gpu tests/test_cuda.py \
        tests/test_tensorcore.py tests/test_gradients.py
    done
    grep -h "geometric-mean" "$RES"/bench-*.log
    ;;
  nhwc)           # the NHWC tensor-core kernels: their tile sweep (build it with --layout NHWC), the
                  # channels_last benchmarks, the layout probe (NCHW inputs through NHWC?), the GPU tests
    on_device
    python3 -c "import tvm; tvm.target.Target('cuda'); print('TVM', tvm.__version__)" || exit 1
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > "$RES/gpu.txt"
    [[ -f .sweep/manifest.json ]] && step sweep 80 python3 examples/tensorcore_sweep.py run .sweep "$RES/sweep.json" \
      && sed -n '/^per layer/,$p' "$RES/sweep.log"
    bench_one() {   # bench_one NAME SECONDS
      for s in "${SETTINGS[@]}"; do
        [[ ${s%%:*} == "$1" ]] && step "bench-$1" "$2" python3 -m compiler bench --device cuda --no-tuned \
          --layers-file $LAYERS ${s#*:} --json "$RES/bench-$1.json"
      done
    }
    bench_one f16-b32-cl 80
    step probe 75 python3 examples/layout_probe.py --layers-file $LAYERS --dtype float16 --batch 32 --rounds 3
    step tests 90 python3 -m pytest -q -rs -x -k "channels_last" tests/test_cuda.py
    for b in "${NHWC_BENCHES[@]:1}"; do bench_one "${b%%:*}" "${b#*:}"; done
    grep -h "geometric-mean" "$RES"/bench-*.log
    cat "$RES/probe.log"
    ;;
  bench|sweep-bench)   # only the named settings, e.g. bench f16-b32 bf16-b32 (a short lease); sweep-bench:
                       # the tile sweep first (70 s)
    on_device
    [[ $mode == sweep-bench && -f .sweep/manifest.json ]] && step sweep 70 python3 examples/tensorcore_sweep.py \
      run .sweep "$RES/sweep.json" && sed -n '/^per layer/,$p' "$RES/sweep.log"
    for name in "${@:2}"; do
      for s in "${SETTINGS[@]}"; do
        [[ ${s%%:*} == "$name" ]] && step "bench-$name" 80 python3 -m compiler bench --device cuda --no-tuned \
          --layers-file $LAYERS ${s#*:} --json "$RES/bench-$name.json"
      done
    done
    grep -h "geometric-mean" "$RES"/bench-*.log
    ;;
  tune)
    on_device
    step tune 540 python3 -m compiler tune --suite --target cuda/sm_90 --dtype float16 --trials 64 \
      --work-dir "$RES/tuning_logs"
    ;;
  *) echo "unknown mode $mode (wheels, dry, check, nhwc, bench, sweep-bench or tune)" >&2; exit 2 ;;
esac

"""Sweep the cuda-tensorcore rule's tile parameters on a GPU, built here, measured there.

The rule picks its block/warp tiles, chunk and pipeline depth from the shape and the target's
limits (``schedules.cuda_tensorcore.choose_config``); this measures that choice against its
neighbours on a real GPU, so the defaults rest on measurements.  Compiling needs no GPU: ``build``
schedules each configuration with the rule's own ``schedule``, compiles it for the architecture
(nvcc) and exports one library per configuration; ``run`` needs only TVM's runtime (the 5 MB
route of ../shared/gpu/README.md), checks every kernel against torch on the GPU and times it
against cuDNN with CUDA events, both memory formats.

    python examples/tensorcore_sweep.py build .sweep --arch sm_90          # here (nvcc)
    python examples/tensorcore_sweep.py build .sweep --layout NHWC          # channels_last kernels
    python examples/tensorcore_sweep.py build .split --batch 1 --splits     # split-K counts, batch 1
    python examples/tensorcore_sweep.py run .sweep $OUT/sweep.json         # on the GPU machine

``--smem KB`` builds for a larger shared-memory limit than the 48 KB static one (TVM's CUDA runtime
raises a kernel's dynamic shared memory limit when a launch asks for more than 48 KB).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (layer, input shape, dtype): ResNet-50's 3x3 and 1x1 convolutions at batch 32, a DCGAN
#: transposed layer, and the TF32 / bfloat16 forms of the issue's example layer.
LAYERS = [
    ("Conv2d(128, 128, 3, padding=1, bias=False)", (32, 128, 28, 28), "float16"),
    ("Conv2d(64, 64, 3, padding=1, bias=False)", (32, 64, 56, 56), "float16"),
    ("Conv2d(256, 256, 3, padding=1, bias=False)", (32, 256, 14, 14), "float16"),
    ("Conv2d(512, 512, 3, padding=1, bias=False)", (32, 512, 7, 7), "float16"),
    ("Conv2d(256, 64, 1, bias=False)", (32, 256, 56, 56), "float16"),
    ("Conv2d(1024, 256, 1, bias=False)", (32, 1024, 14, 14), "float16"),
    ("ConvTranspose2d(256, 128, 4, stride=2, padding=1, bias=False)", (32, 256, 16, 16), "float16"),
    ("Conv2d(128, 128, 3, padding=1, bias=False)", (32, 128, 28, 28), "bfloat16"),
    ("Conv2d(128, 128, 3, padding=1, bias=False)", (32, 128, 28, 28), "tf32"),
]


def candidates(gemm, target, element_bytes, hand, count, rng):
    """The hand choice, then up to ``count - 1`` other configurations that fit the target."""
    from schedules.cuda_tensorcore import ACCUMULATOR_SHARE, FRAGMENT, WARP, Config
    limit = int(target.attrs["max_shared_memory_per_block"])
    registers = int(target.attrs["registers_per_block"])
    pool = []
    for wm, wn, fm, fn, chunk, stages in itertools.product((1, 2, 4), (1, 2, 4), (1, 2, 4), (1, 2, 4),
                                                           (16, 32, 64), (1, 2, 3, 4)):
        c = Config(wm, wn, fm, fn, chunk, element_bytes, stages, a_staged=hand.a_staged)
        threads = c.threads
        if threads > 512 or fm * fn * FRAGMENT * FRAGMENT // WARP > min(255, registers // threads) * ACCUMULATOR_SHARE:
            continue
        if stages > 1 and stages > -(-gemm.k // chunk) or c.shared_bytes() > limit:
            continue
        if c.block_m > 2 * max(gemm.m, 16) or c.block_n > 2 * max(gemm.n, 16):
            continue
        pool.append(c)
    rng.shuffle(pool)
    # the hand choice's neighbours first (one parameter changed), then random ones
    near = [c for c in pool if sum(a != b for a, b in zip(c.__dict__.values(), hand.__dict__.values())) == 1]
    chosen = [hand]
    for c in near + pool:
        if c not in chosen and len(chosen) < count:
            chosen.append(c)
    return chosen


def occupancy_candidates(gemm, target, element_bytes, hand, occupancies, a_staged):
    """The hand choice, then the rule's first tile under each ``OCCUPANCY_WARPS`` of ``occupancies``,
    each also with a 2-stage pipeline: what the tile policy would pick at other occupancy targets."""
    from dataclasses import replace

    import schedules.cuda_tensorcore as rule
    chosen, saved = [hand], rule.OCCUPANCY_WARPS
    try:
        for warps in occupancies:
            rule.OCCUPANCY_WARPS = warps
            head = rule.ranked_configs(gemm, target, element_bytes, a_staged)[0]
            for config in (head, replace(head, stages=2)):
                if config not in chosen and config.shared_bytes() <= int(target.attrs["max_shared_memory_per_block"]):
                    chosen.append(config)
    finally:
        rule.OCCUPANCY_WARPS = saved
    return chosen


def split_candidates_of(gemm, hand, spec):
    """The hand choice, then its tile with every other K slice count it allows (1, unsplit, included):
    whether split-K pays, and at what count (``schedules.cuda_tensorcore.choose_split``)."""
    from dataclasses import replace

    from schedules.cuda_tensorcore import split_candidates
    return [hand] + [replace(hand, split_k=s) for s in [1] + split_candidates(gemm, hand, spec)
                     if s != hand.split_k]


def build(args) -> None:
    import tvm

    from compiler import build as kbuild
    from compiler.layers import parse_layer
    from compiler.request import KernelRequest
    from dataclasses import replace

    from schedules.cuda_tensorcore import (CudaTensorCore, completed, gemm_of, input_vector, ranked_configs,
                                           verifying_target)
    from schedules.tensor_intrinsics import A_KM, A_MK
    from schedules.gpu_verify import passes_gpu_verification
    from targets import resolve
    from targets.cuda import compile_context
    from tvm import s_tir

    base = target = resolve(f"cuda/{args.arch}")      # the hand choice: the rule as it is
    if args.smem:
        attrs = dict(base.export())
        attrs["max_shared_memory_per_block"] = args.smem * 1024
        target = tvm.target.Target(attrs)
    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    manifest = []
    for index, (text, shape, dtype) in enumerate(LAYERS):
        tf32 = dtype == "tf32"
        spec = parse_layer(text)._spec()
        if args.batch:
            shape = (args.batch, *shape[1:])
        request = KernelRequest(spec, shape, "float32" if tf32 else dtype, tf32=tf32, layout=args.layout)
        func = kbuild.prim_func(request)
        workload = kbuild.workload_of(request)
        gemm, _ = gemm_of(s_tir.Schedule(func), request.spec, args.layout)
        element_bytes = 4 if tf32 else 2
        hand, hand_sch = CudaTensorCore().tile_and_schedule(func, workload, base)
        if args.splits:
            pool = split_candidates_of(gemm, hand, spec)
        elif args.occupancies:
            pool = occupancy_candidates(gemm, target, element_bytes, hand,
                                        [int(w) for w in args.occupancies.split(",")], hand.a_staged)
        else:
            pool = candidates(gemm, target, element_bytes, hand, args.configs, rng)
        if args.layout == "NCHW" and not spec.transposed:
            # the NCHW input read the other way (in place, or through an NHWC copy: relayout_pays)
            other = A_KM if hand.a_staged == A_MK else A_MK
            pool.insert(1, completed(ranked_configs(gemm, target, element_bytes, other)[0], gemm, workload, base))
        for n, config in enumerate(pool):
            try:
                if n == 0:
                    sch = hand_sch
                else:
                    config, sch = CudaTensorCore.schedule_contiguous(
                        func, workload, replace(config, input_vector=input_vector(workload, config)))
                    verifier = verifying_target(target, config.a_staged) if args.splits else target
                if n and not passes_gpu_verification(sch.mod, verifier):
                    continue
                with compile_context(target):
                    lib = tvm.compile(sch.mod, target=target)
                name = f"l{index}-c{n}.so"
                lib.export_library(str(out / name))
            except Exception as err:  # noqa: BLE001 - a configuration TVM cannot build is skipped
                print(f"{text} {dtype} {config}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
                continue
            manifest.append(dict(layer=text, shape=shape, dtype=dtype, library=name, hand=n == 0, layout=args.layout,
                                 config=dict(config.__dict__, block_m=config.block_m, block_n=config.block_n,
                                             shared=config.shared_bytes()),
                                 flops=request.spec.flops_for_input(shape)))
            print(f"built {name}: {text} {dtype} {config}", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _cuda_ms(fn) -> float:
    """Milliseconds per call: the benchmark's CUDA-event rounds (``compiler.bench``), median of 5."""
    from compiler.bench import _round_time
    for _ in range(3):
        fn()
    return statistics.median(_round_time(fn, 0.01, "cuda") for _ in range(5)) * 1e3


def run(args) -> None:
    import torch
    import tvm
    import tvm_ffi

    folder = Path(args.folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    results, layers = [], {}
    torch.backends.cudnn.benchmark = True
    # kernels over the 48 KB static shared-memory limit last: a failed launch must not stop the rest
    manifest.sort(key=lambda e: e["config"]["shared"] > 48 * 1024)
    for entry in manifest:
        key = (entry["layer"], tuple(entry["shape"]), entry["dtype"])
        if key not in layers:
            layers[key] = _reference(*key, torch)
        x, w, ref, cudnn_ms, cudnn_cl_ms = layers[key]
        y = torch.empty_like(ref, dtype=x.dtype)
        if entry.get("layout", "NCHW") == "NHWC":    # channels_last bytes, the weight [co, kh, kw, ci]
            x, w = x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous()
            y = y.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
            ref = ref.permute(0, 2, 3, 1)
        try:
            f = tvm.runtime.load_module(str(folder / entry["library"]))["conv"]
            with tvm_ffi.use_torch_stream():
                f(x, w, y)
                torch.cuda.synchronize()
                error = float(((y.float() - ref).abs().max() / ref.abs().max()).item())
                ms = _cuda_ms(lambda: f(x, w, y))
        except Exception as err:  # noqa: BLE001 - report and go on
            print(f"{entry['library']}: {type(err).__name__}: {' | '.join(str(err).split(chr(10)))[:400]}", flush=True)
            continue
        results.append(dict(entry, ms=ms, tflops=entry["flops"] / ms / 1e9, cudnn_ms=cudnn_ms,
                            cudnn_channels_last_ms=cudnn_cl_ms, error=error))
        Path(args.results).write_text(json.dumps(results, indent=1))     # kept if the run is cut short
        print(f"{entry['layer'][:44]:44s} {entry['dtype']:8s} {entry['library']:10s} "
              f"{'hand' if entry['hand'] else '    '} {ms:8.4f} ms {results[-1]['tflops']:7.1f} TF/s  "
              f"cuDNN {cudnn_ms:7.4f} / CL {cudnn_cl_ms:7.4f}  err {error:.1e}  {entry['config']}", flush=True)
    Path(args.results).write_text(json.dumps(results, indent=1))
    print("\nper layer: hand vs best config vs cuDNN (NCHW, channels_last)")
    for key in layers:
        rows = [r for r in results if (r["layer"], tuple(r["shape"]), r["dtype"]) == key]
        if not rows:
            continue
        hand = [r for r in rows if r["hand"]]
        best = min(rows, key=lambda r: r["ms"])
        print(f"{key[0][:44]:44s} {key[2]:8s} hand {hand[0]['ms'] if hand else math.nan:8.4f}  best "
              f"{best['ms']:8.4f} {best['config']}  cuDNN {rows[0]['cudnn_ms']:.4f} / {rows[0]['cudnn_channels_last_ms']:.4f}")


def _reference(text, shape, dtype, torch):
    import torch.nn  # noqa: F401
    from compiler.layers import parse_layer
    torch.manual_seed(0)
    layer = parse_layer(text, torch.nn).cuda()
    kind = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
    layer = layer.to(kind)
    x = torch.randn(*shape, device="cuda", dtype=kind)
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    with torch.no_grad():
        ref = parse_layer(text, torch.nn).cuda().double()
        ref.load_state_dict(layer.state_dict())
        expected = ref(x.double()).float()
        cudnn_ms = _cuda_ms(lambda: layer(x))
        xl = x.to(memory_format=torch.channels_last)
        layer_cl = layer.to(memory_format=torch.channels_last)
        cl_ms = _cuda_ms(lambda: layer_cl(xl))
    return x, layer.weight.detach().contiguous(), expected, cudnn_ms, cl_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("build")
    b.add_argument("folder")
    b.add_argument("--arch", default="sm_90")
    b.add_argument("--configs", type=int, default=12, help="configurations per layer, the hand one first")
    b.add_argument("--smem", type=int, default=0, help="shared-memory limit in KB (default: the target's)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--occupancies", default="",
                   help="instead of random configurations: the rule's tile at each of these OCCUPANCY_WARPS, "
                        "e.g. 8,4,3 (and each with a 2-stage pipeline)")
    b.add_argument("--splits", action="store_true",
                   help="instead of random configurations: the hand tile at every K slice count it allows "
                        "(split-K; with --batch 1, where the rule splits)")
    b.add_argument("--batch", type=int, default=0, help="every layer at this batch (default: 32, as listed)")
    b.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW",
                   help="the kernels' activation layout (NHWC: channels_last tensors read in place)")
    r = sub.add_parser("run")
    r.add_argument("folder")
    r.add_argument("results")
    args = parser.parse_args()
    os.environ.setdefault("TVM_CONV_QUIET", "1")
    build(args) if args.mode == "build" else run(args)


if __name__ == "__main__":
    main()

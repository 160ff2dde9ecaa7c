"""Command line.

``python -m compiler bench [--csv F] [--json F] [--layer L --input-shape N,C,H,W | --layers-file F]``
``python -m compiler tune (--layer L --input-shape N,C,H,W | --layers-file F | --suite) [--target T]
                          [--trials N] [--work-dir DIR] [--rpc-tracker HOST:PORT --rpc-key KEY]``
``python -m compiler build --layer L --input-shape N,C,H,W [--target T] --out DIR``
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Tuple


def _shape(text: str):
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W, got {text!r}") from None


def read_layers_file(path: str) -> List[Tuple[str, tuple]]:
    """One ``LAYER ; N,C,H,W`` per line (``#`` starts a comment), e.g.
    ``Conv2d(64, 64, 3, padding=1) ; 1,64,56,56``."""
    layers = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            layer, sep, shape = line.rpartition(";")
            if not sep:
                raise ValueError(f"{path}:{number}: expected 'LAYER ; N,C,H,W', got {line!r}")
            layers.append((layer.strip(), _shape(shape.strip())))
    return layers


def _layers(parser, args) -> List[Tuple[str, tuple]]:
    if getattr(args, "suite", False):
        from .bench import DEFAULT_SUITE
        return list(DEFAULT_SUITE)
    if getattr(args, "layers_file", None):
        return read_layers_file(args.layers_file)
    if not args.layer or not args.input_shape:
        parser.error("give --layer with --input-shape" + (", --layers-file or --suite"
                                                           if hasattr(args, "suite") else ""))
    return [(args.layer, args.input_shape)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmark against torch.nn (default suite, or one layer)")
    bench.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    bench.add_argument("--input-shape", type=_shape, help="N,C,H,W")
    bench.add_argument("--layers-file", help="one 'LAYER ; N,C,H,W' per line, instead of the suite")
    bench.add_argument("--threads", type=int, help="threads for both sides (default: TVM_NUM_THREADS)")
    bench.add_argument("--no-tuned", action="store_true", help="skip the tuned column")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cuda: both sides on the local GPU (torch uses cuDNN)")
    bench.add_argument("--csv", help="also write the table as CSV")
    bench.add_argument("--json", help="also write the table as JSON")

    tune = sub.add_parser("tune", help="tune layers with MetaSchedule into a tuning database")
    tune.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    tune.add_argument("--input-shape", type=_shape, help="N,C,H,W")
    tune.add_argument("--layers-file", help="one 'LAYER ; N,C,H,W' per line")
    tune.add_argument("--suite", action="store_true", help="the benchmark's default suite")
    tune.add_argument("--target", default="llvm", help="llvm (this CPU), cuda/sm_XX, or a JSON target")
    tune.add_argument("--trials", type=int, default=64, help="search trials per layer (records already "
                      "in the database count, so a rerun resumes)")
    tune.add_argument("--trials-per-iter", type=int, default=16)
    tune.add_argument("--dtype", default="float32")
    tune.add_argument("--work-dir", help="database folder (default: tuning_logs/<target key>)")
    tune.add_argument("--rpc-tracker", help="HOST:PORT of a tvm.rpc tracker to measure on")
    tune.add_argument("--rpc-key", help="device key registered with the tracker")
    tune.add_argument("--seed", type=int)
    tune.add_argument("--population", type=int, default=512, help="evolutionary search population")
    tune.add_argument("--final-check", type=int, default=3, help="re-measure the hand schedule and this "
                      "many best records side by side at the end (0: skip)")
    tune.add_argument("--verbose", action="store_true", help="MetaSchedule's log on stdout too")

    build = sub.add_parser("build", help="ahead-of-time build: shared library + manifest.json")
    build.add_argument("--layer", required=True)
    build.add_argument("--input-shape", type=_shape, required=True)
    build.add_argument("--target", default="llvm", help="llvm, cuda/sm_XX, or a JSON target")
    build.add_argument("--dtype", default="float32")
    build.add_argument("--database", help="tuning database folder (default: tuning_logs/<target key>)")
    build.add_argument("--no-tuned", action="store_true", help="hand-written schedule only")
    build.add_argument("--out", required=True, help="output folder")

    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import bench as bench_mod
        suite = bench_mod.DEFAULT_SUITE
        if args.layer or args.input_shape or args.layers_file:
            suite = _layers(parser, args)
        bench_mod.run(suite, threads=args.threads, csv_path=args.csv, json_path=args.json,
                      tuned=not args.no_tuned, device=args.device)
    elif args.command == "tune":
        import json

        from .tuning import tune_many
        target = json.loads(args.target) if args.target.startswith("{") else args.target

        def report(r):
            within = r.within()
            print(f"[tune] done {r.layer} {'x'.join(map(str, r.input_shape))}: hand {r.hand_ms:.3f} ms, "  # noqa
                  f"best {r.best_ms:.3f} ms ({r.hand_ms / r.best_ms:.2f}x), {r.trials_run} trials in "
                  f"{r.wall_s:.0f} s" + (f", within 10% of this run's best after {within[0]} trials / "
                                         f"{within[1]:.0f} s" if within else "") + f" -> {r.run_dir}")
        tune_many(_layers(parser, args), report=report, target=target, trials=args.trials,
                  work_dir=args.work_dir, dtype=args.dtype, trials_per_iter=args.trials_per_iter,
                  rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, seed=args.seed, verbose=args.verbose,
                  final_check=args.final_check, population=args.population)
    elif args.command == "build":
        import json

        from .export import export_library
        target = json.loads(args.target) if args.target.startswith("{") else args.target
        manifest = export_library(args.layer, args.input_shape, args.out, target=target, dtype=args.dtype,
                                  database=False if args.no_tuned else args.database)
        print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

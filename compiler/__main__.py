"""Command line: ``python -m compiler bench [--csv F] [--json F] [--layer L --input-shape N,C,H,W]``."""
from __future__ import annotations

import argparse
import sys


def _shape(text: str):
    return tuple(int(v) for v in text.split(","))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark against torch.nn (default suite, or one layer)")
    bench.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    bench.add_argument("--input-shape", type=_shape, help="N,C,H,W")
    bench.add_argument("--threads", type=int, help="threads for both sides (default: TVM_NUM_THREADS)")
    bench.add_argument("--csv", help="also write the table as CSV")
    bench.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import bench as bench_mod
        suite = bench_mod.DEFAULT_SUITE
        if args.layer:
            if not args.input_shape:
                parser.error("--layer needs --input-shape")
            suite = [(args.layer, args.input_shape)]
        bench_mod.run(suite, threads=args.threads, csv_path=args.csv, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

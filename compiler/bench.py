"""Benchmark: our kernels against torch.nn on real layers, in one process, same thread count.

Each layer is warmed up, then ours and torch's are timed in interleaved rounds (so that frequency or
load drift hits both alike); the median round is reported.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .layers import parse_layer

#: The default suite, batch 1, float32, NCHW: (layer, input shape)
DEFAULT_SUITE = [
    ("Conv2d(3, 64, 7, stride=2, padding=3)", (1, 3, 224, 224)),
    ("Conv2d(64, 64, 3, padding=1)", (1, 64, 56, 56)),
    ("Conv2d(256, 64, 1)", (1, 256, 56, 56)),
    ("Conv2d(128, 128, 3, stride=2, padding=1)", (1, 128, 56, 56)),
    ("Conv2d(256, 256, 3, padding=1)", (1, 256, 14, 14)),
    ("Conv2d(32, 32, 3, padding=1, groups=32)", (1, 32, 112, 112)),
    ("Conv2d(144, 144, 3, stride=2, padding=1, groups=144)", (1, 144, 56, 56)),
    ("Conv2d(256, 256, 3, padding=1, groups=32)", (1, 256, 28, 28)),
    ("Conv2d(256, 256, 3, padding=2, dilation=2)", (1, 256, 28, 28)),
    ("Conv2d(3, 64, 7, padding=3, padding_mode='reflect')", (1, 3, 256, 256)),
    ("ConvTranspose2d(256, 128, 4, stride=2, padding=1)", (1, 256, 16, 16)),
    ("ConvTranspose2d(128, 64, 2, stride=2)", (1, 128, 64, 64)),
]


@dataclass
class Row:
    layer: str
    input_shape: str
    torch_ms: float
    ours_ms: float
    speedup: float
    gflops: float
    peak_share: float
    compile_s: float
    schedule: str


def _round_time(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call of fn, averaged over enough calls to last ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def measure_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's attainable FP32 rate: the best of a few large torch GEMMs (oneDNN/MKL reach
    ~90% of the FMA units' peak on such sizes, so this is a slight underestimate of the true peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_round_time(lambda: torch.mm(a, b), 0.2) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def bench_layer(text: str, input_shape: Sequence[int], peak: float, rounds: int = 7,
                round_seconds: float = 0.05) -> Row:
    from . import build

    build.clear_cache()
    ours = parse_layer(text)
    theirs = parse_layer(text, torch.nn)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*input_shape)
    with torch.no_grad():
        ours(x)                                          # compiles (timed inside build)
        compile_s = ours.kernel.compile_seconds
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-3, atol=1e-3)
        for _ in range(3):                               # warm both (oneDNN JITs on first calls)
            _round_time(lambda: ours(x), round_seconds)
            _round_time(lambda: theirs(x), round_seconds)
        ours_t, torch_t = [], []
        for _ in range(rounds):                           # interleaved rounds
            ours_t.append(_round_time(lambda: ours(x), round_seconds))
            torch_t.append(_round_time(lambda: theirs(x), round_seconds))
    o, t = statistics.median(ours_t), statistics.median(torch_t)
    flops = ours._spec().flops_for_input(tuple(x.shape))
    gflops = flops / o / 1e9
    return Row(text, "x".join(map(str, input_shape)), t * 1e3, o * 1e3, t / o, gflops,
               gflops / peak if peak else float("nan"), compile_s, ours.schedule)


def run(suite=DEFAULT_SUITE, threads: Optional[int] = None, csv_path=None, json_path=None,
        print_fn=print) -> List[Row]:
    import os
    threads = threads or int(os.environ.get("TVM_NUM_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    peak = measure_peak_gflops()
    print_fn(f"threads: {threads} (torch and TVM)   peak FP32 (large torch GEMM): {peak:.1f} GFLOP/s")
    header = f"{'layer':54s} {'input':>14s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} " \
             f"{'GFLOP/s':>8s} {'% peak':>7s} {'compile s':>9s}  schedule"
    print_fn(header)
    rows = []
    for text, shape in suite:
        row = bench_layer(text, shape, peak)
        rows.append(row)
        print_fn(f"{row.layer:54s} {row.input_shape:>14s} {row.torch_ms:9.3f} {row.ours_ms:9.3f} "
                 f"{row.speedup:7.2f}x {row.gflops:8.1f} {100 * row.peak_share:6.1f}% {row.compile_s:9.2f}  "
                 f"{row.schedule}")
    geo = math.exp(sum(math.log(r.speedup) for r in rows) / len(rows))
    print_fn(f"geometric-mean speedup over torch: {geo:.2f}x   slowest: {min(r.speedup for r in rows):.2f}x")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"threads": threads, "peak_gflops": peak, "geomean_speedup": geo,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
    return rows

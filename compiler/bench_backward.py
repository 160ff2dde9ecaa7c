"""``bench --backward``: a training step per layer (forward, then the gradients of input, weight and
bias), ours (the tvm_conv operators and compiler.gradients' kernels) against torch's, side by side in
one process, warm, in interleaved rounds as ``compiler.bench`` times the forward alone."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .bench import SETTLE_SECONDS, Setting, _geomean, _round_time
from .layers import parse_layer


@dataclass
class StepRow:
    layer: str
    input_shape: str
    torch_ms: float          # forward + backward, median round
    ours_ms: float
    speedup: float
    dtype: str = "float32"


def _step(layer, x, g):
    """One forward and backward; the gradients land in ``x.grad`` and the parameters' ``.grad``."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    layer(x).backward(g)


def bench_step(text: str, input_shape: Sequence[int], rounds: int = 7, round_seconds: float = 0.05,
               device: str = "cpu", dtype: str = "float32") -> StepRow:
    kind = getattr(torch, dtype)
    ours = parse_layer(text).to(device, kind)
    ours.tuning_database = False
    theirs = parse_layer(text, torch.nn).to(device, kind)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*input_shape, device=device, dtype=kind, requires_grad=True)
    with torch.no_grad():
        g = torch.randn_like(theirs(x))
    contenders = {"torch": theirs, "ours": ours}
    times = {name: [] for name in contenders}
    order = list(contenders)
    for i, warm in enumerate([True] * 2 + [False] * rounds):   # the first rounds compile and warm up
        for name in order[i % 2:] + order[:i % 2]:
            time.sleep(SETTLE_SECONDS)
            t = _round_time(lambda: _step(contenders[name], x, g), round_seconds, device)
            if not warm:
                times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return StepRow(text, "x".join(map(str, input_shape)), med["torch"] * 1e3, med["ours"] * 1e3,
                   med["torch"] / med["ours"], dtype)


def run(suite, threads: Optional[int] = None, print_fn=print, device: str = "cpu",
        setting: Setting = Setting()) -> List[StepRow]:
    """The table, ``threads`` as ``compiler.bench.run`` chooses them."""
    threads = threads or int(os.environ.get("TVM_NUM_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    print_fn(f"forward + backward (input, weight, bias gradients); threads: {threads}; {setting.describe()}")
    print_fn(f"{'layer':54s} {'input':>14s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s}")
    rows = []
    for text, shape in suite:
        row = bench_step(text, setting.shape(shape), device=device, dtype=setting.dtype)
        rows.append(row)
        print_fn(f"{row.layer:54s} {row.input_shape:>14s} {row.torch_ms:9.3f} {row.ours_ms:9.3f} {row.speedup:7.2f}x")
    print_fn(f"geometric-mean speedup of the training step over torch: {_geomean(r.speedup for r in rows):.2f}x "
             f"(slowest {min(r.speedup for r in rows):.2f}x)")
    return rows

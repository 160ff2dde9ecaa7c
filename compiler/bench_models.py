"""End-to-end benchmark: real networks, torch against their conversions (fused and unfused), one process.

Users run networks, not layers: a kernel that wins alone can still lose inside a model (thread pools
fighting, work done twice between ops).  Each network of :mod:`compiler.zoo` is converted twice
(``fuse=True`` and ``fuse=False``), every kernel is compiled first (the first call, timed), the
outputs are checked against torch, and then the three run in interleaved rounds, the order rotating,
in the default environment: no variables set, torch imported first, torch's ops and our kernels
alternating as they do in a real forward.  The median round is reported, and the geometric mean
from each side's fastest round too (on a shared VM load only ever adds time).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from . import zoo
from .bench import SETTLE_SECONDS, _geomean, _round_time, write_table
from .conversion import convert, converted_layers


@dataclass
class ModelRow:
    model: str
    input_shape: str
    torch_ms: float
    fused_ms: float
    fused_speedup: float
    unfused_ms: float
    unfused_speedup: float
    #: max |ours - torch| / max |torch| on the example input (torch in float32)
    fused_error: float
    unfused_error: float
    first_call_s: float            # convert + the first call (every kernel compiled) of the fused model
    kernels: int                   # distinct kernels of the fused model
    fastest_fused_speedup: float = float("nan")
    fastest_unfused_speedup: float = float("nan")


def bench_model(name: str, rounds: int = 7, round_seconds: float = 0.3) -> ModelRow:
    model = zoo.make(name)
    x = torch.randn(zoo.MODELS[name][1])
    with torch.no_grad():
        start = time.perf_counter()
        fused = convert(model, x)
        first_call_s = time.perf_counter() - start
        unfused = convert(model, x, fuse=False)
        reference = model(x)
        scale = reference.abs().max().item()
        errors = {side: ((m(x) - reference).abs().max().item() / scale) for side, m in
                  (("fused", fused), ("unfused", unfused))}
        contenders = {"torch": model, "fused": fused, "unfused": unfused}
        times: Dict[str, List[float]] = {side: [] for side in contenders}
        order = list(contenders)
        for i, warm in enumerate([True] * 2 + [False] * rounds):
            for side in order[i % len(order):] + order[:i % len(order)]:
                time.sleep(SETTLE_SECONDS)
                t = _round_time(lambda: contenders[side](x), round_seconds)
                if not warm:
                    times[side].append(t)
    med = {side: statistics.median(ts) for side, ts in times.items()}
    fastest = {side: min(ts) for side, ts in times.items()}
    kernels = {id(m.kernel) for m in converted_layers(fused) if m.kernel is not None}
    return ModelRow(name, "x".join(map(str, x.shape)), med["torch"] * 1e3, med["fused"] * 1e3,
                    med["torch"] / med["fused"], med["unfused"] * 1e3, med["torch"] / med["unfused"],
                    errors["fused"], errors["unfused"], first_call_s, len(kernels),
                    fastest["torch"] / fastest["fused"], fastest["torch"] / fastest["unfused"])


def run_models(names: Optional[Sequence[str]] = None, threads: Optional[int] = None, csv_path=None,
               json_path=None, print_fn=print, rounds: int = 7) -> List[ModelRow]:
    names = list(names or zoo.MODELS)
    threads = threads or int(os.environ.get("TVM_NUM_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    print_fn(f"threads: {threads} (torch and ours), float32, default environment")
    print_fn(f"{'network':20s} {'input':>14s} {'torch ms':>9s} {'fused ms':>9s} {'speedup':>8s} "
             f"{'unfused ms':>10s} {'speedup':>8s} {'rel err fused/unfused':>22s} {'first call s':>12s} "
             f"{'kernels':>7s}")
    rows = []
    for name in names:
        r = bench_model(name, rounds=rounds)
        rows.append(r)
        print_fn(f"{r.model:20s} {r.input_shape:>14s} {r.torch_ms:9.2f} {r.fused_ms:9.2f} {r.fused_speedup:7.2f}x "
                 f"{r.unfused_ms:10.2f} {r.unfused_speedup:7.2f}x {r.fused_error:10.1e} / {r.unfused_error:7.1e} "
                 f"{r.first_call_s:12.1f} {r.kernels:7d}")
    summary = {key: _geomean(getattr(r, key) for r in rows) for key in
               ("fused_speedup", "unfused_speedup", "fastest_fused_speedup", "fastest_unfused_speedup")}
    print_fn(f"geometric-mean speedup over torch: fused {summary['fused_speedup']:.2f}x (slowest "
             f"{min(r.fused_speedup for r in rows):.2f}x), unfused {summary['unfused_speedup']:.2f}x (slowest "
             f"{min(r.unfused_speedup for r in rows):.2f}x); from each side's fastest round: fused "
             f"{summary['fastest_fused_speedup']:.2f}x, unfused {summary['fastest_unfused_speedup']:.2f}x")
    write_table(rows, csv_path, json_path, {"threads": threads, **summary})
    return rows


__all__ = ["ModelRow", "bench_model", "run_models"]

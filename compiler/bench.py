"""Benchmark: our kernels against torch.nn on real layers, in one process, same thread count.

Each layer is warmed up, then ours and torch's are timed in interleaved rounds (so that frequency or
load drift hits both alike), each round on idle cores and in rotating order; the median round is
reported, and the geometric means are also given from each side's fastest round: on a shared VM
another tenant's burst can slow a few seconds of rounds by 1.5-2x (measured here: the same kernel at
1.12 and 1.37 ms in back-to-back runs), load only ever adds time, and the fastest round is each
side's speed on quiet cores.
"""
from __future__ import annotations

import contextlib
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


#: Idle time before each timed round.  Both thread pools keep spinning after their last call
#: (libgomp ~300000 pause loops, several ms on this CPU; TVM's 2000 yields, ~1 ms), which took cores
#: from whichever side ran next: measured here, whichever side ran second in a round came out 10-40%
#: slower.  Each round therefore starts on idle cores, and the order rotates from round to round.
SETTLE_SECONDS = 0.05


@dataclass
class Row:
    layer: str
    input_shape: str
    torch_ms: float
    ours_ms: float              # hand-written schedule (no tuning records)
    speedup: float
    gflops: float
    peak_share: float
    compile_s: float
    schedule: str
    tuned_ms: float             # with the tuning database (= ours_ms when it has no record)
    tuned_speedup: float
    tuned_schedule: str
    #: the same two speedups from each side's fastest round instead of its median round
    fastest_speedup: float = float("nan")
    fastest_tuned_speedup: float = float("nan")
    torch_gflops: float = float("nan")
    dtype: str = "float32"
    memory_format: str = "contiguous"


def _round_time(fn: Callable[[], object], min_seconds: float, device: str = "cpu") -> float:
    """Seconds per call of fn, averaged over enough calls to last ``min_seconds``.  On the GPU, CUDA
    events around back-to-back calls: the time per call with launches queued ahead of the GPU, as in
    a network (a synchronisation after each call would add a launch round trip to every call; a call
    whose host side outlasts its kernel still shows, as the GPU then waits for it)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        calls, begun = 0, time.perf_counter()
        start.record()
        while calls < 10 or time.perf_counter() - begun < min_seconds:
            fn()
            calls += 1
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    calls, begun = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - begun
        if elapsed >= min_seconds:
            return elapsed / calls


def measure_peak_gflops(size: int = 2048, repeats: int = 10, device: str = "cpu", dtype: str = "float32") -> float:
    """This machine's attainable rate in ``dtype``: the best of several large torch GEMMs (oneDNN/MKL
    reach ~90% of the FMA units' peak on such sizes, cuBLAS that of the tensor cores in the half
    types and, with TF32 allowed, float32), so a slight underestimate of the true peak.
    Short rounds, many of them: on this shared VM one in a few rounds runs at full speed."""
    kind = getattr(torch, dtype)
    if device == "cpu" and dtype != "float32":
        size = min(size, 512)          # half-type GEMMs on CPUs without their instructions are slow
    a, b = (torch.randn(size, size, device=device, dtype=kind) for _ in range(2))
    torch.mm(a, b)
    best = min(_round_time(lambda: torch.mm(a, b), 0.1, device) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


#: A sanity check of the benchmark's own outputs (the tests check correctness against the dtype's
#: bound): torch's and ours may differ by a few roundings of the layer's dtype.
_CLOSE = {"float32": dict(rtol=1e-3, atol=1e-3), "float16": dict(rtol=1e-2, atol=1e-2),
          "bfloat16": dict(rtol=5e-2, atol=5e-2)}


def bench_layer(text: str, input_shape: Sequence[int], peak: float, rounds: int = 7,
                round_seconds: float = 0.05, tuned: bool = True, device: str = "cpu", dtype: str = "float32",
                channels_last: bool = False) -> Row:
    """Torch, our hand-written schedule and (if the database has a record) our tuned one, interleaved,
    on a ``dtype`` input (and layers), in ``channels_last`` memory format if asked."""
    from . import build

    build.clear_cache()
    kind = getattr(torch, dtype)
    hand = parse_layer(text).to(device, kind)
    hand.tuning_database = False
    theirs = parse_layer(text, torch.nn).to(device, kind)
    theirs.load_state_dict(hand.state_dict())
    x = torch.randn(*input_shape, device=device, dtype=kind)
    if channels_last and x.dim() == 4:      # as a channels_last model runs: its weights too
        x = x.to(memory_format=torch.channels_last)
        hand, theirs = (m.to(memory_format=torch.channels_last) for m in (hand, theirs))
    contenders = {"torch": theirs, "hand": hand}
    with torch.no_grad():
        hand(x)                                          # compiles (timed inside build)
        compile_s = hand.kernel.compile_seconds
        torch.testing.assert_close(hand(x), theirs(x), **_CLOSE[dtype])
        if tuned:
            best = parse_layer(text).to(device, kind)
            best.load_state_dict(hand.state_dict())
            best(x)
            if best.schedule != hand.schedule:           # a tuning record served it
                torch.testing.assert_close(best(x), theirs(x), **_CLOSE[dtype])
                contenders["tuned"] = best
        times = {name: [] for name in contenders}
        order = list(contenders)
        for i, warm in enumerate([True] * 3 + [False] * rounds):  # warm all (oneDNN JITs on first
            for name in order[i % len(order):] + order[:i % len(order)]:  # calls), then interleaved
                time.sleep(SETTLE_SECONDS)                # rounds, each side first in turn
                t = _round_time(lambda: contenders[name](x), round_seconds, device)
                if not warm:
                    times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    o, t = med["hand"], med["torch"]
    tuned_t = med.get("tuned", o)
    fastest = {name: min(ts) for name, ts in times.items()}
    flops = hand._spec().flops_for_input(tuple(x.shape))
    gflops = flops / o / 1e9
    return Row(text, "x".join(map(str, input_shape)), t * 1e3, o * 1e3, t / o, gflops,
               gflops / peak if peak else float("nan"), compile_s, hand.schedule, tuned_t * 1e3, t / tuned_t,
               contenders["tuned"].schedule if "tuned" in contenders else "(no record)",
               fastest["torch"] / fastest["hand"], fastest["torch"] / fastest.get("tuned", fastest["hand"]),
               flops / t / 1e9, dtype, "channels_last" if channels_last else "contiguous")


def _geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


@dataclass(frozen=True)
class Setting:
    """What every layer of a run is measured in: element type, batch (None: each shape's own),
    memory format, and whether cuDNN may use TF32 for float32 (ours compute exact float32)."""

    dtype: str = "float32"
    batch: Optional[int] = None
    channels_last: bool = False
    tf32: bool = False

    def shape(self, shape: Sequence[int]) -> tuple:
        """``shape`` with this setting's batch (an unbatched C,H,W shape gains one)."""
        if self.batch is None:
            return tuple(shape)
        return (self.batch,) + tuple(shape[-3:])

    def describe(self) -> str:
        return (f"{self.dtype}, {'channels_last' if self.channels_last else 'NCHW'}"
                + (f", batch {self.batch}" if self.batch else "") + (", cuDNN TF32 on" if self.tf32 else ""))


def run(suite=DEFAULT_SUITE, threads: Optional[int] = None, csv_path=None, json_path=None,
        print_fn=print, tuned: bool = True, device: str = "cpu", setting: Setting = Setting()) -> List[Row]:
    """The table; ``device="cuda"`` runs both sides on the GPU (torch: cuDNN) with CUDA tensors."""
    import os
    threads = threads or int(os.environ.get("TVM_NUM_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    with _tf32_on_the_gpu(device, setting.tf32):
        return _run(suite, threads, csv_path, json_path, print_fn, tuned, device, setting)


@contextlib.contextmanager
def _tf32_on_the_gpu(device: str, allowed: bool):
    """cuDNN's default for float32 convolutions is TF32 (10-bit mantissas on the tensor cores), a
    different and less exact computation than ours (exact float32): off unless ``allowed``."""
    if device != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run(suite, threads, csv_path, json_path, print_fn, tuned, device, setting: Setting) -> List[Row]:
    measure = lambda: measure_peak_gflops(device=device, dtype=setting.dtype)  # noqa: E731
    peak = measure()
    where = f"threads: {threads} (torch and TVM)" if device == "cpu" else f"GPU: {torch.cuda.get_device_name()}"
    print_fn(f"{where}; {setting.describe()}   peak {setting.dtype} (large torch GEMM): {peak:.1f} GFLOP/s")
    header = f"{'layer':54s} {'input':>14s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} " \
             f"{'GFLOP/s':>8s} {'torch':>8s} {'% peak':>7s} {'compile s':>9s} {'tuned ms':>9s} {'speedup':>8s}  schedule"
    print_fn(header)
    rows = []
    for text, shape in suite:
        row = bench_layer(text, setting.shape(shape), peak, tuned=tuned, device=device, dtype=setting.dtype,
                          channels_last=setting.channels_last)
        rows.append(row)
        tuned_ms = f"{row.tuned_ms:9.3f} {row.tuned_speedup:7.2f}x" if row.tuned_schedule != "(no record)" \
            else f"{'-':>9s} {'-':>8s}"
        print_fn(f"{row.layer:54s} {row.input_shape:>14s} {row.torch_ms:9.3f} {row.ours_ms:9.3f} "
                 f"{row.speedup:7.2f}x {row.gflops:8.1f} {row.torch_gflops:8.1f} {100 * row.peak_share:6.1f}% "
                 f"{row.compile_s:9.2f} "
                 f"{tuned_ms}  {row.schedule}" + (f" / {row.tuned_schedule}"
                                                  if row.tuned_schedule != "(no record)" else ""))
    end_peak = measure()
    if end_peak > peak * 1.05:
        print_fn(f"peak re-measured after the suite: {end_peak:.1f} GFLOP/s (the first measurement was "
                 f"disturbed); % peak against it: " + ", ".join(f"{100 * r.gflops / end_peak:.0f}%" for r in rows))
        peak = end_peak
        for r in rows:
            r.peak_share = r.gflops / peak
    geo = _geomean(r.speedup for r in rows)
    geo_tuned = _geomean(r.tuned_speedup for r in rows)
    print_fn(f"geometric-mean speedup over torch: hand-written {geo:.2f}x (slowest "
             f"{min(r.speedup for r in rows):.2f}x), with tuning records {geo_tuned:.2f}x (slowest "
             f"{min(r.tuned_speedup for r in rows):.2f}x)")
    geo_fastest = _geomean(r.fastest_speedup for r in rows)
    geo_fastest_tuned = _geomean(r.fastest_tuned_speedup for r in rows)
    print_fn(f"the same from each side's fastest round: hand-written {geo_fastest:.2f}x, with tuning "
             f"records {geo_fastest_tuned:.2f}x")
    write_table(rows, csv_path, json_path, {
        "threads": threads, "setting": asdict(setting), "peak_gflops": peak, "geomean_speedup": geo, "geomean_speedup_tuned": geo_tuned,
        "geomean_speedup_fastest": geo_fastest, "geomean_speedup_fastest_tuned": geo_fastest_tuned})
    return rows


def write_table(rows, csv_path, json_path, summary: dict) -> None:
    """The rows (dataclasses) as CSV, and with ``summary`` as JSON, where paths are given."""
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({**summary, "rows": [asdict(r) for r in rows]}, f, indent=2)

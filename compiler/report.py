"""``python -m compiler report DB``: what a tuning database holds, workload by workload.

Per workload: the layer (named by the database's curve files, or the benchmark suite; otherwise its
buffer shapes), distinct schedules searched, the hand-written schedule's and the best record's
time, the speedup, how many trials the search took to come within 10% of its best (in the order
the records were written), and the records left aside as stale (an older rule version's).  Where the
layer is known, the best schedule's arithmetic rate (GFLOP/s, useful multiply-adds) too: beside the
machine's own roof (e.g. torch's SGEMM on the same cores), it says how much a search can still find.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from tvm.target import Target

from . import build, curves, records


@dataclass
class WorkloadReport:
    workload_hash: str
    layer: str                       # the request's description, or the PrimFunc's buffer shapes
    rule: Optional[str]              # the hand-written rule serving it now (None: layer unknown)
    trials: int                      # distinct schedules searched
    hand_ms: Optional[float]
    best_ms: Optional[float]
    within_10: Optional[int]         # trials until the best so far was within 10% of the best
    stale: int                       # records of older rule versions, left aside
    flops: Optional[float] = None    # useful floating-point operations of one call (None: layer unknown)

    @property
    def speedup(self) -> Optional[float]:
        return self.hand_ms / self.best_ms if self.hand_ms and self.best_ms else None

    @property
    def best_gflops(self) -> Optional[float]:
        """The best schedule's rate: ``flops`` in ``best_ms``."""
        return self.flops / self.best_ms / 1e6 if self.flops and self.best_ms else None


def target_of(db_dir: Path) -> Target:
    """The target a database folder is named after (``llvm-<mcpu>``, ``cuda-<arch>``), else the
    target its first readable record was measured on."""
    from targets import resolve
    name = Path(db_dir).resolve().name
    kind, _, rest = name.partition("-")
    if kind == "llvm" and rest:
        return resolve({"kind": "llvm", "mcpu": rest, "num-cores": 1})
    if kind == "cuda" and rest:
        return resolve(f"cuda/{rest}")
    for path in sorted(Path(db_dir).glob(f"*/{records.RECORDS}")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                return Target(json.loads(line)[1][2])
            except (ValueError, IndexError, TypeError, KeyError):
                continue
    raise ValueError(f"{db_dir}: no readable record to tell the target from, and the folder's name is "
                     "not llvm-<mcpu> or cuda-<arch>: give --target")


def known_requests(db_dir: Path) -> Dict[str, object]:
    """Workload hash -> request, for every workload the folder's curves name, and the suite's."""
    from .bench import DEFAULT_SUITE
    from .layers import request_of
    found = {}
    for path in curves.curve_files(db_dir):
        try:
            curve = curves.load(path)
            for fields in curve.tasks or [curves.request_fields(curves.request_from(vars(curve)))]:
                request = curves.request_from(fields)
                found[build.workload_hash(build.workload_module(request))] = request
        except (ValueError, KeyError, TypeError):
            continue                         # a curve of a layer this version cannot build
    for text, shape in DEFAULT_SUITE:
        request = request_of(text, shape)
        found.setdefault(build.workload_hash(build.workload_module(request)), request)
    return found


def report(db_dir, target: Optional[Target] = None) -> List[WorkloadReport]:
    """One :class:`WorkloadReport` per workload of ``db_dir`` with records for ``target`` (default:
    the folder's own, from its name), in the order first tuned."""
    db_dir = Path(db_dir)
    target = target or target_of(db_dir)
    ordered: Dict[str, list] = {}
    mods: Dict[str, object] = {}
    for _, workload, record in records.in_order(db_dir, target):
        ordered.setdefault(workload, []).append(record)
        mods.setdefault(workload, record.workload.mod)
    requests = known_requests(db_dir) if ordered else {}
    versions = records.rule_versions(target)
    return [_summarise(h, recs, requests.get(h), mods[h], target, versions) for h, recs in ordered.items()]


def _summarise(workload_hash, in_order, request, mod, target, versions) -> WorkloadReport:
    ranked = sorted(in_order, key=records.mean_secs)
    if request is not None:
        hand = build.schedule(request, target)
        kinds = records.classify(ranked, hand.trace, versions)
        layer, rule = describe(request), hand.rule
    else:                                   # no hand trace to compare with: marks and samples only
        kinds = records.classify(ranked, _NO_TRACE, versions)
        kinds.searched = [r for r in kinds.searched if records.samples(r.trace)]
        layer, rule = _shapes(mod), None
    searched = {records.trace_key(r.trace) for r in kinds.searched}
    hand_ms = records.mean_secs(kinds.hand[0]) * 1e3 if kinds.hand else None
    best = kinds.valid
    best_ms = records.mean_secs(best[0]) * 1e3 if best else None
    flops = request.spec.flops_for_input(request.input_shape) if request is not None else None
    return WorkloadReport(workload_hash, layer, rule, len(searched), hand_ms, best_ms,
                          _within(in_order, searched, hand_ms, best_ms), len(kinds.stale), flops)


def _within(in_order, searched_keys, hand_ms, best_ms, fraction: float = 0.10) -> Optional[int]:
    """Distinct search trials, in order, until the best so far came within ``fraction`` of the best."""
    if best_ms is None:
        return None
    running, seen = hand_ms if hand_ms is not None else float("inf"), set()
    if running <= best_ms * (1 + fraction):
        return 0
    for record in in_order:                  # a re-measured schedule counts as one trial
        key = records.trace_key(record.trace)
        if key not in searched_keys:
            continue
        seen.add(key)
        running = min(running, records.mean_secs(record) * 1e3)
        if running <= best_ms * (1 + fraction):
            return len(seen)
    return None


class _NoTrace:
    """Stands in for a hand trace when the layer is unknown: matches no record."""

    insts = ()

    def as_json(self, remove_postproc=True):
        return [[], []]


_NO_TRACE = _NoTrace()


_DEFAULTS = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "bias": True,
             "padding_mode": "zeros", "output_padding": [0, 0]}


def describe(request) -> str:
    """``Conv2d(64, 64, 3, padding=1) on 1x64x56x56 float32``: the layer with torch's defaults left
    out, as one would write it."""
    args = request.spec.constructor_args()
    head = [args.pop("in_channels"), args.pop("out_channels")]
    kernel = args.pop("kernel_size")
    head.append(kernel[0] if kernel[0] == kernel[1] else tuple(kernel))
    rest = [f"{k}={v[0] if isinstance(v, list) and v[0] == v[1] else (tuple(v) if isinstance(v, list) else repr(v))}"
            for k, v in args.items() if _DEFAULTS.get(k) != v]
    text = f"{request.spec.class_name}({', '.join(map(str, head + rest))})"
    epilogue = f" then {'+'.join(request.epilogue.steps)}" if request.epilogue.steps else ""
    return f"{text} on {'x'.join(map(str, request.input_shape))} {request.dtype}{epilogue}"


def _shapes(mod) -> str:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    shapes = ["x".join(map(str, arg.as_json()[2])) for arg in ArgInfo.from_prim_func(mod["main"])]
    return f"unknown layer ({' ; '.join(shapes)})"


def format_report(rows: List[WorkloadReport], db_dir, target: Target) -> str:
    from targets import target_key
    head = f"{db_dir} ({target_key(target)}): {len(rows)} workload(s)"
    if not rows:
        return head + "\n"
    width = max(len(r.layer) for r in rows)
    lines = [head, f"{'workload':<{width}}  {'rule':<20} {'trials':>6} {'hand ms':>9} {'best ms':>9} "
                   f"{'speedup':>7} {'to 10%':>6} {'stale':>5} {'GFLOP/s':>8}"]
    for r in rows:
        cell = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"{r.layer:<{width}}  {r.rule or '-':<20} {r.trials:>6} {cell(r.hand_ms, '9.3f'):>9} "
                     f"{cell(r.best_ms, '9.3f'):>9} {cell(r.speedup, '6.2f') + 'x' if r.speedup else '-':>7} "
                     f"{cell(r.within_10, 'd'):>6} {r.stale:>5} {cell(r.best_gflops, '8.1f'):>8}")
    return "\n".join(lines) + "\n"


__all__ = ["report", "format_report", "WorkloadReport", "target_of", "known_requests"]

"""Tuning curves: what a search found, candidate by candidate, written beside its records.

Every tune writes ``<run folder>/curve-<what>-<time>.json``: the workload (``layer`` as its
constructor text, ``input_shape``, ``dtype``, ``output_padding``, ``epilogue``), ``target``, the
search settings, ``hand_ms``, ``best_ms`` and ``points``, one per measured candidate:
``{trial, seconds, best_ms, candidate_ms}`` (``candidate_ms`` null for a candidate that failed to
build or run; ``best_ms`` the best so far, the hand schedule included).  A model's curve has a
point per candidate of any task (with its ``task``), ``best_ms`` being the model's estimated conv
time, and the tasks' own summaries.  :func:`plot` draws one as a PNG (matplotlib: the ``plot``
extra, ``pip install .[plot]``).
"""
from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional


def request_fields(request) -> dict:
    """The JSON fields naming a request (enough to rebuild it: :func:`request_from`)."""
    return {"layer": request.spec.describe(), "input_shape": list(request.input_shape), "dtype": request.dtype,
            "output_padding": list(request.output_padding) if request.output_padding else None,
            "epilogue": list(request.epilogue.steps)}


def request_from(fields: dict):
    """The KernelRequest a curve's (or task's) fields name."""
    from .layers import spec_of
    from .request import Epilogue, KernelRequest
    op = fields.get("output_padding")
    return KernelRequest(spec_of(fields["layer"]), tuple(fields["input_shape"]), fields["dtype"],
                         tuple(op) if op else None, epilogue=Epilogue(tuple(fields.get("epilogue") or ())))


@dataclass
class Point:
    trial: int                       # 1-based, counting this run's candidates
    seconds: float                   # since the search started
    best_ms: float                   # best so far (the hand schedule included)
    candidate_ms: Optional[float]    # this candidate (None: it failed to build or run)
    task: Optional[int] = None       # a model's task index


@dataclass
class Curve:
    layer: str
    input_shape: List[int]
    target: str
    hand_ms: float
    best_ms: Optional[float] = None
    dtype: str = "float32"
    output_padding: Optional[List[int]] = None
    epilogue: List[str] = field(default_factory=list)
    workload_hash: Optional[str] = None
    search: dict = field(default_factory=dict)
    torch_ms: Optional[float] = None
    wall_s: Optional[float] = None
    tasks: Optional[List[dict]] = None       # a model's workloads: request fields, calls, hand/best ms
    points: List[Point] = field(default_factory=list)

    def add(self, seconds: float, candidate_s: Optional[float], task: Optional[int] = None,
            best_ms: Optional[float] = None) -> None:
        """One measured candidate (``best_ms``: the running best, when the caller keeps it)."""
        candidate_ms = candidate_s * 1e3 if candidate_s is not None and math.isfinite(candidate_s) else None
        if best_ms is None:
            previous = self.points[-1].best_ms if self.points else self.hand_ms
            best_ms = min(previous, candidate_ms) if candidate_ms is not None else previous
        self.points.append(Point(len(self.points) + 1, round(seconds, 3), best_ms, candidate_ms, task))

    def within(self, fraction: float = 0.10) -> Optional[Point]:
        """The first point whose best is within ``fraction`` of the curve's final best."""
        if not self.points:
            return None
        final = min(p.best_ms for p in self.points)
        return next(p for p in self.points if p.best_ms <= final * (1 + fraction))

    def to_json(self) -> dict:
        data = asdict(self)
        data["points"] = [{k: v for k, v in p.items() if v is not None or k == "candidate_ms"}
                          for p in data["points"]]
        if data["tasks"] is None:
            del data["tasks"]
        return data

    def save(self, path) -> Path:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return Path(path)


def new_path(folder, name: str) -> Path:
    """A fresh ``folder/curve-<name>-<time>.json`` (each run its own file: a rerun keeps the last's)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = Path(folder) / f"curve-{name}-{stamp}.json", 1
    while path.exists():
        n += 1
        path = Path(folder) / f"curve-{name}-{stamp}-{n}.json"
    return path


def load(path) -> Curve:
    data = json.loads(Path(path).read_text())
    points = [Point(**{k: p.get(k) for k in ("trial", "seconds", "best_ms", "candidate_ms", "task")})
              for p in data.pop("points", [])]
    known = {f for f in Curve.__dataclass_fields__}
    return Curve(**{k: v for k, v in data.items() if k in known}, points=points)


def curve_files(folder) -> List[Path]:
    """Every curve JSON under ``folder`` (a database folder or a run folder), oldest name first."""
    return sorted(Path(folder).rglob("curve*.json"))


class PlotUnavailable(RuntimeError):
    """``--plot`` without matplotlib."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` (with the install line) unless matplotlib imports."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as e:
        raise PlotUnavailable("--plot needs matplotlib, which is not installed: pip install matplotlib "
                              "(or the project's extra: pip install -e '.[plot]')") from e


def plot(curve: Curve, png) -> Path:
    """Best latency against trials and against wall time, the hand schedule (and torch, where
    measured) as reference lines."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    trials = [p.trial for p in curve.points]
    seconds = [p.seconds for p in curve.points]
    best = [p.best_ms for p in curve.points]
    tried = [(p.trial, p.seconds, p.candidate_ms) for p in curve.points if p.candidate_ms is not None]
    for ax, xs, label, index in ((axes[0], trials, "trials", 0), (axes[1], seconds, "wall time (s)", 1)):
        ax.scatter([t[index] for t in tried], [t[2] for t in tried], s=8, color="0.7", label="candidate")
        ax.step(xs, best, where="post", color="C0", label="best so far")
        ax.axhline(curve.hand_ms, color="C3", linestyle="--", label=f"hand-written {curve.hand_ms:.3f} ms")
        if curve.torch_ms:
            ax.axhline(curve.torch_ms, color="C2", linestyle=":", label=f"torch {curve.torch_ms:.3f} ms")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    top = max([curve.hand_ms * 1.6] + [b for b in best if math.isfinite(b)][:1])
    axes[0].set_ylim(0, top)
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{_title(curve)}, {curve.target}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def _title(curve: Curve) -> str:
    """The layer as one would write it (``Conv2d(64, 64, 3, padding=1) on 1x64x56x56 float32``)."""
    if curve.tasks is None:
        try:
            from .report import describe
            return describe(request_from(vars(curve)))
        except (ValueError, TypeError, KeyError):
            pass
    return f"{curve.layer} on {'x'.join(map(str, curve.input_shape))} {curve.dtype}"


__all__ = ["Curve", "Point", "load", "new_path", "plot", "curve_files", "request_fields", "request_from",
           "require_matplotlib", "PlotUnavailable"]

"""``tune``: MetaSchedule search on the project's own tensor expressions, seeded with the hand schedule.

The workload is the layer's unscheduled PrimFunc (torch-layout weights, the form exported libraries
take).  Before the search, the hand-written schedule is measured with the same builder and runner and
committed as a record, so the database's best for the workload is never slower than the default;
lookups that find that record as the best use the hand path (with its once-per-weight packing).
Records go to a run folder of the target's database (see :mod:`compiler.records`): interrupting
keeps every record written, and a rerun counts them toward ``trials`` and continues.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from tvm.ir.utils import derived_object
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from targets import TargetLike, resolve
from targets.cpu import usable_cores
from targets.cuda import local_arch

from . import build, curves, metaschedule_startup, progress, records
from . import space as design_space
from .layers import request_of
from .search import SearchSettings


@dataclass
class TuneResult:
    layer: str
    input_shape: Tuple[int, ...]
    target_key: str
    database_dir: Path
    run_dir: Path
    workload_hash: str
    trials_run: int                 # measured in this call (excluding the hand seed)
    trials_total: int               # search records of this workload in the database after the call
    hand_ms: Optional[float]        # the hand-written schedule as MetaSchedule's runner measured it (fastest)
    best_ms: Optional[float]        # the database's best for the workload
    wall_s: float
    #: (trials measured, seconds since start, best ms so far) after each measured batch
    history: List[Tuple[int, float, float]] = field(default_factory=list)
    curve_path: Optional[Path] = None    # the run's curve JSON (compiler.curves), beside its records
    plot_path: Optional[Path] = None     # its PNG, with ``plot``

    def within(self, fraction: float = 0.10) -> Optional[Tuple[int, float]]:
        """(trials, seconds) this call took to come within ``fraction`` of the best it found."""
        if not self.history:
            return None
        final = min(best for _, _, best in self.history)
        for trials, seconds, best in self.history:
            if best <= final * (1 + fraction):
                return trials, seconds
        return None


def candidate_secs(result) -> Optional[float]:
    """A runner result's mean run time, or None for a candidate that failed to build or run."""
    secs = [float(s) for s in (result.run_secs or [])]
    if secs and result.error_msg is None and all(math.isfinite(s) for s in secs):
        return sum(secs) / len(secs)
    return None


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """The live line (trials done / planned, best latency, GFLOP/s, elapsed and remaining time) and
    the curve, a point per candidate, saved after every batch (a killed run keeps it)."""

    def __init__(self, planned: int, flops: float, best_s: Optional[float], out, curve: curves.Curve,
                 curve_path: Path) -> None:
        self.planned, self.flops, self.best, self.out = planned, flops, best_s, out
        self.curve, self.curve_path = curve, curve_path
        self.done, self.start, self.history = 0, time.perf_counter(), []

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        elapsed = time.perf_counter() - self.start
        for result in runner_results:
            mean = candidate_secs(result)
            if mean is not None:
                self.best = mean if self.best is None else min(self.best, mean)
            self.curve.add(elapsed, mean, best_ms=self.best * 1e3)
        self.curve.save(self.curve_path)
        self.done += len(runner_results)
        self.history.append((self.done, elapsed, self.best * 1e3 if self.best else float("inf")))
        left = elapsed / self.done * max(0, self.planned - self.done)
        best = (f"best {self.best * 1e3:.3f} ms  {self.flops / self.best / 1e9:6.1f} GFLOP/s"
                if self.best else "best -")
        end = "\r" if getattr(self.out, "isatty", lambda: False)() else "\n"
        self.out.write(f"[tune] {self.done}/{self.planned} trials  {best}  elapsed {elapsed:.0f} s  "
                       f"left ~{left:.0f} s{end}")
        self.out.flush()


def _runner(target, rpc_tracker: Optional[str], rpc_key: Optional[str], workers: int):
    # 3 calls a measurement, at least 50 ms each: enough to average out timer noise on
    # sub-millisecond kernels while keeping a trial under a second (measured here).
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50,
                                          enable_cpu_cache_flush=False)
    if rpc_tracker:
        if not rpc_key:
            raise ValueError("--rpc-tracker needs --rpc-key (the key the devices registered with)")
        host, _, port = rpc_tracker.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"rpc tracker must be HOST:PORT, got {rpc_tracker!r}")
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key,
                                     session_timeout_sec=60)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=workers)
    kind = str(target.kind.name)
    if kind == "llvm" or (kind == "cuda" and local_arch() == str(target.attrs.get("arch"))):
        return ms.runner.LocalRunner(evaluator_config=evaluator)      # this CPU, or this machine's GPU
    raise ValueError(f"measuring on {kind} {target.attrs.get('arch', '')} needs a device of that kind: run on "
                     "a machine with one, or pass rpc_tracker/rpc_key (a build machine without a GPU "
                     "tunes through TVM's RPC tracker)")


def _measure(modules, target, builder, runner, args_info, rounds: int = 1):
    """Mean run time of each scheduled module with the tuner's own builder and runner, the best of
    ``rounds`` rounds: ``(seconds or None, error or None)`` per module."""
    built = builder.build([ms.builder.BuilderInput(m, target) for m in modules])
    device = "cpu" if str(target.kind.name) == "llvm" else str(target.kind.name)
    best = [math.inf] * len(modules)
    errors = [b.error_msg for b in built]
    ok = [i for i, b in enumerate(built) if not b.error_msg]
    for _ in range(rounds):
        futures = runner.run([ms.runner.RunnerInput(built[i].artifact_path, device, args_info) for i in ok])
        for i, result in zip(ok, (f.result() for f in futures)):
            if result.error_msg is None and result.run_secs:
                secs = [float(v) for v in result.run_secs]
                best[i] = min(best[i], sum(secs) / len(secs))
            else:
                errors[i] = errors[i] or result.error_msg
    return [(b if math.isfinite(b) else None, e) for b, e in zip(best, errors)]


def tune(layer, input_shape: Optional[Sequence[int]] = None, target: TargetLike = None, trials: int = 64,
         work_dir=None, *, dtype: str = "float32", output_padding=None, trials_per_iter: int = 16,
         rpc_tracker: Optional[str] = None, rpc_key: Optional[str] = None, seed: Optional[int] = None,
         out=None, verbose: bool = False, final_check: int = 3, population: int = 512,
         strategy: str = "evolutionary", cost_model: str = "xgboost", space: str = "both",
         plot: bool = False) -> TuneResult:
    """Tune ``layer`` (a Conv2d/ConvTranspose2d of ours or torch's, or its text) for ``input_shape``,
    or a :class:`~compiler.request.KernelRequest` (which holds its shape, dtype and epilogue).

    ``trials`` counts this workload's search records already in the database, so a rerun after an
    interruption continues where it stopped.  ``work_dir`` defaults to ``tuning_logs/<target key>``
    (or ``$TVM_CONV_DATABASE``).  Returns what was measured; compilation picks the records up.
    MetaSchedule's own log goes to ``<run folder>/logs`` (and to stdout too with ``verbose``).
    ``final_check``: how many of the best search records to re-measure beside the hand schedule
    at the end (0: none).  ``strategy``, ``cost_model``, ``population``, ``seed``: the search
    (:class:`compiler.search.SearchSettings`: evolutionary, replay-trace or replay-func; xgboost
    or random; a seed repeats the search's choices).  ``space``: the design spaces searched,
    ``ours`` (the hand-written rule's, its tiles as decisions around the hand choice), ``generic``
    (MetaSchedule's) or ``both``.  Each call writes a curve JSON
    (:mod:`compiler.curves`) into the run folder, and with ``plot`` its PNG (needs matplotlib).
    """
    settings = SearchSettings(strategy, cost_model, population, seed, space)
    if plot:
        curves.require_matplotlib()
    out = out or sys.stdout
    start = time.perf_counter()
    target = resolve(target)
    request = request_of(layer, input_shape, dtype, output_padding)
    db_dir = records.database_dir(target, work_dir)
    workers = usable_cores()
    with _unbound_threads():
        return _tune(request, target, trials, db_dir, trials_per_iter,
                     _runner(target, rpc_tracker, rpc_key, workers), workers, settings, out, verbose, start,
                     final_check, plot)


@contextlib.contextmanager
def _unbound_threads():
    """Measured here: with TVM's default core binding, the runner's worker process timed a 9 us
    kernel at 4-12 ms (its pool threads contend for a core); unbound, 15 us.  Workers inherit this."""
    previous_bind = os.environ.get("TVM_BIND_THREADS")
    os.environ["TVM_BIND_THREADS"] = "0"
    try:
        yield
    finally:
        if previous_bind is None:
            os.environ.pop("TVM_BIND_THREADS", None)
        else:
            os.environ["TVM_BIND_THREADS"] = previous_bind


@dataclass
class _Task:
    """One workload of a tuning run, its hand schedule measured (or found) and committed as a record."""

    request: object
    mod: object                      # the workload IRModule (torch-layout weights)
    hand: build.Scheduled
    hand_s: float
    workload: object                 # its entry in the run's database
    searched: List[object]           # valid search records already in the database (fastest first)
    versions: dict                   # the target's rules: their current versions

    def ranked(self, db_dir, target) -> records.Ranked:
        """The workload's records in ``db_dir`` now, sorted out against the hand schedule."""
        return records.classify(records.workload_records(db_dir, target, self.mod), self.hand.trace,
                                self.versions)

    @property
    def distinct_searched(self) -> int:
        """Distinct schedules searched so far (the final check re-commits traces already measured)."""
        return len({records.trace_key(r.trace) for r in self.searched})


def _prepare_task(request, target, db_dir, writer, builder, runner, out) -> _Task:
    """The task of ``request``: its hand schedule's time from the database, or measured now with the
    tuner's builder and runner and committed, so the database's best is never slower than it.
    Records of older rule versions are left aside (:func:`records.classify`)."""
    mod = build.workload_module(request)
    hand = build.schedule(request, target)
    versions = records.rule_versions(target)
    known = records.classify(records.workload_records(db_dir, target, mod), hand.trace, versions)
    workload = writer.commit_workload(mod)
    if known.hand:
        return _Task(request, mod, hand, records.mean_secs(known.hand[0]), workload, known.searched, versions)
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    with progress.step(f"measuring the hand-written schedule of {request.describe()} (the search's "
                       "baseline)", out):
        ((secs, error),) = _measure([hand.mod], target, builder, runner, args_info)
    if secs is None:
        raise RuntimeError(f"measuring the hand-written schedule failed: {error}")
    writer.commit_tuning_record(ms.database.TuningRecord(hand.trace, workload, [secs], target, args_info))
    return _Task(request, mod, hand, secs, workload, known.searched, versions)


def _builder(workers: int):
    # 120 s: two tuners sharing these 2 cores took over the default 30 s for one build (measured).
    return ms.builder.LocalBuilder(max_workers=workers, timeout_sec=120, f_build=metaschedule_startup.build)


@contextlib.contextmanager
def _metaschedule_logging(verbose: bool):
    """MetaSchedule's console at WARNING unless ``verbose``, and its logger free of unnamed handlers
    while it runs: its ``create_loggers`` re-lists the logger's handlers by name for ``dictConfig``
    and fails on ``None`` (``'NoneType' object has no attribute 'format'``).  pytest >= 8 attaches
    its unnamed capture handlers to every non-propagating logger, which MetaSchedule's is after its
    first run.  They are put back afterwards."""
    console = logging.getLogger("tvm.s_tir.meta_schedule")
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)   # its console handler's level
    unnamed = [h for h in console.handlers if h.get_name() is None]
    for handler in unnamed:
        console.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            console.addHandler(handler)


def _tune(request, target, trials, db_dir, trials_per_iter, runner, workers, settings, out, verbose, start,
          final_check, plot) -> TuneResult:
    flops = request.spec.flops_for_input(request.input_shape)
    builder = _builder(workers)
    with records.RunFolder(db_dir) as run:
        writer = run.database()
        task = _prepare_task(request, target, db_dir, writer, builder, runner, out)
        mod, hand_s, searched = task.mod, task.hand_s, task.searched
        best_known = min([hand_s] + [records.mean_secs(r) for r in searched])
        # distinct schedules: the final check re-commits traces already measured
        remaining = max(0, trials - task.distinct_searched)
        curve = curves.Curve(**curves.request_fields(request), target=records.target_key(target),
                             hand_ms=hand_s * 1e3, workload_hash=build.workload_hash(mod),
                             search=asdict(settings))
        curve_path = curves.new_path(run.path, build.workload_hash(mod))
        counter = _Progress(remaining, flops, best_known, out, curve, curve_path)
        if remaining:
            out.write(f"[tune] {request.describe()}: {remaining} trials "
                      f"({len(searched)} already in {db_dir}), hand-written {hand_s * 1e3:.3f} ms\n")
            with _metaschedule_logging(verbose):
                ms.tune_tir(mod, target, work_dir=str(run.path), max_trials_global=remaining,
                            num_trials_per_iter=min(trials_per_iter, remaining), builder=builder,
                            runner=runner, database=writer, strategy=settings.make_strategy(),
                            cost_model=settings.make_cost_model(workers),
                            space=design_space.generator(request, target, settings.space),
                            measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                            + [counter], num_tuning_cores=settings.search_threads(workers),
                            seed=settings.seed)
            if getattr(out, "isatty", lambda: False)():
                out.write("\n")
        if final_check:
            hand_s = _final_check(task, writer, target, builder, runner, db_dir, final_check, out) or hand_s
        run_dir = run.path
    build.clear_cache()                       # kernels compiled before now may have a better record
    final = task.ranked(db_dir, target)
    best_ms = records.mean_secs(final.valid[0]) * 1e3 if final.valid else None
    # the hand schedule's fastest measurement, as the lookup compares it (build.tuned_schedule): a
    # re-measurement that reads high must not make the hand schedule's own record look like a win
    if final.hand:
        hand_s = records.mean_secs(final.hand[0])
    wall_s = time.perf_counter() - start
    curve.hand_ms, curve.best_ms, curve.wall_s = hand_s * 1e3, best_ms, round(wall_s, 3)
    curve.save(curve_path)
    png = curves.plot(curve, curve_path.with_suffix(".png")) if plot else None
    return TuneResult(
        layer=request.spec.describe(), input_shape=request.input_shape, target_key=records.target_key(target),
        database_dir=db_dir, run_dir=run_dir, workload_hash=build.workload_hash(mod),
        trials_run=counter.done, trials_total=final.distinct_searched(), hand_ms=hand_s * 1e3,
        best_ms=best_ms, wall_s=wall_s, history=counter.history, curve_path=curve_path, plot_path=png)


def _final_check(task: _Task, writer, target, builder, runner, db_dir, top: int, out):
    """Re-measure the hand schedule and the ``top`` best search records side by side, twice, and
    commit the faster round of each as a fresh record; returns the hand schedule's time (None when
    there is no search record).

    Measurements only err upwards (another process on the cores, a cold cache), and records made
    at different moments of a long search are not comparable; this puts the finalists on one footing
    so the database's best really is the fastest, and never slower than the hand schedule."""
    mod, hand = task.mod, task.hand
    finalists, seen = [], set()
    for record in task.ranked(db_dir, target).searched:
        key = records.trace_key(record.trace)
        if key not in seen:
            seen.add(key)
            finalists.append(record.trace)
        if len(finalists) == top:
            break
    if not finalists:
        return None                  # nothing searched to put beside the hand schedule
    modules = [hand.mod]
    for trace in finalists:
        sch = s_tir.Schedule(mod)
        trace.apply_to_schedule(sch, remove_postproc=False)
        modules.append(sch.mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    with progress.step(f"final check: the hand schedule and the {len(finalists)} best records, "
                       "re-measured side by side twice", out):
        times = _measure(modules, target, builder, runner, args_info, rounds=2)
    for trace, (secs, _) in zip([hand.trace] + finalists, times):
        if secs is not None:
            writer.commit_tuning_record(ms.database.TuningRecord(trace, task.workload, [secs], target,
                                                                 args_info))
    return times[0][0]


def tune_many(layers: Sequence[Tuple[object, Sequence[int]]], report: Callable[[TuneResult], None] = None,
              **kwargs) -> List[TuneResult]:
    """Tune several (layer, input shape) pairs one after the other, into the same database."""
    results = []
    for layer, shape in layers:
        result = tune(layer, shape, **kwargs)
        results.append(result)
        if report:
            report(result)
    return results


__all__ = ["tune", "tune_many", "TuneResult"]

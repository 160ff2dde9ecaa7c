"""``tune_model``: every conv workload of a model, tuned together by MetaSchedule's task scheduler.

The workloads are what the converted model asks for on the example inputs (fused epilogues
included), found by running it on meta tensors (shapes only: nothing compiled, nothing computed),
deduplicated, and weighted by how many times one forward calls each.  MetaSchedule's gradient task
scheduler then spends the trial budget where weight x current latency says the model's time is
(each task's share of the model's latency), with the project's builder, runner and record folders:
every hand schedule is measured and committed first, records already in the database count toward
the budget (a rerun resumes), and a final check re-measures each task's best beside its hand schedule.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from targets import TargetLike, resolve
from targets.cpu import usable_cores

from . import build, curves, records
from . import space as design_space
from .conversion import convert, converted_layers
from .request import NCHW, KernelRequest
from .search import SearchSettings
from .tuning import (_builder, _final_check, _prepare_task, _metaschedule_logging, _runner, _Task, _unbound_threads,
                     candidate_secs)


def capture(model: torch.nn.Module, example_inputs, fuse: bool = True, nchw: bool = False
            ) -> Tuple[torch.nn.Module, List[Tuple[str, KernelRequest]]]:
    """(the converted model, (module path, request) of each conv call one forward makes on
    ``example_inputs``, in call order).  ``model`` may be a torch model (converted here, with ``fuse``)
    or a converted one.  The forward runs on meta tensors: nothing is compiled or computed.
    ``nchw``: every request in NCHW, the layout exported libraries and tuning records take
    (channels_last tensors otherwise ask for NHWC kernels where a rule reads them:
    ``ops.kernel_layout``)."""
    converted = convert(model, fuse=fuse) if _has_torch_convs(model) else model
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    shadow = copy.deepcopy(converted).to("meta")          # shapes only: our layers build no kernels on meta
    paths = {id(m): name for name, m in shadow.named_modules()}
    calls: List[Tuple[str, KernelRequest]] = []

    def record(module, args, output):
        calls.append((paths[id(module)], module.last_request))

    hooks = [m.register_forward_hook(record) for m in converted_layers(shadow)]
    try:
        with torch.no_grad():
            shadow(*(x.to("meta") for x in inputs))
    finally:
        for h in hooks:
            h.remove()
    if nchw:
        calls = [(path, dataclasses.replace(request, layout=NCHW)) for path, request in calls]
    return converted, calls


def model_workloads(model: torch.nn.Module, example_inputs, fuse: bool = True) -> List[Tuple[KernelRequest, int]]:
    """(request, calls per forward) of every conv kernel ``model`` runs on ``example_inputs``, in
    the order first called (see :func:`capture`)."""
    _, calls = capture(model, example_inputs, fuse, nchw=True)
    return list(Counter(request for _, request in calls).items())


def _shape_of(example_inputs) -> List[int]:
    first = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    return list(first.shape)


def _has_torch_convs(model) -> bool:
    from .conversion import convertible
    return any(convertible(m) for m in model.modules())


@dataclass
class TaskResult:
    request: KernelRequest
    calls: int                      # per forward
    hand_ms: float
    best_ms: float
    trials: int                     # distinct schedules searched, this run and before


@dataclass
class ModelTuneResult:
    tasks: List[TaskResult]
    database_dir: Path
    run_dir: Path
    trials_run: int
    wall_s: float
    history: List[Tuple[int, float]] = field(default_factory=list)   # (trials, estimated model ms)
    curve_path: Optional[Path] = None      # the run's curve JSON (compiler.curves)
    plot_path: Optional[Path] = None       # its PNG, with ``plot``

    @property
    def hand_ms(self) -> float:
        """The model's conv time with hand schedules (sum of calls x hand kernel time)."""
        return sum(t.calls * t.hand_ms for t in self.tasks)

    @property
    def best_ms(self) -> float:
        return sum(t.calls * t.best_ms for t in self.tasks)


@derived_object
class _ModelProgress(ms.measure_callback.PyMeasureCallback):
    """A line per measured batch: the task, its trials and best, and the whole model's estimate."""

    def __init__(self, tasks: List[_Task], weights: List[int], planned: int, out, curve: curves.Curve,
                 curve_path) -> None:
        self.tasks, self.weights, self.planned, self.out = tasks, weights, planned, out
        self.curve, self.curve_path = curve, curve_path
        self.best = [min([t.hand_s] + [records.mean_secs(r) for r in t.searched]) for t in tasks]
        self.done = [0] * len(tasks)
        self.start, self.history = time.perf_counter(), []

    def model_ms(self) -> float:
        return sum(w * b for w, b in zip(self.weights, self.best)) * 1e3

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        elapsed = time.perf_counter() - self.start
        for result in runner_results:
            mean = candidate_secs(result)
            if mean is not None:
                self.best[task_id] = min(self.best[task_id], mean)
            self.curve.add(elapsed, mean, task=task_id, best_ms=self.model_ms())
        self.curve.save(self.curve_path)
        self.done[task_id] += len(runner_results)
        total = sum(self.done)
        self.history.append((total, self.model_ms()))
        left = elapsed / total * max(0, self.planned - total)
        task = self.tasks[task_id]
        self.out.write(f"[tune-model] task {task_id + 1}/{len(self.tasks)} x{self.weights[task_id]} "
                       f"{task.request.describe()}: {self.done[task_id]} trials, best "
                       f"{self.best[task_id] * 1e3:.3f} ms (hand {task.hand_s * 1e3:.3f}) | model convs "
                       f"{self.model_ms():.2f} ms, {total}/{self.planned} trials, {elapsed:.0f} s, "
                       f"left ~{left:.0f} s\n")
        self.out.flush()


def tune_model(model: torch.nn.Module, example_inputs, target: TargetLike = None, trials: int = 256, *,
               work_dir=None, fuse: bool = True, trials_per_iter: int = 16, rpc_tracker: Optional[str] = None,
               rpc_key: Optional[str] = None, seed: Optional[int] = None, final_check: int = 1,
               population: int = 512, out=None, verbose: bool = False, strategy: str = "evolutionary",
               cost_model: str = "xgboost", space: str = "both", plot: bool = False) -> ModelTuneResult:
    """Tune every conv workload of ``model`` on ``example_inputs`` into the target's database.

    ``trials``: the budget for the whole model (search records already in the database count, so a
    rerun resumes); the gradient task scheduler shares it by each task's part of the model's time.
    ``fuse``: tune the fused workloads ``convert(model)`` runs (the default) or the plain ones.
    The rest as :func:`compiler.tuning.tune`.  A model converted afterwards (same ``fuse``) picks the
    records up.
    """
    out = out or sys.stdout
    settings = SearchSettings(strategy, cost_model, population, seed, space)
    if plot:
        curves.require_matplotlib()
    start = time.perf_counter()
    target = resolve(target)
    workloads = model_workloads(model, example_inputs, fuse)
    db_dir = records.database_dir(target, work_dir)
    workers = usable_cores()
    with _unbound_threads():
        runner = _runner(target, rpc_tracker, rpc_key, workers)
        builder = _builder(workers)
        with records.RunFolder(db_dir) as run:
            writer = run.database()
            out.write(f"[tune-model] {type(model).__name__}: {len(workloads)} distinct conv workloads, "
                      f"{sum(c for _, c in workloads)} calls per forward; database {db_dir}\n")
            tasks = [_prepare_task(request, target, db_dir, writer, builder, runner, out)
                     for request, _ in workloads]
            weights = [calls for _, calls in workloads]
            remaining = max(0, trials - sum(t.distinct_searched for t in tasks))
            curve = curves.Curve(layer=type(model).__name__, input_shape=_shape_of(example_inputs),
                                 target=records.target_key(target), search=asdict(settings),
                                 hand_ms=sum(w * t.hand_s for w, t in zip(weights, tasks)) * 1e3)
            curve_path = curves.new_path(run.path, f"model-{type(model).__name__}")
            counter = _ModelProgress(tasks, weights, remaining, out, curve, curve_path)
            out.write(f"[tune-model] hand schedules: model convs {curve.hand_ms:.2f} ms; {remaining} "
                      f"trials to run ({sum(t.distinct_searched for t in tasks)} already in the database)\n")
            if remaining:
                with _metaschedule_logging(verbose):
                    contexts = [ms.TuneContext(mod=t.mod, target=target,
                                               space_generator=design_space.generator(t.request, target, space),
                                               search_strategy=settings.make_strategy(),
                                               task_name=f"task{i}", rand_state=settings.rand_state(i),
                                               num_threads=settings.search_threads(workers)).clone()
                                for i, t in enumerate(tasks)]
                    ms.tune_tasks(tasks=contexts, task_weights=[float(w) for w in weights], work_dir=str(run.path),
                                  max_trials_global=remaining, num_trials_per_iter=trials_per_iter,
                                  builder=builder, runner=runner, database=writer,
                                  cost_model=settings.make_cost_model(workers),
                                  measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                                  + [counter], task_scheduler="gradient")
            if final_check:
                for task in tasks:
                    task.hand_s = _final_check(task, writer, target, builder, runner, db_dir, final_check,
                                               out) or task.hand_s
            run_dir = run.path
    build.clear_cache()
    results = []
    for task, calls in zip(tasks, weights):
        ranked = task.ranked(db_dir, target)
        results.append(TaskResult(task.request, calls, task.hand_s * 1e3,
                                  records.mean_secs(ranked.valid[0]) * 1e3 if ranked.valid else task.hand_s * 1e3,
                                  ranked.distinct_searched()))
    result = ModelTuneResult(results, db_dir, run_dir, sum(counter.done), time.perf_counter() - start,
                             counter.history, curve_path)
    curve.hand_ms, curve.best_ms, curve.wall_s = result.hand_ms, result.best_ms, round(result.wall_s, 3)
    curve.tasks = [dict(curves.request_fields(t.request), calls=t.calls, hand_ms=t.hand_ms, best_ms=t.best_ms,
                        trials=t.trials) for t in results]
    curve.save(curve_path)
    if plot:
        result.plot_path = curves.plot(curve, curve_path.with_suffix(".png"))
    out.write(f"[tune-model] done: model convs {result.hand_ms:.2f} ms with hand schedules -> "
              f"{result.best_ms:.2f} ms with the best records, {result.trials_run} trials in "
              f"{result.wall_s:.0f} s -> {run_dir}\n[tune-model] curve {curve_path}"
              + (f", plot {result.plot_path}" if result.plot_path else "") + "\n")
    return result


__all__ = ["capture", "model_workloads", "tune_model", "ModelTuneResult", "TaskResult"]

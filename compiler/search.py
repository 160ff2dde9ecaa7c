"""Search settings for research: MetaSchedule's search strategy, cost model, population and seed,
as one value the CLI and ``tune``/``tune_model`` share.

Strategies: ``evolutionary`` (MetaSchedule's default: a population sampled from the design spaces
and from the database's best records, mutated, ranked by the cost model), ``replay-trace`` (each
candidate is a design space's trace replayed with fresh random decisions: no cost model, no
evolution) and ``replay-func`` (each candidate is a design space generated anew: MetaSchedule's
schedule rules re-run).  Cost models (used by ``evolutionary`` only): ``xgboost`` and ``random``.
MetaSchedule's segment-sum MLP is not offered: untrained, its first update holds a fifth of the
workloads out for testing, and with fewer than five (one, tuning a layer) it fails
(``ValueError: need at least one array to concatenate`` in ``SegmentSumMLPTrainer.train_full``).

Reproducibility: with a ``seed``, the search's random choices (and the random cost model's) are
seeded, so the same settings on the same workload and database propose the same candidates.  The
search's later batches also depend on what was measured (the database's best records seed the
evolution, the cost model learns from run times), so only strategies that never look at
measurements (``replay-trace``) repeat whole runs exactly; the evolutionary search repeats its
first batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy
from tvm.ir.utils import derived_object

STRATEGIES = ("evolutionary", "replay-trace", "replay-func")
#: design spaces (compiler.space): the hand-written rule's, MetaSchedule's generic one, or both
SPACES = ("ours", "generic", "both")
COST_MODELS = ("xgboost", "random")


@dataclass(frozen=True)
class SearchSettings:
    """How MetaSchedule searches (see the module docstring)."""

    strategy: str = "evolutionary"
    cost_model: str = "xgboost"
    #: the evolutionary search's population per round (MetaSchedule's default 512; small values make
    #: tiny runs fast, as the tests do)
    population: int = 512
    seed: Optional[int] = None
    space: str = "both"

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"design space {self.space!r}: expected one of {', '.join(SPACES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"search strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"cost model {self.cost_model!r}: expected one of {', '.join(COST_MODELS)}")
        if self.population < 1:
            raise ValueError(f"population must be >= 1, got {self.population}")
        if self.seed is not None and not 0 <= self.seed < 2 ** 31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")

    def search_threads(self, workers: int) -> int:
        """Threads that propose candidates: one with a seed.  MetaSchedule samples in parallel with a
        random stream per thread, and which thread takes which candidate depends on timing, so two
        seeded runs on two threads proposed different candidates on a loaded machine (CI)."""
        return 1 if self.seed is not None else workers

    def make_strategy(self) -> ms.search_strategy.SearchStrategy:
        if self.strategy == "replay-trace":
            return UntilExhausted(ms.search_strategy.ReplayTrace())
        if self.strategy == "replay-func":
            return UntilExhausted(ms.search_strategy.ReplayFunc())
        return UntilExhausted(ms.search_strategy.EvolutionarySearch(population_size=self.population,
                                                                    init_min_unmeasured=min(50, self.population)))

    def make_cost_model(self, workers: int) -> ms.cost_model.CostModel:
        """The cost model; with a seed, numpy's global generator is seeded too: MetaSchedule's models
        draw from it (the XGBoost model scores candidates at random until it has trained)."""
        if self.seed is not None:
            np.random.seed(self.seed)
        if self.cost_model == "random":
            return ms.cost_model.RandomModel(seed=self.seed)
        return ms.cost_model.XGBModel(num_tuning_cores=workers)

    def rand_state(self, offset: int = 0) -> int:
        """The TuneContext's random state: -1 (from the clock) without a seed."""
        return -1 if self.seed is None else self.seed + offset

    def describe(self) -> str:
        model = f", {self.cost_model} cost model" if self.strategy == "evolutionary" else ""
        population = f", population {self.population}" if self.strategy == "evolutionary" else ""
        seed = f", seed {self.seed}" if self.seed is not None else ""
        return f"{self.strategy} search of {self.space} space(s){model}{population}{seed}"


#: Empty batches in a row after which a search has nothing left to measure.
EMPTY_BATCHES = 2


@derived_object
class UntilExhausted(PySearchStrategy):
    """MetaSchedule's ``inner`` strategy, ended once it has nothing new to propose.  Once every schedule
    of a small space is measured (our rules' spaces hold 5-100), the evolutionary search sends empty
    batches, ~40 s each on 2 cores, and the task never ends: ``tune --space ours --trials 48`` on a
    7-schedule space ran on until killed.  ``EMPTY_BATCHES`` empty batches in a row end it."""

    def __init__(self, inner: ms.search_strategy.SearchStrategy) -> None:
        self.inner, self.empty = inner, 0

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.empty = 0
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        candidates = self.inner.generate_measure_candidates()
        if candidates is not None and len(candidates) == 0:
            self.empty += 1
            return None if self.empty >= EMPTY_BATCHES else candidates
        self.empty = 0
        return candidates

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> "UntilExhausted":
        return UntilExhausted(self.inner.clone())


__all__ = ["SearchSettings", "STRATEGIES", "COST_MODELS", "SPACES", "UntilExhausted", "EMPTY_BATCHES"]

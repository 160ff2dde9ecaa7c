"""Search settings for research (strategy, cost model, population, seed) from Python and the CLI,
and reproducibility: the same seed proposes the same candidates.  Tiny runs (4 trials)."""
import io
import json

import numpy as np
import pytest

import compiler.tuning
from compiler import records
from compiler.__main__ import main
from compiler.search import COST_MODELS, STRATEGIES, SearchSettings
from compiler.tuning import tune

LAYER, SHAPE = "Conv2d(4, 6, 3, padding=1)", (1, 4, 8, 8)


def _candidates(result):
    """The traces this run measured, in the order it measured them (the hand schedule first)."""
    lines = (result.run_dir / records.RECORDS).read_text().splitlines()
    return [json.dumps(json.loads(line)[1][0], sort_keys=True) for line in lines]


def _run(tmp_path, name, **settings):
    return tune(LAYER, SHAPE, trials=4, trials_per_iter=4, work_dir=tmp_path / name, final_check=0,
                population=16, out=io.StringIO(), **settings)


@pytest.mark.parametrize("strategy,cost_model", [("evolutionary", "xgboost"), ("replay-trace", "random")])
def test_same_seed_same_candidates(tmp_path, strategy, cost_model):
    first = _run(tmp_path, "a", strategy=strategy, cost_model=cost_model, seed=7)
    again = _run(tmp_path, "b", strategy=strategy, cost_model=cost_model, seed=7)
    assert first.trials_run == again.trials_run == 4
    assert len(_candidates(first)) == 5                       # the hand schedule, then 4 candidates
    assert _candidates(first) == _candidates(again)
    if strategy == "replay-trace":                            # another seed: other candidates
        other = _run(tmp_path, "c", strategy=strategy, cost_model=cost_model, seed=8)
        assert _candidates(other)[0] == _candidates(first)[0]          # the same hand schedule
        assert _candidates(other)[1:] != _candidates(first)[1:]


def test_replay_func_with_the_random_cost_model_tunes(tmp_path):
    result = tune(LAYER, SHAPE, trials=2, trials_per_iter=2, work_dir=tmp_path / "db", final_check=0,
                  strategy="replay-func", cost_model="random", seed=0, out=io.StringIO())
    assert result.trials_run == 2 and result.best_ms <= result.hand_ms


def test_metaschedules_mlp_model_cannot_train_on_one_workload():
    """Why ``mlp`` is not a choice: MetaSchedule's MLP trainer holds a fifth of the workloads out for
    testing, and with a single workload its first full training fails."""
    from tvm.s_tir.meta_schedule.cost_model.mlp_model import SegmentSumMLPTrainer
    trainer = SegmentSumMLPTrainer()
    trainer.state.add_to_group([np.ones((2, 164), dtype="float32")], np.array([1e-3]), "workload")
    with pytest.raises(ValueError, match="need at least one array to concatenate"):
        trainer.train_full()


@pytest.mark.parametrize("kwargs,message", [
    (dict(strategy="annealing"), "search strategy 'annealing': expected one of evolutionary, replay-trace, replay-func"),
    (dict(cost_model="mlp"), "cost model 'mlp': expected one of xgboost, random"),
    (dict(population=0), "population must be >= 1, got 0"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*31\), got -1"),
    (dict(space="mine"), "design space 'mine': expected one of ours, generic, both")], ids=str)
def test_bad_settings_are_refused_before_anything_runs(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tune(LAYER, SHAPE, trials=1, work_dir=tmp_path / "db", **kwargs)
    assert not (tmp_path / "db").exists()


def test_settings_make_metaschedule_objects():
    from tvm.s_tir import meta_schedule as ms
    kinds = {"evolutionary": ms.search_strategy.EvolutionarySearch, "replay-trace": ms.search_strategy.ReplayTrace,
             "replay-func": ms.search_strategy.ReplayFunc}
    assert set(kinds) == set(STRATEGIES)
    for name, kind in kinds.items():         # each ended once it has nothing new to measure
        assert isinstance(SearchSettings(strategy=name).make_strategy().inner, kind)
    models = {"xgboost": "XGBModel", "random": "RandomModel"}
    assert set(models) == set(COST_MODELS)
    for name, kind in models.items():
        assert type(SearchSettings(cost_model=name).make_cost_model(1)).__name__ == kind
    assert SearchSettings(seed=5).rand_state(2) == 7 and SearchSettings().rand_state(2) == -1


def test_cli_passes_the_settings_to_the_tuner(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(compiler.tuning, "tune_many", lambda layers, report=None, **kw: seen.update(kw) or [])
    assert main(["tune", "--layer", LAYER, "--input-shape", "1,4,8,8", "--work-dir", str(tmp_path),
                 "--strategy", "replay-trace", "--cost-model", "random", "--population", "8", "--seed", "3",
                 "--space", "ours"]) == 0
    assert (seen["strategy"], seen["cost_model"], seen["population"], seen["seed"], seen["space"]) == \
        ("replay-trace", "random", 8, 3, "ours")
    assert main(["tune", "--layer", LAYER, "--input-shape", "1,4,8,8", "--work-dir", str(tmp_path)]) == 0
    assert (seen["strategy"], seen["cost_model"], seen["seed"], seen["space"]) == ("evolutionary", "xgboost", None,
                                                                                   "both")

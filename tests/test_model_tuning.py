"""``tune_model``: a model's conv workloads captured, deduplicated and tuned across tasks, resumable."""
import io

import torch
from torch import nn

from compiler import build, records
from compiler.conversion import convert, converted_layers
from compiler.model_tuning import model_workloads, tune_model
from targets import host_target


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)).eval()


def test_workloads_are_captured_fused_and_deduplicated():
    x = torch.randn(1, 4, 10, 10)
    fused = model_workloads(_model(), x)
    assert [(r.describe().split(" on ")[1], calls) for r, calls in fused] == [
        ("1x4x10x10 float32 then relu", 1), ("1x8x10x10 float32", 2)]
    plain = model_workloads(_model(), x, fuse=False)
    assert [str(r.epilogue) for r, _ in plain] == ["none", "none"]
    assert build._CACHE == {} or all(k[0] not in {r for r, _ in fused} for k in build._CACHE), "nothing compiled"


def test_tiny_model_tuning_run_resumes_and_serves_the_converted_model(tmp_path):
    x, db, log = torch.randn(1, 4, 10, 10), tmp_path / "db", io.StringIO()
    result = tune_model(_model(), x, trials=4, trials_per_iter=2, work_dir=db, population=8, seed=0,
                        final_check=0, out=log)
    text = log.getvalue()
    assert "[tune-model] Sequential: 2 distinct conv workloads, 3 calls per forward" in text
    assert "[tune-model] task " in text and "model convs" in text and "[tune-model] done:" in text
    assert [t.calls for t in result.tasks] == [1, 2]
    assert result.trials_run == 4 and sum(t.trials for t in result.tasks) >= 1
    assert all(t.best_ms <= t.hand_ms for t in result.tasks)
    for task in result.tasks:                         # every workload has its hand schedule recorded
        assert records.workload_records(db, host_target(), build.workload_module(task.request))
    again = tune_model(_model(), x, trials=4, work_dir=db, population=8, final_check=0, out=io.StringIO())
    assert again.trials_run == 0                       # the budget is already spent: resumed, nothing run
    converted = convert(_model(), tuning_database=db)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), _model()(x), rtol=1e-4, atol=1e-5)
    assert {m.kernel.request for m in converted_layers(converted)} == {t.request for t in result.tasks}

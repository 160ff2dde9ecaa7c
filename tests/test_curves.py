"""Tuning curves (a JSON beside the records of every tune, a PNG with --plot) and ``compiler report``
(a database summarised per workload).  One tiny tune (4 trials) serves them all."""
import io
import json
import struct
import sys

import pytest

from compiler import curves, records, report
from compiler.__main__ import main
from compiler.tuning import tune
from targets import host_target

LAYER, SHAPE = "Conv2d(4, 6, 3, padding=1)", (1, 4, 8, 8)
FIELDS = {"layer", "input_shape", "target", "hand_ms", "best_ms", "points"}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "my-tuning"
    result = tune(LAYER, SHAPE, trials=4, trials_per_iter=2, work_dir=db, seed=0, population=16,
                  final_check=1, plot=True, out=io.StringIO())
    return db, result


def test_a_tune_writes_its_curve_beside_its_records(tuned):
    db, result = tuned
    assert result.curve_path.parent == result.run_dir and result.curve_path.name.startswith("curve-")
    data = json.loads(result.curve_path.read_text())
    assert FIELDS <= set(data)
    assert data["input_shape"] == list(SHAPE) and data["target"] == records.target_key(host_target())
    assert data["hand_ms"] == pytest.approx(result.hand_ms) and data["best_ms"] == pytest.approx(result.best_ms)
    assert data["search"]["strategy"] == "evolutionary" and data["search"]["seed"] == 0
    points = data["points"]
    assert [p["trial"] for p in points] == [1, 2, 3, 4]
    assert all(set(p) == {"trial", "seconds", "best_ms", "candidate_ms"} for p in points)
    assert all(a["seconds"] <= b["seconds"] and a["best_ms"] >= b["best_ms"] for a, b in zip(points, points[1:]))
    for p in points:                          # the best so far is the hand's or a candidate's
        assert p["candidate_ms"] is None or p["best_ms"] <= p["candidate_ms"] + 1e-9
    assert curves.request_from(data).spec.describe() == result.layer
    assert curves.load(result.curve_path).within() is not None


def test_plot_draws_a_png(tuned):
    _, result = tuned
    png = result.plot_path
    assert png == result.curve_path.with_suffix(".png")
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width >= 800 and height >= 300


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib -> ImportError
    with pytest.raises(curves.PlotUnavailable, match=r"pip install matplotlib"):
        tune(LAYER, SHAPE, trials=1, work_dir=tmp_path / "db", plot=True)
    assert not (tmp_path / "db").exists()                           # refused before anything ran
    assert main(["tune", "--layer", LAYER, "--input-shape", "1,4,8,8", "--work-dir", str(tmp_path / "db"),
                 "--plot"]) == 2
    assert "error: --plot needs matplotlib" in capsys.readouterr().err


def test_report_summarises_the_database(tuned, capsys):
    db, result = tuned
    (row,) = report.report(db)                    # the target from the records (the folder is my-tuning)
    assert row.layer == "Conv2d(4, 6, 3, padding=1) on 1x4x8x8 float32" and row.rule == "cpu-direct"
    assert row.workload_hash == result.workload_hash and row.stale == 0
    assert row.trials == result.trials_total >= 1
    # the tune reports the hand schedule's fastest measurement, as the report and the lookup take it
    assert row.hand_ms == pytest.approx(result.hand_ms) and row.best_ms == pytest.approx(result.best_ms)
    assert row.within_10 is not None and 0 <= row.within_10 <= row.trials
    # Conv2d(4, 6, 3, padding=1) on 1x4x8x8: 2 x 6 x 8 x 8 outputs x 4 x 3 x 3 multiply-adds
    assert row.flops == 2 * 6 * 8 * 8 * 4 * 9 and row.best_gflops == pytest.approx(row.flops / row.best_ms / 1e6)
    assert main(["report", str(db)]) == 0
    out = capsys.readouterr().out
    assert "1 workload(s)" in out and "Conv2d(4, 6, 3, padding=1) on 1x4x8x8 float32" in out and "to 10%" in out
    assert f"{row.best_gflops:8.1f}" in out


def test_report_names_the_shipped_suite_and_leaves_stale_records_aside():
    db = records.SHIPPED / "llvm-znver4"
    rows = {r.layer: r for r in report.report(db)}
    assert len(rows) == 12
    depthwise = rows["Conv2d(144, 144, 3, stride=2, padding=1, groups=144) on 1x144x56x56 float32"]
    assert depthwise.rule == "cpu-depthwise" and depthwise.speedup == pytest.approx(0.074 / 0.066, rel=0.02)
    transposed = rows["ConvTranspose2d(256, 128, 4, stride=2, padding=1) on 1x256x16x16 float32"]
    assert transposed.hand_ms is None and transposed.stale > 0        # only older rule versions' hand records


@pytest.mark.parametrize("argv,message", [(["report", "no-such-folder"], "report no-such-folder: no such folder"),
                                          (["report", ".", "--target", "foo"], "unknown target 'foo'")],
                         ids=["missing", "bad-target"])
def test_report_refuses_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err

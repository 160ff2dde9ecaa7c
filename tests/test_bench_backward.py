"""``python -m compiler bench --backward``: the training step per layer, ours beside torch's."""
from compiler.__main__ import main


def test_bench_backward_prints_both_sides(capsys):
    main(["bench", "--backward", "--layer", "Conv2d(8, 12, 3, padding=1)", "--input-shape", "2,8,12,12"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("Conv2d(8, 12, 3, padding=1)"))
    torch_ms, ours_ms, speedup = row.split()[-3:]
    assert float(torch_ms) > 0 and float(ours_ms) > 0 and speedup.endswith("x")
    assert "forward + backward" in out and "geometric-mean speedup of the training step" in out

"""The benchmark runs end to end (its numbers are read by people, not asserted) and parses layers safely."""
import json
import re

import pytest
import torch

import compiler
from compiler import bench
from compiler.__main__ import main
from compiler.layers import parse_layer


def test_parse_layer_builds_both_namespaces():
    ours = parse_layer("Conv2d(4, 8, 3, stride=2, padding=1)")
    theirs = parse_layer("Conv2d(4, 8, 3, stride=2, padding=1)", torch.nn)
    assert isinstance(ours, compiler.Conv2d) and isinstance(theirs, torch.nn.Conv2d)
    assert repr(ours) == repr(theirs)
    assert isinstance(parse_layer("ConvTranspose2d(4, 8, (2, 3), output_padding=1, stride=2)"),
                      compiler.ConvTranspose2d)


@pytest.mark.parametrize("text", ["Linear(3, 4)", "Conv2d(4, 4, __import__('os'))", "print(1)"])
def test_parse_layer_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_layer(text)


def test_bench_cli_writes_csv_and_json(tmp_path, capsys):
    csv_path, json_path = tmp_path / "b.csv", tmp_path / "b.json"
    main(["bench", "--layer", "Conv2d(8, 12, 3, padding=1)", "--input-shape", "1,8,16,16",
          "--csv", str(csv_path), "--json", str(json_path)])
    out = capsys.readouterr().out
    assert "Conv2d(8, 12, 3, padding=1)" in out and "geometric-mean speedup" in out
    data = json.loads(json_path.read_text())
    row = data["rows"][0]
    assert row["ours_ms"] > 0 and row["torch_ms"] > 0 and row["schedule"] == "cpu-direct"
    assert row["fastest_speedup"] > 0 and data["geomean_speedup_fastest"] == pytest.approx(row["fastest_speedup"])
    assert "fastest round" in out
    assert csv_path.read_text().startswith("layer,")


def test_default_suite_layers_parse_and_match_their_inputs():
    for text, shape in bench.DEFAULT_SUITE:
        layer = parse_layer(text)
        layer._spec().output_shape(shape)


def test_bench_cli_takes_a_layers_file(tmp_path, capsys):
    layers = tmp_path / "layers.txt"
    layers.write_text("# two layers\nConv2d(4, 8, 3) ; 1,4,10,10\nConvTranspose2d(4, 4, 2, stride=2) ; 1,4,6,6\n")
    json_path = tmp_path / "b.json"
    main(["bench", "--layers-file", str(layers), "--no-tuned", "--json", str(json_path)])
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["layer"] for r in rows] == ["Conv2d(4, 8, 3)", "ConvTranspose2d(4, 4, 2, stride=2)"]
    assert "geometric-mean speedup" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bench_setting_dtype_batch_and_channels_last(tmp_path, capsys, dtype):
    json_path = tmp_path / "b.json"
    main(["bench", "--layer", "Conv2d(8, 16, 3, padding=1)", "--input-shape", "8,12,12", "--dtype", dtype,
          "--batch", "3", "--channels-last", "--json", str(json_path)])    # the tuned column too
    out = capsys.readouterr().out
    assert f"{dtype}, channels_last, batch 3" in out
    data = json.loads(json_path.read_text())
    assert data["setting"] == {"dtype": dtype, "batch": 3, "channels_last": True, "tf32": False}
    (row,) = data["rows"]
    assert (row["input_shape"], row["dtype"], row["memory_format"]) == ("3x8x12x12", dtype, "channels_last")
    assert row["gflops"] > 0 and row["torch_gflops"] > 0


def test_prepared_gpu_script_checks_its_commands_here(tmp_path):
    """examples/gpu_check.sh's ``dry`` mode: every bench and tune command of the GPU runs, --dry-run."""
    import os
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", "examples/gpu_check.sh", "dry"], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(tmp_path)), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    script = (root / "examples" / "gpu_check.sh").read_text()
    block = script[script.index("SETTINGS=("):]
    settings = re.findall(r'^  "([\w-]+):([^"]*)"$', block[:block.index("\n)\n")], re.M)
    assert len(settings) >= 6
    for _, flags in settings:                        # each setting, then the tuning command
        assert f"bench {flags.strip()}: arguments checked" in done.stdout
    assert done.stdout.count("arguments checked") == len(settings) + 1

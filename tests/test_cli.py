"""The command line answers bad input with one line ``error: ...`` and exit status 2, before anything
is compiled, tuned or timed; ``--debug`` / ``TVM_CONV_DEBUG=1`` show the traceback instead."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tvm

import compiler.bench
import compiler.build
import compiler.export
import compiler.tuning
from compiler.__main__ import main
from targets import local_arch

ROOT = Path(__file__).resolve().parents[1]
GOOD = "Conv2d(8, 8, 3, padding=1)"
LOCAL_GPU = local_arch()
NO_GPU = pytest.mark.skipif(LOCAL_GPU is not None, reason="this machine has a GPU")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def build(*extra, layer=GOOD, shape="1,8,14,14", out="out"):
    return ["build", "--layer", layer, "--input-shape", shape, "--out", out, *extra]


def tune(*extra, layer=GOOD, shape="1,8,14,14"):
    return ["tune", "--layer", layer, "--input-shape", shape, *extra]


def bench(*extra):
    return ["bench", *extra]


def case(argv, expected, *marks, id=None):
    return pytest.param(argv, expected, marks=marks, id=id)


CASES = [
    # --- the layer text (compiler.layers.parse_layer, then the constructor: torch's errors)
    case(build(layer="Conv2d(8, 8"), "--layer: layer text 'Conv2d(8, 8': invalid syntax: '(' was never "
         "closed (missing ')'?)", id="syntax-unclosed"),
    case(build(layer="Conv2d(8 8, 3)"), "invalid syntax at column 8: perhaps you forgot a comma?",
         id="syntax-comma"),
    case(build(layer="Conv2d(8, 8, 3))"), "invalid syntax at column 16: unmatched ')'", id="syntax-extra-paren"),
    case(build(layer="Conv2d(8, 8, 3, padding=1, padding=2)"), "keyword argument repeated: padding",
         id="syntax-repeated-keyword"),
    case(build(layer=" "), "layer text is empty", id="empty"),
    case(build(layer="Conv2d"), "expected a call such as 'Conv2d(64, 64, 3, padding=1)'", id="not-a-call"),
    case(build(layer="Linear(3, 4)"), "unknown layer class 'Linear': expected Conv2d or ConvTranspose2d",
         id="unknown-class"),
    case(build(layer="print(1)"), "unknown layer class 'print'", id="unknown-function"),
    case(build(layer="Conv2d(8, 8, __import__('os'))"), "argument 3 \"__import__('os')\" is not a literal",
         id="non-literal-call"),
    case(build(layer="Conv2d(8, 8, k)"), "argument 3 'k' is not a literal", id="non-literal-name"),
    case(build(layer="Conv2d(8, 8, 3, stride=s)"), "argument stride= 's' is not a literal",
         id="non-literal-keyword"),
    case(build(layer="Conv2d(*[8, 8, 3])"), "'*[8, 8, 3]' is not allowed", id="starred"),
    case(build(layer="Conv2d(8, 8, 3, paddin=1)"),
         "Conv2d() got an unexpected keyword argument 'paddin' (did you mean 'padding'?)", id="keyword-typo"),
    case(build(layer="ConvTranspose2d(8, 8, 3, colour=1)"),
         "ConvTranspose2d() got an unexpected keyword argument 'colour'", id="unexpected-keyword"),
    case(build(layer="Conv2d(8, 8)"), "Conv2d() missing a required argument: 'kernel_size'",
         id="missing-argument"),
    case(build(layer="Conv2d(8, 8, 3, 1, stride=2)"), "Conv2d() multiple values for argument 'stride'",
         id="argument-twice"),
    case(build(layer="Conv2d(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)"),
         "Conv2d() takes at most 11 positional arguments but 12 were given", id="too-many-arguments"),
    case(build(layer="Conv2d('8', 8, 3)"), "--layer: in_channels must be an int, but got '8'", id="type-channels"),
    case(build(layer="Conv2d(8, 8, 3.0)"), "kernel_size must be a tuple of ints, but got (3.0, 3.0)",
         id="type-kernel"),
    case(build(layer="Conv2d(8, 8, 3, padding='sme')"), "Invalid padding string 'sme'", id="padding-string"),
    case(build(layer="Conv2d(8, 8, 3, padding_mode='mirror')"), "padding_mode must be one of",
         id="padding-mode"),
    case(build(layer="Conv2d(8, 6, 3, groups=4)"), "out_channels must be divisible by groups", id="groups"),
    case(build(layer="ConvTranspose2d(8, 8, 3, padding_mode='reflect')"),
         'Only "zeros" padding mode is supported for ConvTranspose2d', id="transposed-padding-mode"),
    case(build(layer="Conv2d(8, 8, 3, dtype='float16')"), "dtype= is not taken in the layer text",
         id="dtype-in-layer"),
    # --- the input shape
    case(build(shape="0,8,14,14"), "--input-shape 0,8,14,14: N must be >= 1, got 0", id="batch-0"),
    case(build(shape="-1,8,14,14"), "--input-shape -1,8,14,14: N must be >= 1, got -1", id="batch-negative"),
    case(["build", "--layer", GOOD, "--input-shape=-1,8,14,14", "--out", "out"], "N must be >= 1, got -1",
         id="batch-negative-equals"),
    case(build(shape="1,0,14,14"), "C must be >= 1, got 0", id="channels-0"),
    case(build(shape="1,8,0,14"), "H must be >= 1, got 0", id="height-0"),
    case(build(shape="1,8,14,-3"), "W must be >= 1, got -3", id="width-negative"),
    case(build(shape="1,8,14,14,1"), "expected 4 values N,C,H,W or 3 values C,H,W, got 5", id="five-values"),
    case(build(shape="8,14"), "expected 4 values N,C,H,W or 3 values C,H,W, got 2", id="two-values"),
    case(build(shape="1,8,a,14"), "--input-shape '1,8,a,14': expected integers N,C,H,W", id="not-integers"),
    case(build(shape=""), "expected integers N,C,H,W", id="shape-empty"),
    # --- the layer against the shape (ConvSpec.output_shape: torch's RuntimeErrors)
    case(build(shape="1,4,14,14"), "--layer does not fit --input-shape 1,4,14,14: Given groups=1, weight of "
         "size [8, 8, 3, 3], expected input[1, 4, 14, 14] to have 8 channels, but got 4 channels instead",
         id="channel-mismatch"),
    case(build(shape="4,14,14"), "--input-shape 4,14,14 (one unbatched input, built as 1,4,14,14)",
         id="channel-mismatch-unbatched"),
    case(build(layer="Conv2d(8, 8, 5)", shape="1,8,3,3"), "Calculated padded input size per channel: "
         "(3 x 3). Kernel size: (5 x 5). Kernel size can't be greater than actual input size", id="kernel-too-large"),
    case(build(layer="Conv2d(8, 8, 3, dilation=4)", shape="1,8,8,8"), "Kernel size: (9 x 9)",
         id="dilated-kernel-too-large"),
    case(build(layer="Conv2d(8, 8, 3, stride=0)"), "non-positive stride is not supported", id="stride-0"),
    case(build(layer="Conv2d(8, 8, 3, padding=(1, 2, 3))"), "expected padding to be a single integer value or "
         "a list of 2 values", id="padding-three-values"),
    case(build(layer="Conv2d(8, 8, 3, padding=4, padding_mode='reflect')", shape="1,8,3,3"),
         "Padding size should be less than the corresponding input dimension", id="reflect-too-wide"),
    case(build(layer="ConvTranspose2d(8, 8, 3, output_padding=1)", shape="1,8,5,5"),
         "output padding must be smaller than either stride or dilation", id="output-padding-too-large"),
    case(build(layer="ConvTranspose2d(8, 8, 3, stride=2, output_padding=-1)", shape="1,8,5,5"),
         "negative output_padding is not supported", id="output-padding-negative"),
    case(build(layer="ConvTranspose2d(8, 8, 3, stride=2, output_padding=(1, 1, 1))", shape="1,8,5,5"),
         "expected output_padding to be a single integer value or a list of 2 values", id="output-padding-rank"),
    case(build(layer="ConvTranspose2d(8, 8, 3, padding=5)", shape="1,8,2,2"), "Output size is too small",
         id="transposed-output-empty"),
    # --- the target
    case(build("--target", "foo"), "--target: unknown target 'foo': use 'llvm', 'cuda/sm_XX' (sm_70, sm_75, "
         "sm_80, sm_86, sm_89, sm_90), 'cuda', or a JSON-dict target", id="target-unknown"),
    case(build("--target", "cuda/sm_60"), "unknown CUDA target 'cuda/sm_60'; presets: cuda/sm_70",
         id="target-unknown-arch"),
    case(build("--target", "cuda"), "target 'cuda' needs a local NVIDIA GPU", NO_GPU, id="target-cuda-no-gpu"),
    case(build("--target", '{"kind": "llvm" "mcpu": "znver4"}'),
         "--target: malformed JSON target at line 1 column 17 (char 16): Expecting ',' delimiter",
         id="target-json-malformed"),
    case(build("--target", '{"kind": "llvm",'), "malformed JSON target at line 1 column 17", id="target-json-cut"),
    case(build("--target", '{"kind": "foo"}'), 'TVM refuses the JSON target: Target kind "foo" is not defined',
         id="target-json-unknown-kind"),
    case(build("--target", '{"kind": "llvm", "bogus": 1}'), "Unknown config option 'bogus'",
         id="target-json-unknown-option"),
    case(build("--target", '{"kind": "c"}'), "no hand-written schedules for target kind 'c'",
         id="target-json-unscheduled-kind"),
    case(build("--target", '{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}'),
         "building for riscv64-linux-gnu needs its cross toolchain",
         pytest.mark.skipif(bool(shutil.which("riscv64-linux-gnu-g++") or shutil.which("riscv64-linux-gnu-gcc")),
                            reason="a riscv64 toolchain is installed"), id="target-foreign-isa-no-toolchain"),
    # --- dtype, folders, argparse's own refusals
    case(build("--dtype", "int8"), "--dtype 'int8': expected one of float32, float64, float16, bfloat16",
         id="dtype"),
    case(build(out="a_file"), "--out a_file: exists and is not a folder", id="out-is-a-file"),
    case(build(out="a_file/sub"), "--out a_file/sub: a_file is not a folder", id="out-under-a-file"),
    case(build(out="/proc/tvm-conv-test/out"), "--out /proc/tvm-conv-test/out: cannot create files in /proc",
         pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc"), id="out-unwritable-proc"),
    case(build(out="read_only/out"), "--out read_only/out: folder read_only is not writable",
         pytest.mark.skipif(IS_ROOT, reason="root may write anywhere"), id="out-unwritable-folder"),
    case(build("--database", "no_such_db"), "--database no_such_db: no such folder", id="database-missing"),
    case(["build", "--layer", GOOD, "--input-shape", "1,8,14,14"], "the following arguments are required: --out",
         id="out-missing"),
    case(build("--bogus"), "unrecognized arguments: --bogus", id="unknown-option"),
    case(["biuld"], "invalid choice: 'biuld'", id="unknown-command"),
    case([], "the following arguments are required: command", id="no-command"),
    # --- tune
    case(tune("--trials", "-5"), "--trials must be >= 0, got -5", id="tune-trials-negative"),
    case(tune("--trials", "many"), "argument --trials: invalid int value: 'many'", id="tune-trials-not-int"),
    case(tune("--trials-per-iter", "0"), "--trials-per-iter must be >= 1, got 0", id="tune-trials-per-iter"),
    case(tune("--population", "0"), "--population must be >= 1, got 0", id="tune-population"),
    case(tune("--strategy", "annealing"), "argument --strategy: invalid choice: 'annealing'", id="tune-strategy"),
    case(tune("--cost-model", "gbm"), "argument --cost-model: invalid choice: 'gbm'", id="tune-cost-model"),
    case(tune("--seed", "-1"), "--seed must be in [0, 2**31), got -1", id="tune-seed"),
    case(tune("--space", "mine"), "argument --space: invalid choice: 'mine'", id="tune-space"),
    case(tune("--final-check", "-1"), "--final-check must be >= 0, got -1", id="tune-final-check"),
    case(tune("--dtype", "float8"), "--dtype 'float8': expected one of", id="tune-dtype"),
    case(tune("--target", "foo"), "unknown target 'foo'", id="tune-target"),
    case(tune(shape="0,8,14,14"), "N must be >= 1, got 0", id="tune-batch-0"),
    case(tune(layer="Conv2d(8, 8, 3, paddin=1)"), "unexpected keyword argument 'paddin'", id="tune-layer"),
    case(["tune"], "give --layer with --input-shape, --layers-file or --suite", id="tune-nothing"),
    case(["tune", "--layer", GOOD], "--layer needs --input-shape", id="tune-layer-without-shape"),
    case(["tune", "--suite", "--layers-file", "layers.txt"], "not --layers-file and --suite",
         id="tune-two-sources"),
    case(["tune", "--target", "cuda/sm_70", "--suite"], "measuring on cuda sm_70 needs a local GPU of that arch",
         pytest.mark.skipif(LOCAL_GPU == "sm_70", reason="an sm_70 GPU is here"), id="tune-cuda-without-gpu"),
    case(tune("--rpc-tracker", "host:9190"), "--rpc-tracker and --rpc-key go together", id="tune-rpc-no-key"),
    case(tune("--rpc-tracker", "host", "--rpc-key", "k"), "--rpc-tracker must be HOST:PORT",
         id="tune-rpc-no-port"),
    case(tune("--work-dir", "a_file"), "--work-dir a_file: exists and is not a folder", id="tune-work-dir"),
    # --- layers files (bench and tune read them alike)
    case(["tune", "--layers-file", "missing.txt"], "--layers-file missing.txt: no such file",
         id="layers-file-missing"),
    case(["tune", "--layers-file", "."], "--layers-file .: is a folder", id="layers-file-folder"),
    case(["tune", "--layers-file", "empty.txt"], "--layers-file empty.txt: no layers in it", id="layers-file-empty"),
    case(["tune", "--layers-file", "layers.txt"],
         "layers.txt:3: layer text 'Conv2d(4, 8, 3': invalid syntax: '(' was never closed", id="layers-file-syntax"),
    case(["bench", "--layers-file", "no_semicolon.txt"],
         "no_semicolon.txt:2: expected 'LAYER ; N,C,H,W', got 'Conv2d(4, 8, 3) 1,4,10,10'",
         id="layers-file-no-separator"),
    case(["bench", "--layers-file", "bad_shape.txt"], "bad_shape.txt:1: input shape 0,4,10,10: N must be >= 1",
         id="layers-file-shape"),
    case(["bench", "--layers-file", "mismatch.txt"], "mismatch.txt:2: layer does not fit input shape 1,3,10,10: "
         "Given groups=1, weight of size [8, 4, 3, 3]", id="layers-file-mismatch"),
    case(["bench", "--layers-file", "unknown_class.txt"], "unknown_class.txt:1: unknown layer class 'Linear'",
         id="layers-file-class"),
    # --- bench
    case(bench("--threads", "0"), "--threads must be >= 1, got 0", id="bench-threads-0"),
    case(bench("--threads", "-2"), "--threads must be >= 1, got -2", id="bench-threads-negative"),
    case(bench("--csv", "no_folder/b.csv"), "--csv no_folder/b.csv: folder no_folder does not exist",
         id="bench-csv-folder-missing"),
    case(bench("--json", "."), "--json .: is a folder", id="bench-json-is-a-folder"),
    case(bench("--device", "cuda"), "--device cuda: no CUDA GPU is usable here", NO_GPU, id="bench-cuda-no-gpu"),
    case(bench("--device", "tpu"), "argument --device: invalid choice: 'tpu'", id="bench-device"),
    case(bench("--dtype", "int8"), "argument --dtype: invalid choice: 'int8'", id="bench-dtype"),
    case(bench("--batch", "0"), "--batch must be >= 1, got 0", id="bench-batch-0"),
    case(bench("--tf32"), "--tf32 is about cuDNN's float32 convolutions: it needs --device cuda", id="bench-tf32-cpu"),
    case(bench("--models", "resnet50", "--channels-last"), "--models measures each network at its own input",
         id="bench-models-channels-last"),
    case(bench("--layer", GOOD), "--layer needs --input-shape", id="bench-layer-without-shape"),
    case(bench("--input-shape", "1,8,8,8"), "--input-shape needs --layer", id="bench-shape-without-layer"),
    case(bench("--layer", GOOD, "--input-shape", "1,8,8,8", "--layers-file", "layers.txt"),
         "not --layer/--input-shape and --layers-file", id="bench-two-sources"),
    case(bench("--layer", "Conv2d(8, 8", "--input-shape", "1,8,8,8"), "invalid syntax", id="bench-layer"),
    case(bench("--layer", GOOD, "--input-shape", "1,4,8,8"), "to have 8 channels, but got 4", id="bench-mismatch"),
    # --- whole networks (compiler.zoo)
    case(["build", "--model", "resnet5", "--out", "out"], "--model: unknown network 'resnet5': choose from "
         "resnet50, mobilenet_v3_large", id="build-unknown-model"),
    case(["build", "--out", "out"], "give --layer with --input-shape, or --model NAME", id="build-nothing"),
    case(["tune", "--model", "resnet50", "--layer", GOOD], "--model works on whole networks: not with --layer",
         id="tune-model-and-layer"),
    case(["tune", "--model", "resnet50", "--trials", "-1"], "--trials must be >= 0, got -1", id="tune-model-trials"),
    case(bench("--models", "vgg"), "--models: unknown network 'vgg'", id="bench-unknown-model"),
    case(bench("--models", "--layer", GOOD), "--models works on whole networks", id="bench-models-and-layer"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder of inputs to refer to by relative paths (so messages read ``layers.txt:3: ...``)."""
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "empty.txt").write_text("# nothing but comments\n\n")
    (tmp_path / "layers.txt").write_text("Conv2d(4, 8, 3) ; 1,4,10,10\n# a comment\nConv2d(4, 8, 3 ; 1,4,10,10\n")
    (tmp_path / "no_semicolon.txt").write_text("Conv2d(4, 8, 3) ; 1,4,10,10\nConv2d(4, 8, 3) 1,4,10,10\n")
    (tmp_path / "bad_shape.txt").write_text("Conv2d(4, 8, 3) ; 0,4,10,10\n")
    (tmp_path / "mismatch.txt").write_text("Conv2d(4, 8, 3) ; 1,4,10,10\nConv2d(4, 8, 3) ; 1,3,10,10  # RGB\n")
    (tmp_path / "unknown_class.txt").write_text("Linear(4, 8) ; 1,4,10,10\n")
    (tmp_path / "read_only").mkdir()
    (tmp_path / "read_only").chmod(0o555)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVM_CONV_DEBUG", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    yield tmp_path
    (tmp_path / "read_only").chmod(0o755)


@pytest.fixture
def nothing_runs(monkeypatch):
    """Every way into compiling, tuning or benchmarking raises (and is recorded)."""
    called = []

    def trap(name):
        def refuse(*args, **kwargs):
            called.append(name)
            raise AssertionError(f"{name} was called")
        return refuse

    for owner, name in ((tvm, "compile"), (compiler.build, "compile_kernel"), (compiler.build, "get_kernel"),
                        (compiler.export, "export_library"), (compiler.tuning, "tune_many"),
                        (compiler.tuning, "tune"), (compiler.bench, "run"), (compiler.bench, "bench_layer")):
        monkeypatch.setattr(owner, name, trap(f"{getattr(owner, '__name__', owner)}.{name}"))
    return called


@pytest.mark.parametrize("argv, expected", CASES)
def test_bad_input_is_one_line_and_exit_status_2(argv, expected, workdir, nothing_runs, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert expected in lines[0]
    assert captured.out == ""
    assert nothing_runs == []
    assert not (workdir / "out").exists()


def test_debug_shows_the_traceback(workdir, nothing_runs, capsys):
    argv = build(layer="Conv2d(8, 8")
    for debug_argv in (argv + ["--debug"], ["--debug"] + argv):
        assert main(debug_argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last)") and "SyntaxError" in err
        assert "ValueError: layer text 'Conv2d(8, 8': invalid syntax" in err
    assert not (workdir / "out").exists()


def test_debug_from_the_environment(workdir, nothing_runs, capsys, monkeypatch):
    monkeypatch.setenv("TVM_CONV_DEBUG", "1")
    assert main(build(shape="1,4,14,14")) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: Given groups=1" in err
    monkeypatch.setenv("TVM_CONV_DEBUG", "0")
    assert main(build(shape="1,4,14,14")) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_an_unexpected_failure_after_checking_is_status_1_with_a_hint(workdir, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("the linker exploded")
    monkeypatch.setattr(compiler.export, "export_library", fail)
    assert main(build()) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: RuntimeError: the linker exploded" and "--debug" in lines[1]
    assert main(build("--debug")) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_python_dash_m_answers_a_syntax_error_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TVM_CONV_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "compiler", "build", "--layer", "Conv2d(8, 8",
                             "--input-shape", "1,8,14,14", "--out", str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: --layer: layer text 'Conv2d(8, 8': invalid syntax: '(' was never closed (missing ')'?)"]
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_build_writes_the_library_and_manifest(tmp_path, capsys):
    out = tmp_path / "nested" / "out"
    assert main(["build", "--layer", GOOD, "--input-shape", "1,8,14,14", "--target", "llvm",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(capsys.readouterr().out)
    assert (out / manifest["library"]).is_file()
    assert manifest["args"][0]["shape"] == [1, 8, 14, 14] and manifest["args"][-1]["shape"] == [1, 8, 14, 14]
    assert manifest["layer"]["class"] == "Conv2d" and manifest["layer"]["args"]["padding"] == [1, 1]


@pytest.mark.parametrize("argv", [build(), tune("--trials", "1000"), bench("--layers-file", str(ROOT / "examples" / "layers.txt"))],
                         ids=["build", "tune", "bench"])
def test_dry_run_checks_and_runs_nothing(argv, workdir, nothing_runs, capsys):
    assert main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{argv[0]}: ") and "arguments checked, nothing run" in out
    assert nothing_runs == [] and not (workdir / "out").exists()


def test_dry_run_still_refuses_bad_input(workdir, nothing_runs, capsys):
    assert main(build(layer="Linear(3, 4)") + ["--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: --layer: unknown layer class 'Linear'")

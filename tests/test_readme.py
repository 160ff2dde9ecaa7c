"""Every code block of the README runs as written.

Blocks are fenced; the info string's first word is the language and the rest are tags:
* ``python``: run as a script in a fresh process.
* ``sh``: each line a command, run with bash in a scratch folder that holds the project's
  ``examples/`` (so relative paths resolve and outputs land outside the checkout).
* ``setup``: the two commands; CI runs the test command itself (``.ci/run`` must be exactly it),
  and the main job's command is run here after its set-up part (this environment is that set-up).
* ``long``: hours of tuning or a whole suite: the CLI checks the arguments with ``--dry-run``.
* ``gpu`` / ``nvcc``: skip cleanly without a CUDA GPU / without nvcc.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\S+)([^\n]*)\n(.*?)^```$", re.M | re.S)


def blocks():
    """(language, tags, code, line number) of each fenced block."""
    text = (ROOT / "README.md").read_text()
    return [(m.group(1), set(m.group(2).split()), m.group(3), text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


def commands(code: str):
    """The shell commands of a block, trailing comments kept (bash ignores them)."""
    return [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def _skip_unless_available(tags) -> None:
    if "gpu" in tags and not _has_gpu():
        pytest.skip("needs an NVIDIA GPU")
    if "nvcc" in tags and shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")


def _run(argv, cwd, timeout):
    env = dict(os.environ, TVM_CONV_PROGRESS="0")
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _scratch(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


CASES = [(lang, tags, code, line) for lang, tags, code, line in blocks() if "setup" not in tags]


def test_the_readme_has_its_blocks():
    langs = [lang for lang, *_ in blocks()]
    assert langs.count("python") >= 1 and langs.count("sh") >= 5
    assert all(lang in ("python", "sh") for lang in langs), langs


@pytest.mark.parametrize("lang,tags,code,line", [c for c in CASES if c[0] == "python"],
                         ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_block_runs(lang, tags, code, line, tmp_path):
    _skip_unless_available(tags)
    _run([sys.executable, "-c", code], _scratch(tmp_path), timeout=600)


SH_COMMANDS = [(tags, command, line) for lang, tags, code, line in CASES if lang == "sh"
               for command in commands(code)]


@pytest.mark.parametrize("tags,command,line", SH_COMMANDS,
                         ids=[f"line{line}:{command.split('#')[0].strip()[:60]}" for _, command, line in SH_COMMANDS])
def test_shell_command_runs(tags, command, line, tmp_path):
    _skip_unless_available(tags)
    if "long" in tags:
        assert command.startswith("python -m compiler "), "only CLI commands can be marked long"
        command = command.split("#")[0].rstrip() + " --dry-run"
    _run(["bash", "-c", command.replace("python ", f"{sys.executable} ", 1)], _scratch(tmp_path), timeout=900)


def _setup_commands():
    return [commands(code)[0] for lang, tags, code, line in blocks() if "setup" in tags]


def test_ci_runs_exactly_the_readme_test_command():
    main_job, test_command = _setup_commands()
    assert test_command.endswith("python -m pytest -n 2 -q")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [test_command]
    assert "python3 -m venv .venv && . .venv/bin/activate" in test_command     # a fresh environment


def test_the_main_job_runs(tmp_path):
    main_job, test_command = _setup_commands()
    setup, _, job = main_job.rpartition(" && ")
    assert setup == test_command.rpartition(" && ")[0], "both commands set up the same way"
    assert job == "python examples/quickstart.py"
    _run([sys.executable, str(ROOT / "examples" / "quickstart.py")], tmp_path, timeout=900)

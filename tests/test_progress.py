"""Long work says what it is doing: silent when quick, a live line on a terminal, plain lines elsewhere."""
import io
import time

import pytest

from compiler import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_quick_steps_say_nothing():
    out = io.StringIO()
    with progress.step("compiling", out, delay=0.5):
        pass
    assert out.getvalue() == ""


def test_a_slow_step_announces_itself_and_its_time_in_plain_lines():
    out = io.StringIO()
    with progress.step("compiling X", out, delay=0.05):
        time.sleep(0.3)
    first, last = out.getvalue().splitlines()
    assert first == "[compiler] compiling X ..."
    assert last.startswith("[compiler] compiling X: done in 0.") and last.endswith(" s")
    assert "\r" not in out.getvalue()


def test_on_a_terminal_the_line_is_live(monkeypatch):
    monkeypatch.setattr(progress, "REFRESH_S", 0.05)
    out = Terminal()
    with progress.step("measuring", out, delay=0.01):
        time.sleep(0.3)
    text = out.getvalue()
    assert text.count("\r[compiler] measuring ... ") >= 3          # redrawn in place
    assert text.endswith("s\n") and "\r[compiler] measuring: done in " in text
    assert text.count("\n") == 1


def test_a_failing_step_says_so_and_the_error_propagates():
    out = io.StringIO()
    with pytest.raises(KeyError):
        with progress.step("building", out, delay=0.01):
            time.sleep(0.1)
            raise KeyError("x")
    assert "building: failed after" in out.getvalue()


@pytest.mark.parametrize("setting,expected", [("0", ""), ("1", "[compiler] now ...\n")])
def test_the_environment_switches_it(monkeypatch, setting, expected):
    monkeypatch.setenv("TVM_CONV_PROGRESS", setting)
    out = io.StringIO()
    with progress.step("now", out):
        time.sleep(0.05)
    assert out.getvalue().splitlines(keepends=True)[:1] == ([expected] if expected else [])


def test_a_slow_first_call_compile_reports_on_stderr(monkeypatch, capfd):
    """The module's first call goes through build.get_kernel, which wraps the compile in a step."""
    import torch

    import compiler
    from compiler import build
    monkeypatch.setenv("TVM_CONV_PROGRESS", "1")
    build.clear_cache()
    compiler.Conv2d(3, 5, 3)(torch.randn(1, 3, 9, 9))
    err = capfd.readouterr().err
    assert "[compiler] compiling Conv2d(3, 5, kernel_size=[3, 3]" in err and "on 1x3x9x9 float32 for llvm-" in err
    assert ": done in " in err

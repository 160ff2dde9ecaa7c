"""Say what long work is doing: compiles, AOT builds, the tuner's measurements.

A step that finishes within ``DELAY_S`` prints nothing (most kernels compile in 0.1-1 s, and a model's
first call compiles dozens of them).  One that runs longer announces itself once it has taken that
long, and says how long it took when it ends: on a terminal as one live line (the elapsed time counts
up in place), elsewhere (logs, CI, pipes) as two plain lines.  ``TVM_CONV_PROGRESS=0`` silences it;
``TVM_CONV_PROGRESS=1`` announces every step at once.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator, Optional, TextIO

#: Seconds a step may take before it says anything (the issue's "over ~2 s": below that a user does
#: not wonder whether the process hangs).
DELAY_S = 2.0
#: How often a live line's elapsed time is redrawn on a terminal.
REFRESH_S = 0.5
PREFIX = "[compiler]"


def _delay() -> Optional[float]:
    """Seconds before announcing, or None when progress is switched off."""
    setting = os.environ.get("TVM_CONV_PROGRESS", "")
    if setting == "0":
        return None
    return 0.0 if setting == "1" else DELAY_S


def _is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def step(what: str, stream: Optional[TextIO] = None, delay: Optional[float] = None) -> Iterator[None]:
    """Run the body; if it takes longer than ``delay`` (default ``DELAY_S``), tell ``stream``
    (default stderr) what it is doing and, at the end, how long it took."""
    stream = stream or sys.stderr
    delay = _delay() if delay is None else delay
    if delay is None:
        yield
        return
    live = _is_terminal(stream)
    start = time.perf_counter()
    done = threading.Event()
    announced = threading.Event()
    lock = threading.Lock()

    def write(text: str) -> None:
        with lock:
            stream.write(text)
            stream.flush()

    def watch() -> None:
        if done.wait(delay):
            return
        announced.set()
        if not live:
            write(f"{PREFIX} {what} ...\n")
            return
        while not done.is_set():
            write(f"\r{PREFIX} {what} ... {time.perf_counter() - start:.0f} s")
            done.wait(REFRESH_S)

    watcher = threading.Thread(target=watch, name="compiler-progress", daemon=True)
    watcher.start()
    outcome = "failed after"
    try:
        yield
        outcome = "done in"
    finally:
        done.set()
        watcher.join()
        if announced.is_set():
            elapsed = time.perf_counter() - start
            head = "\r" if live else ""          # a live line is finished in place
            write(f"{head}{PREFIX} {what}: {outcome} {elapsed:.1f} s\n")

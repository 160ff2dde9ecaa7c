"""Our CPU kernels' parallel loops on torch's OpenMP threads: one thread pool per process.

Why: TVM's runtime has its own pool, whose workers spin (``sched_yield``) after every job, and
torch's OpenMP workers spin after every parallel region.  When our layers and torch's ops alternate
on the same cores, as inside a network, each side's spinning workers take the cores the other side
needs.  On this 2-core machine whole networks ran 2-15x slower than torch alone, and
``OMP_WAIT_POLICY=passive`` fixes that only by slowing torch down.  With both on one pool a worker
that spins after our kernel is exactly the worker torch's next op wants (see
``examples/threads_interplay.py`` for the numbers).

How: a TVM host library calls parallel loops through the pointer ``__TVMBackendParallelLaunch``
(and ``__TVMBackendParallelBarrier``), which TVM's loader sets to its own pool's entry points when
it opens the library.  ``attach`` rewrites them, in the already opened library, to the two functions
of ``omp_launch.c``: a ``GOMP_parallel`` with torch's thread count whose threads run the loop's
tasks.  Those call the OpenMP runtime through the addresses the dynamic linker resolved for
``libtorch_cpu`` itself, so they reach torch's runtime instance (and its thread team), never a second
copy (xgboost, which TVM's tuning imports, ships another libgomp).

The launcher is compiled once per machine (keyed by its source) into the kernel cache folder with
TVM's own compiler driver, which exporting kernels needs anyway.  When anything is missing (no C++
compiler, torch built without OpenMP, a symbol not found) kernels keep TVM's pool, after a warning;
``TVM_CONV_THREADS=tvm`` asks for TVM's pool (read whenever a kernel is loaded; ``attach`` also
switches a loaded one).

Caveats: the thread count is torch's (``torch.set_num_threads``, or torch's default in a new
thread), read at every launch; a kernel called inside an OpenMP parallel region runs on one thread,
as torch's ops do there.  A forked child must call ``torch.set_num_threads(1)`` before running
kernels, as torch's DataLoader workers do: the parent's OpenMP team is not copied, and a launch on
more threads hangs there, for torch's ops and ours alike (measured; TVM's pool hung too).
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path
from typing import Optional

from . import omp_hooks
from .library_cache import cache_dir, publish

SOURCE = Path(__file__).with_name("omp_launch.c")
LAUNCH_SYMBOL, BARRIER_SYMBOL = omp_hooks.LAUNCH_SYMBOL, omp_hooks.BARRIER_SYMBOL
Launcher = omp_hooks.Launcher
mode, hook, tvm_pool = omp_hooks.mode, omp_hooks.hook, omp_hooks.tvm_pool

_STATE: dict = {}
_LOCK = threading.Lock()


def launcher_library() -> Path:
    """The compiled ``omp_launch.c`` in the kernel cache (compiled on first use, keyed by its source)."""
    source = SOURCE.read_bytes()
    path = cache_dir() / f"omp_launch-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not path.exists():
        from tvm.support import cc
        publish(path, lambda out: cc.create_shared(out, [str(SOURCE)], options=["-O2"]))
    return path


def launcher() -> Optional[Launcher]:
    """The OpenMP launcher, built and initialised on first use; None (after one warning) when it
    cannot be."""
    with _LOCK:
        if "launcher" not in _STATE:
            try:
                _STATE["launcher"] = omp_hooks.init_launcher(launcher_library())
            except Exception as err:  # noqa: BLE001 - any failure means: keep TVM's pool
                _STATE["launcher"] = None
                warnings.warn(f"our CPU kernels use TVM's thread pool, not torch's OpenMP threads "
                              f"({type(err).__name__}: {err}); alternating them with torch ops may be "
                              f"slow", RuntimeWarning, stacklevel=3)
        return _STATE["launcher"]


def attach(library_path, pool: Optional[str] = None) -> bool:
    """Point the parallel-launch hooks of the kernel library at ``library_path``, already loaded by
    ``tvm.runtime.load_module``, at the OpenMP launcher (``pool`` "openmp") or at TVM's own pool
    ("tvm"); None: ``mode()``.  True when they now use torch's OpenMP threads, False when they use
    TVM's pool (asked for, or no launcher).

    The library is reached through the same ``dlopen`` handle as TVM's loader got, so every module
    loaded from that path shares the hooks: the last ``attach`` (or load) decides for all of them."""
    pool = pool or mode()
    launch = launcher() if pool == "openmp" else None
    omp_hooks.set_hooks(library_path, *((launch.launch, launch.barrier) if launch is not None else tvm_pool()))
    return launch is not None

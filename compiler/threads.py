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

import ctypes
import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

from .library_cache import cache_dir, publish

SOURCE = Path(__file__).with_name("omp_launch.c")
LAUNCH_SYMBOL = "__TVMBackendParallelLaunch"
BARRIER_SYMBOL = "__TVMBackendParallelBarrier"


class Launcher(NamedTuple):
    library: ctypes.CDLL     # the compiled omp_launch.c
    launch: int              # address of tvmconv_omp_parallel_launch
    barrier: int             # address of tvmconv_omp_parallel_barrier

    def launches(self) -> int:
        """Parallel launches made through it so far (all kernels, all threads)."""
        return ctypes.c_long.in_dll(self.library, "tvmconv_omp_launches").value

    def last_team(self) -> int:
        """Threads the most recent launch ran on."""
        return ctypes.c_int.in_dll(self.library, "tvmconv_omp_last_team").value


_STATE: dict = {}
_LOCK = threading.Lock()


def mode() -> str:
    """``"tvm"`` when ``TVM_CONV_THREADS=tvm`` asks for TVM's own pool, else ``"openmp"``."""
    value = os.environ.get("TVM_CONV_THREADS", "openmp").strip().lower()
    if value not in ("openmp", "tvm"):
        raise ValueError(f"TVM_CONV_THREADS must be 'openmp' or 'tvm', got {value!r}")
    return value


def _torch_openmp() -> ctypes.CDLL:
    """libtorch_cpu as already loaded: symbols looked up through it resolve the way torch's do."""
    torch = sys.modules.get("torch")
    if torch is None:
        raise RuntimeError("torch is not imported")
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        raise RuntimeError("torch's parallel backend is not OpenMP")
    libdir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        if (libdir / name).exists():
            return ctypes.CDLL(str(libdir / name), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    raise RuntimeError(f"no libtorch_cpu in {libdir}")


def _address(lib: ctypes.CDLL, name: str) -> int:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def _build() -> Launcher:
    source = SOURCE.read_bytes()
    path = cache_dir() / f"omp_launch-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not path.exists():
        from tvm.support import cc
        publish(path, lambda out: cc.create_shared(out, [str(SOURCE)], options=["-O2"]))
    torch_cpu = _torch_openmp()
    library = ctypes.CDLL(str(path))
    try:
        torch_threads = _address(torch_cpu, "_ZN2at15get_num_threadsEv")   # at::get_num_threads()
    except AttributeError:
        torch_threads = None
    rc = library.tvmconv_omp_init(*(ctypes.c_void_p(_address(torch_cpu, name)) for name in (
        "GOMP_parallel", "GOMP_barrier", "omp_get_thread_num", "omp_get_num_threads")),
        ctypes.c_void_p(torch_threads))
    if rc != 0:
        raise RuntimeError("tvmconv_omp_init failed")
    return Launcher(library, _address(library, "tvmconv_omp_parallel_launch"),
                    _address(library, "tvmconv_omp_parallel_barrier"))


def launcher() -> Optional[Launcher]:
    """The OpenMP launcher, built and initialised on first use; None (after one warning) when it
    cannot be."""
    with _LOCK:
        if "launcher" not in _STATE:
            try:
                _STATE["launcher"] = _build()
            except Exception as err:  # noqa: BLE001 - any failure means: keep TVM's pool
                _STATE["launcher"] = None
                warnings.warn(f"our CPU kernels use TVM's thread pool, not torch's OpenMP threads "
                              f"({type(err).__name__}: {err}); alternating them with torch ops may be "
                              f"slow", RuntimeWarning, stacklevel=3)
        return _STATE["launcher"]


def tvm_pool() -> Tuple[int, int]:
    """The addresses of TVM's own ``TVMBackendParallelLaunch`` / ``Barrier`` (what TVM's loader
    writes into the hooks)."""
    lib = ctypes.CDLL(None)            # TVM loads its runtime with RTLD_GLOBAL
    return _address(lib, "TVMBackendParallelLaunch"), _address(lib, "TVMBackendParallelBarrier")


def attach(library_path, pool: Optional[str] = None) -> bool:
    """Point the parallel-launch hooks of the kernel library at ``library_path``, already loaded by
    ``tvm.runtime.load_module``, at the OpenMP launcher (``pool`` "openmp") or at TVM's own pool
    ("tvm"); None: ``mode()``.  True when they now use torch's OpenMP threads, False when they use
    TVM's pool (asked for, or no launcher).

    The library is reached through the same ``dlopen`` handle as TVM's loader got, so every module
    loaded from that path shares the hooks: the last ``attach`` (or load) decides for all of them."""
    pool = pool or mode()
    launch = launcher() if pool == "openmp" else None
    addresses = (launch.launch, launch.barrier) if launch is not None else tvm_pool()
    lib = ctypes.CDLL(str(library_path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    try:
        for symbol, address in zip((LAUNCH_SYMBOL, BARRIER_SYMBOL), addresses):
            try:
                ctypes.c_void_p.in_dll(lib, symbol).value = address
            except ValueError:       # the library makes no such call (no parallel loop, no barrier)
                pass
    finally:
        _dlclose(lib)
    return launch is not None


def hook(library_path, symbol: str = LAUNCH_SYMBOL) -> Optional[int]:
    """The address a loaded kernel library's hook holds now (None: the library has no such hook)."""
    lib = ctypes.CDLL(str(library_path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    try:
        return ctypes.c_void_p.in_dll(lib, symbol).value
    except ValueError:
        return None
    finally:
        _dlclose(lib)


def _dlclose(lib: ctypes.CDLL) -> None:
    """Drop the reference our ``CDLL`` added (TVM's module keeps its own)."""
    import _ctypes
    _ctypes.dlclose(lib._handle)

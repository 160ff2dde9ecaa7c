"""Point a loaded TVM kernel library's parallel loops at torch's OpenMP threads (ctypes only).

The mechanism is ``compiler/threads.py``'s (read it for why): ``omp_launch.c``, compiled, is
initialised with the OpenMP entry points the dynamic linker resolved for ``libtorch_cpu``, and a
kernel library's two hooks (``__TVMBackendParallelLaunch``/``Barrier``) are rewritten to its
functions.  This file imports nothing of the compiler (torch only, when asked), because an exported
model's loader copies it beside itself as ``tvmconv_omp.py`` and runs with TVM's runtime alone.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import NamedTuple, Optional

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


def torch_openmp() -> ctypes.CDLL:
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


def address(lib: ctypes.CDLL, name: str) -> int:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def init_launcher(path) -> Launcher:
    """Load the compiled ``omp_launch.c`` at ``path`` and hand it torch's OpenMP entry points."""
    torch_cpu = torch_openmp()
    library = ctypes.CDLL(str(path))
    try:
        torch_threads = address(torch_cpu, "_ZN2at15get_num_threadsEv")   # at::get_num_threads()
    except AttributeError:
        torch_threads = None
    rc = library.tvmconv_omp_init(*(ctypes.c_void_p(address(torch_cpu, name)) for name in (
        "GOMP_parallel", "GOMP_barrier", "omp_get_thread_num", "omp_get_num_threads")),
        ctypes.c_void_p(torch_threads))
    if rc != 0:
        raise RuntimeError("tvmconv_omp_init failed")
    return Launcher(library, address(library, "tvmconv_omp_parallel_launch"),
                    address(library, "tvmconv_omp_parallel_barrier"))


def set_hooks(library_path, launch: int, barrier: int) -> None:
    """Write ``launch``/``barrier`` into the hooks of the kernel library at ``library_path``, already
    loaded (``tvm.runtime.load_module``): reached through the same ``dlopen`` handle as TVM's loader
    got, so every module loaded from that path shares them."""
    lib = ctypes.CDLL(str(library_path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    try:
        for symbol, value in zip((LAUNCH_SYMBOL, BARRIER_SYMBOL), (launch, barrier)):
            try:
                ctypes.c_void_p.in_dll(lib, symbol).value = value
            except ValueError:       # the library makes no such call (no parallel loop, no barrier)
                pass
    finally:
        dlclose(lib)


def hook(library_path, symbol: str = LAUNCH_SYMBOL) -> Optional[int]:
    """The address a loaded kernel library's hook holds now (None: the library has no such hook)."""
    lib = ctypes.CDLL(str(library_path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    try:
        return ctypes.c_void_p.in_dll(lib, symbol).value
    except ValueError:
        return None
    finally:
        dlclose(lib)


def tvm_pool() -> tuple:
    """The addresses of TVM's own ``TVMBackendParallelLaunch`` / ``Barrier`` (what TVM's loader
    writes into the hooks)."""
    lib = ctypes.CDLL(None)            # TVM loads its runtime with RTLD_GLOBAL
    return address(lib, "TVMBackendParallelLaunch"), address(lib, "TVMBackendParallelBarrier")


def dlclose(lib: ctypes.CDLL) -> None:
    """Drop the reference our ``CDLL`` added (TVM's module keeps its own)."""
    import _ctypes
    _ctypes.dlclose(lib._handle)


def mode() -> str:
    """``"tvm"`` when ``TVM_CONV_THREADS=tvm`` asks for TVM's own pool, else ``"openmp"``."""
    value = os.environ.get("TVM_CONV_THREADS", "openmp").strip().lower()
    if value not in ("openmp", "tvm"):
        raise ValueError(f"TVM_CONV_THREADS must be 'openmp' or 'tvm', got {value!r}")
    return value

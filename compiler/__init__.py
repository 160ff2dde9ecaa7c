"""A code-generating compiler for convolution layers, built on Apache TVM.

``compiler.Conv2d`` / ``compiler.ConvTranspose2d`` take ``torch.nn``'s arguments and run kernels
generated, scheduled and compiled here.
"""
import os as _os

# Our CPU kernels run their parallel loops on torch's OpenMP threads (compiler/threads.py), so the
# two settings below only matter where TVM's own pool still runs: TVM_CONV_THREADS=tvm, the fallback
# when the OpenMP launcher cannot be built, and kernels MetaSchedule measures while tuning.
#
# TVM's CPU thread pool defaults to half the logical CPUs on x86 (it assumes hyper-threading) and
# reads TVM_NUM_THREADS once, when the pool starts: set it before TVM is first used.
if "TVM_NUM_THREADS" not in _os.environ:
    try:
        _os.environ["TVM_NUM_THREADS"] = str(len(_os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        _os.environ["TVM_NUM_THREADS"] = str(_os.cpu_count() or 1)

# After each parallel job TVM's pool workers spin on sched_yield 300000 times (~0.2 s here) before
# sleeping; a torch op run in that window shares the cores with them and was measured 2-25x slower
# (Conv2d(64, 64, 3) on 2 cores: 1.2 ms alone, up to 29 ms right after one of our calls).  2000
# yields (about a millisecond) still keeps the pool awake across the kernel's own parallel loops and
# back-to-back calls: our kernels measured the same as with the default, and 0 cost up to 40% on the
# short depthwise layers (every launch then waits for a woken thread).  Read once, when the pool starts.
_os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")

from . import metaschedule_startup as _startup  # noqa: E402
from .modules import Conv2d, ConvTranspose2d  # noqa: E402
from .spec import ConvSpec  # noqa: E402

# MetaSchedule's TuneContext (the tuner; the CUDA rules' GPU verifier on first use) imports every
# target's tensor intrinsics: 58 s here, 7.8 s with this (see metaschedule_startup).
_startup.cache_frozen_frames()

# The CUDA JIT on a GPU host: nvcc (the toolchain this project requires) rather than NVRTC, which
# would need the cuda-bindings package (TVM 0.27's default).
_os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


#: Functions imported on first use (MetaSchedule, fx and the exporters are slow to import):
#: public name -> the module of this package that defines it.
_LAZY = {"tune": "tuning", "export_library": "export", "convert": "conversion", "tune_model": "model_tuning",
         "export_model": "model_export", "load_model": "model_export"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Conv2d", "ConvTranspose2d", "ConvSpec", "tune", "export_library", "convert", "tune_model",
           "export_model", "load_model"]
__version__ = "0.1.0"

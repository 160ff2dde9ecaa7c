"""What keeps MetaSchedule's start-up cheap: its builder, and the tensor intrinsics it registers.

``tvm.s_tir.tensor_intrin`` parses every target's intrinsics with TVMScript, whose decorator calls
``inspect.stack()``; for each frame of the import machinery (``<frozen importlib._bootstrap>``, a
file that does not exist) ``inspect.getmodule`` copies and scans all of ``sys.modules``.  Measured
on this 2-core machine: the import took 58 s (49 s of it ``cuda.py``), 7.8 s once those frames are
in ``inspect``'s file-to-module cache.  MetaSchedule pays it once per ``TuneContext`` process and,
through its default build function, once per builder worker, and its ``LocalBuilder`` starts new
workers for every batch: a tiny tuning run spent 75 s building one schedule, and builds under CI's
load passed the builder's 120 s timeout.
"""
import inspect

from tvm.target import Target

#: The import machinery's frozen modules, whose frames sit on the stack of every import.
_FROZEN = ("importlib._bootstrap", "importlib._bootstrap_external")


def cache_frozen_frames() -> None:
    """Map the frozen import frames' file names to their modules in ``inspect``'s own cache (the
    lookup ``getmodule`` would otherwise redo with a scan of ``sys.modules`` for every frame)."""
    for name in _FROZEN:
        inspect.modulesbyfile.setdefault(f"<frozen {name}>", name)


def build(mod, target: Target, params):
    """MetaSchedule's default build function without its import of every target's tensor intrinsics:
    a builder receives schedules already tensorized, whose intrinsic bodies are in the module."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if params:
        raise ValueError("the builder takes no parameters (MetaSchedule's default build neither)")
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)

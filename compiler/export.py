"""Ahead-of-time builds: one layer for one input shape and target, as a shared library plus
``manifest.json``, loadable with only the TVM runtime.

The library's function takes ``(input, weight, [bias,] output)`` in torch's layouts, so one build
serves any trained weights.  CUDA builds carry nvcc-compiled device code for the requested
architecture (see :mod:`compiler.cuda_binary`), made on machines without a GPU.  Builds for a
foreign CPU ISA link with that ISA's cross toolchain (``<triple>-g++`` on PATH, or ``$CXX``).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

import tvm

from targets import TargetLike, resolve, target_key
from targets.cuda import compile_context

from . import build, cuda_binary, progress
from .layers import request_of

LIBRARY = "conv.so"
MANIFEST = "manifest.json"


def versions() -> dict:
    import tvm_ffi

    from . import __version__
    versions = {"compiler": __version__, "apache-tvm": tvm.__version__, "apache-tvm-ffi": tvm_ffi.__version__}
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def _cross_compiler(target):
    """``fcompile`` for a CPU target of another ISA, or None for the host's."""
    triple = str(target.attrs.get("mtriple", ""))
    if not triple or triple.split("-")[0] in (platform.machine(), ""):
        return None
    from tvm.support import cc
    candidates = ([os.environ["CXX"]] if os.environ.get("CXX") else []) + [f"{triple}-g++", f"{triple}-gcc"]
    for compiler in candidates:
        if shutil.which(compiler):
            return cc.cross_compiler(compiler)
    raise RuntimeError(f"building for {triple} needs its cross toolchain: none of {candidates} is on "
                       "PATH (install e.g. g++-aarch64-linux-gnu, or set CXX to the cross compiler)")


def choose_schedule(request, target, database) -> build.Scheduled:
    """The database's record for ``request`` (``database``: a folder, None for the target's default,
    False for none), else the hand-written rule; always torch-layout weights (a library serves any
    trained weights as they are)."""
    chosen = None
    if database is not False:
        chosen = build.tuned_schedule(request, target, build.records.database_dir(target, database))
    return chosen if chosen is not None else build.schedule(request, target)


def write_library(functions: Dict[str, object], target, path: Path) -> Optional[dict]:
    """Compile the PrimFuncs ``functions`` (entry name -> PrimFunc) into one shared library at
    ``path``; returns the manifest's ``device_code`` entry (None for CPU targets)."""
    mod = tvm.IRModule({name: func.with_attr("global_symbol", name) for name, func in functions.items()})
    with compile_context(target):                       # CUDA: pipelined copies become cp.async
        executable = tvm.compile(mod, target=target)
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(target.kind.name) != "cuda":
        fcompile = _cross_compiler(target)
        executable.export_library(str(path), **({"fcompile": fcompile} if fcompile else {}))
        return None
    source = cuda_binary.device_source(executable)
    fatbin = cuda_binary.compile_device_code(source, target, "fatbin")
    executable.export_library(str(path), fpack_imports=cuda_binary.fpack_imports_with(fatbin, source))
    return {"format": "fatbin", "arch": str(target.attrs["arch"]), "bytes": len(fatbin)}


def kernel_args(request) -> List[dict]:
    """The library function's arguments, ``{name, shape, dtype}`` in order."""
    spec, dtype = request.spec, request.dtype
    args = [{"name": "input", "shape": list(request.input_shape), "dtype": dtype},
            {"name": "weight", "shape": list(spec.weight_shape), "dtype": dtype}]
    if spec.bias:
        args.append({"name": "bias", "shape": [spec.out_channels], "dtype": dtype})
    if request.epilogue.residual:
        args.append({"name": "residual", "shape": list(request.output_shape), "dtype": dtype})
    args.append({"name": "output", "shape": list(request.output_shape), "dtype": dtype})
    return args


def describe_schedule(chosen: build.Scheduled, request) -> dict:
    return {"kind": "tuning-record" if chosen.rule.startswith("tuned:") else "hand-written", "name": chosen.rule,
            "workload_hash": build.workload_hash(build.workload_module(request))}


def target_json(target):
    return json.loads(str(target)) if str(target).startswith("{") else str(target)


def export_library(layer, input_shape, out_dir, target: TargetLike = None, *, dtype: str = "float32",
                   output_padding=None, database=None) -> dict:
    """Build ``layer`` for ``input_shape`` on ``target`` into ``out_dir``; returns the manifest.

    ``layer``: a Conv2d/ConvTranspose2d (ours or torch's), its text, a ConvSpec, or a KernelRequest
    (with ``input_shape`` None; it holds its shape, dtype and epilogue).  ``database``:
    the tuning-record folder (None: the target's default; False: hand-written schedules only).
    """
    start = time.perf_counter()
    target = resolve(target)
    request = request_of(layer, input_shape, dtype, output_padding)
    spec = request.spec
    request.output_shape                 # noqa: B018 - raises torch's shape errors, up front
    out = Path(out_dir)
    with progress.step(f"building {request.describe()} for {target_key(target)} into {out_dir}"):
        chosen = choose_schedule(request, target, database)
        device = write_library({build.ENTRY: chosen.mod["main"]}, target, out / LIBRARY)
    manifest = {
        "library": LIBRARY,
        "entry": build.ENTRY,
        "args": kernel_args(request),
        "layer": {"class": spec.class_name, "args": spec.constructor_args()},
        "output_padding": list(request.output_padding) if spec.transposed else None,
        "epilogue": list(request.epilogue.steps),
        "target": target_json(target),
        "target_key": target_key(target),
        "schedule": describe_schedule(chosen, request),
        "device_code": device,
        "versions": versions(),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_loadable(manifest: dict) -> None:
    """Raise a clear error if this machine cannot run a library built for ``manifest['target']``."""
    target = manifest["target"]
    kind = target.get("kind") if isinstance(target, dict) else str(target)
    if kind == "cuda":
        arch = target.get("arch")
        if not tvm.cuda(0).exist:
            raise RuntimeError(f"{manifest['library']} was built for CUDA {arch}; this machine has no "
                               "CUDA GPU (or no driver)")
        major, minor = (int(v) for v in tvm.cuda(0).compute_version.split("."))
        if f"sm_{major}{minor}" != arch:
            raise RuntimeError(f"{manifest['library']} carries code for {arch}; this GPU is "
                               f"sm_{major}{minor}: rebuild with --target cuda/sm_{major}{minor}")
    elif kind == "llvm":
        triple = target.get("mtriple", "")
        if triple and triple.split("-")[0] != platform.machine():
            raise RuntimeError(f"{manifest['library']} was built for {triple}; this machine is "
                               f"{platform.machine()}")
    else:
        raise RuntimeError(f"unknown target kind {kind!r} in the manifest")


def load(out_dir):
    """(function, manifest) of an exported build, after :func:`check_loadable`."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    check_loadable(manifest)
    return tvm.runtime.load_module(str(out / manifest["library"]))[manifest["entry"]], manifest


__all__ = ["export_library", "load", "check_loadable", "LIBRARY", "MANIFEST"]

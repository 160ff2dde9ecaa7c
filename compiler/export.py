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

import tvm

from targets import TargetLike, resolve, target_key

from . import build, cuda_binary, progress
from .layers import batched_shape, spec_of

LIBRARY = "conv.so"
MANIFEST = "manifest.json"


def _versions() -> dict:
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


def _build(spec, shape, dtype, target, output_padding, database, out: Path):
    """Schedule (record or hand rule, torch-layout weights), compile and write ``out/LIBRARY``:
    (the Scheduled, the device-code entry of the manifest)."""
    chosen = None
    if database is not False:
        chosen = build.tuned_schedule(spec, shape, dtype, target, output_padding,
                                      build.records.database_dir(target, database))
    if chosen is None:
        chosen = build.schedule(spec, shape, dtype, target, output_padding)
    executable = tvm.compile(chosen.mod, target=target)
    out.mkdir(parents=True, exist_ok=True)
    library = out / LIBRARY
    if str(target.kind.name) != "cuda":
        fcompile = _cross_compiler(target)
        executable.export_library(str(library), **({"fcompile": fcompile} if fcompile else {}))
        return chosen, None
    source = cuda_binary.device_source(executable)
    fatbin = cuda_binary.compile_device_code(source, target, "fatbin")
    executable.export_library(str(library), fpack_imports=cuda_binary.fpack_imports_with(fatbin, source))
    return chosen, {"format": "fatbin", "arch": str(target.attrs["arch"]), "bytes": len(fatbin)}


def export_library(layer, input_shape, out_dir, target: TargetLike = None, *, dtype: str = "float32",
                   output_padding=None, database=None) -> dict:
    """Build ``layer`` for ``input_shape`` on ``target`` into ``out_dir``; returns the manifest.

    ``layer``: a Conv2d/ConvTranspose2d (ours or torch's), its text, or a ConvSpec.  ``database``:
    the tuning-record folder (None: the target's default; False: hand-written schedules only).
    """
    start = time.perf_counter()
    target = resolve(target)
    spec = spec_of(layer)
    shape = batched_shape(input_shape)
    if spec.transposed and output_padding is None:
        output_padding = spec.output_padding
    out_shape = spec.output_shape(shape, output_padding)           # torch's shape errors, up front
    with progress.step(f"building {spec.describe()} for {'x'.join(map(str, shape))} {dtype} on "
                       f"{target_key(target)} into {out_dir}"):
        chosen, device = _build(spec, shape, dtype, target, output_padding, database, Path(out_dir))
    tuned = chosen.rule.startswith("tuned:")
    out = Path(out_dir)
    args = [{"name": "input", "shape": list(shape), "dtype": dtype},
            {"name": "weight", "shape": list(spec.weight_shape), "dtype": dtype}]
    if spec.bias:
        args.append({"name": "bias", "shape": [spec.out_channels], "dtype": dtype})
    args.append({"name": "output", "shape": list(out_shape), "dtype": dtype})
    workload = build.workload_module(spec, shape, dtype, output_padding)
    manifest = {
        "library": LIBRARY,
        "entry": build.ENTRY,
        "args": args,
        "layer": {"class": spec.class_name, "args": spec.constructor_args()},
        "output_padding": list(output_padding) if spec.transposed else None,
        "target": json.loads(str(target)) if str(target).startswith("{") else str(target),
        "target_key": target_key(target),
        "schedule": {"kind": "tuning-record" if tuned else "hand-written", "name": chosen.rule,
                     "workload_hash": build.workload_hash(workload)},
        "device_code": device,
        "versions": _versions(),
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

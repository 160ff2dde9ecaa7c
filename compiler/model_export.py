"""``export_model``: one ahead-of-time library for every conv kernel of a model, and a runtime-only loader.

The export folder holds:

* ``model.so``: every distinct kernel the converted model runs on the example inputs (fused
  epilogues included), entries ``conv0``, ``conv1``, ... taking ``(input, weight, [bias,]
  [residual,] output)`` in torch's layouts;
* ``manifest.json``: each entry's request, arguments and schedule, and which entry serves each module
  path for each input shape;
* ``model.pt``: the converted model (BatchNorm folded, epilogues fused) whose conv layers are
  ``tvmconv_runtime.LibraryConv`` modules (parameters kept, kernels bound at load);
* ``tvmconv_runtime.py``: the loader (``compiler/runtime_loader.py``), which needs torch and TVM's
  runtime only;
* for the host CPU, ``tvmconv_omp_launch.so`` and ``tvmconv_omp.py``: the compiled ``omp_launch.c`` and
  ``compiler/omp_hooks.py``, with which the loader runs the kernels' parallel loops on torch's OpenMP
  threads (``compiler/threads.py``: one thread pool in the process).  Cross-compiled CPU exports
  (an ``mtriple``) and CUDA ones leave them out (a launcher built here would not run there).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from targets import TargetLike, resolve, target_key

from . import progress
from .export import choose_schedule, describe_schedule, kernel_args, target_json, versions, write_library
from .model_tuning import capture
from .modules import _ConvBase
from .request import KernelRequest

LIBRARY, MANIFEST, MODEL, LOADER = "model.so", "manifest.json", "model.pt", "tvmconv_runtime.py"
LAUNCHER, LAUNCHER_GLUE = "tvmconv_omp_launch.so", "tvmconv_omp.py"


def _loader_module():
    """``compiler/runtime_loader.py`` as the module ``tvmconv_runtime``: the name the pickled model's
    layers carry, so the export loads where only the copied file is importable."""
    if "tvmconv_runtime" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tvmconv_runtime",
                                                      Path(__file__).with_name("runtime_loader.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["tvmconv_runtime"] = module
        spec.loader.exec_module(module)
    return sys.modules["tvmconv_runtime"]


def _request_json(request: KernelRequest) -> dict:
    spec = request.spec
    return {"class": spec.class_name, "args": spec.constructor_args(), "input_shape": list(request.input_shape),
            "output_padding": list(request.output_padding) if spec.transposed else None,
            "epilogue": list(request.epilogue.steps), "dtype": request.dtype}


def export_model(model: torch.nn.Module, example_inputs, out_dir, target: TargetLike = None, *,
                 fuse: bool = True, database=None) -> dict:
    """Build every conv kernel ``model`` runs on ``example_inputs`` for ``target`` into one library in
    ``out_dir``, with the converted model and its loader; returns the manifest.

    ``fuse``: as :func:`compiler.convert` (BatchNorm folded, residual adds and activations fused).
    ``database``: tuning records (None: the target's default folder; False: hand-written only).
    Load with ``tvmconv_runtime.load(out_dir)`` (torch and TVM's runtime only) or
    :func:`compiler.load_model`.
    """
    start = time.perf_counter()
    target = resolve(target)
    out = Path(out_dir)
    converted, calls = capture(model, example_inputs, fuse, nchw=True)
    entries: Dict[KernelRequest, str] = {}
    for _, request in calls:
        entries.setdefault(request, f"conv{len(entries)}")
    with progress.step(f"building {len(entries)} kernels of {type(model).__name__} for {target_key(target)} "
                       f"into {out}"):
        chosen = {request: choose_schedule(request, target, database) for request in entries}
        device = write_library({entry: chosen[request].mod["main"] for request, entry in entries.items()},
                               target, out / LIBRARY)
    layers: Dict[str, List[dict]] = {}
    for path, request in calls:
        served = layers.setdefault(path, [])
        if all(s["input_shape"] != list(request.input_shape) for s in served):
            served.append({"input_shape": list(request.input_shape), "entry": entries[request]})
    _write_model(converted, calls, entries, out)
    shutil.copyfile(Path(__file__).with_name("runtime_loader.py"), out / LOADER)
    launcher = _copy_launcher(target, out)
    manifest = {
        "library": LIBRARY, "model": MODEL, "loader": LOADER, "launcher": launcher,
        "target": target_json(target), "target_key": target_key(target),
        "entries": [{"entry": entry, "request": _request_json(request), "args": kernel_args(request),
                     "schedule": describe_schedule(chosen[request], request)} for request, entry in entries.items()],
        "layers": layers,
        "device_code": device,
        "versions": versions(),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _copy_launcher(target, out: Path):
    """The OpenMP launcher and its glue into ``out`` for a host-CPU export: the launcher's file name,
    or None (another target, or no C++ compiler to build it with)."""
    from . import library_cache, threads
    if not library_cache.is_host_cpu(target):
        return None
    try:
        built = threads.launcher_library()
    except Exception:  # noqa: BLE001 - no compiler: the export keeps TVM's pool (the loader says so)
        return None
    shutil.copyfile(built, out / LAUNCHER)
    shutil.copyfile(Path(__file__).with_name("omp_hooks.py"), out / LAUNCHER_GLUE)
    return LAUNCHER


def _write_model(converted: torch.nn.Module, calls, entries: Dict[KernelRequest, str], out: Path) -> None:
    """A copy of ``converted`` whose conv layers of ours are LibraryConv modules (one per layer, at every
    path it is reachable by; a layer the example never called gets no entries), saved as ``out/MODEL``."""
    loader = _loader_module()
    model = copy.deepcopy(converted)
    served: Dict[str, dict] = {}
    for path, request in calls:
        served.setdefault(path, {})[tuple(request.input_shape)] = (entries[request], tuple(request.output_shape))
    replaced: Dict[int, torch.nn.Module] = {}
    for path, layer in model.named_modules():
        if isinstance(layer, _ConvBase) and id(layer) not in replaced:
            replaced[id(layer)] = loader.LibraryConv(path, layer.weight, layer.bias, served.get(path, {}),
                                                     layer.epilogue.residual)
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if id(child) in replaced:
                setattr(parent, name, replaced[id(child)])
    model = replaced.get(id(model), model)           # the model is a single conv layer
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / MODEL)


def load_model(out_dir) -> torch.nn.Module:
    """An exported model, through the same loader a runtime-only process uses."""
    return _loader_module().load(out_dir)


__all__ = ["export_model", "load_model"]

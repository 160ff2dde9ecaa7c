"""Run a model exported by ``compiler.export_model`` with TVM's runtime alone (no compiler, no TVM
compiler library): ``import tvmconv_runtime; model = tvmconv_runtime.load(out_dir)``.

This file is standalone on purpose: ``export_model`` copies it into the export folder as
``tvmconv_runtime.py``, and the pickled model's conv layers are :class:`LibraryConv` modules of it.
It imports torch and ``tvm.runtime`` only (``TVM_USE_RUNTIME_LIB=1`` loads just libtvm_runtime).

A CPU export's parallel loops run on torch's OpenMP threads, as the compiler's own modules do
(``compiler/threads.py``): the export ships the compiled launcher (``tvmconv_omp_launch.so``) and its ctypes
glue (``tvmconv_omp.py``, a copy of ``compiler/omp_hooks.py``); ``TVM_CONV_THREADS=tvm`` keeps TVM's
pool, and where the launcher cannot start (torch without OpenMP) the loader warns and keeps it too.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

MANIFEST = "manifest.json"
MODEL = "model.pt"


class LibraryConv(nn.Module):
    """A conv layer of the exported model: its (folded) parameters, and the library entry that computes
    it for each input shape it was exported for.  ``forward(input, residual=None)``."""

    def __init__(self, path: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 entries: Dict[Tuple[int, ...], Tuple[str, Tuple[int, ...]]], residual: bool) -> None:
        super().__init__()
        self.path, self.entries, self.residual = path, dict(entries), residual
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._functions: Dict[str, object] = {}

    def bind(self, library) -> None:
        self._functions = {entry: library[entry] for entry, _ in self.entries.values()}

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        batched = input.dim() == 4
        x = input if batched else input.unsqueeze(0)
        if tuple(x.shape) not in self.entries:
            raise RuntimeError(f"{self.path}: exported for input shapes {sorted(self.entries)}, called with "
                               f"{tuple(x.shape)}: export the model again with an example of this shape")
        if (residual is not None) != self.residual:
            raise TypeError(f"{self.path} {'takes' if self.residual else 'takes no'} residual input")
        entry, out_shape = self.entries[tuple(x.shape)]
        y = x.new_empty(out_shape)
        args = [x.contiguous(), self.weight.detach().contiguous()]
        if self.bias is not None:
            args.append(self.bias.detach().contiguous())
        if residual is not None:
            args.append((residual if batched else residual.unsqueeze(0)).contiguous())
        if x.is_cuda:
            import tvm_ffi
            with torch.cuda.device(x.device), tvm_ffi.use_torch_stream():
                self._functions[entry](*args, y)
        else:
            self._functions[entry](*args, y)
        return y if batched else y.squeeze(0)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_functions"] = {}
        return state

    def extra_repr(self) -> str:
        return f"{self.path!r}, entries={len(self.entries)}, residual={self.residual}"


def _omp_hooks():
    """``compiler/omp_hooks.py``: beside this file as ``tvmconv_omp.py`` in an export folder, as
    ``omp_hooks.py`` in the compiler package (loaded by path: this file may run as a lone module)."""
    if "tvmconv_omp" not in sys.modules:
        import importlib.util
        here = Path(__file__).parent
        path = here / "tvmconv_omp.py" if (here / "tvmconv_omp.py").exists() else here / "omp_hooks.py"
        spec = importlib.util.spec_from_file_location("tvmconv_omp", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["tvmconv_omp"] = module
    return sys.modules["tvmconv_omp"]


_LAUNCHERS: Dict[str, object] = {}


def _use_torch_threads(library_path: Path, launcher_path: Path) -> bool:
    """Point the loaded library's parallel loops at torch's OpenMP threads (see the module docstring);
    True when they now run there."""
    hooks = _omp_hooks()
    if hooks.mode() == "tvm":
        return False
    try:
        launcher = _LAUNCHERS.get(str(launcher_path))
        if launcher is None:
            launcher = _LAUNCHERS[str(launcher_path)] = hooks.init_launcher(launcher_path)
        hooks.set_hooks(library_path, launcher.launch, launcher.barrier)
        return True
    except Exception as err:  # noqa: BLE001 - any failure: TVM's pool, which still computes correctly
        warnings.warn(f"{library_path}: kernels use TVM's thread pool, not torch's OpenMP threads "
                      f"({type(err).__name__}: {err}); alternating them with torch ops may be slow",
                      RuntimeWarning, stacklevel=3)
        return False


def load(out_dir, map_location=None) -> nn.Module:
    """The exported model, its conv layers bound to the library's kernels (eval mode)."""
    import tvm.runtime

    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    library = tvm.runtime.load_module(str(out / manifest["library"]))
    if manifest.get("launcher"):
        _use_torch_threads(out / manifest["library"], out / manifest["launcher"])
    sys.modules.setdefault("tvmconv_runtime", sys.modules[__name__])   # what the pickle names
    model = torch.load(out / MODEL, weights_only=False, map_location=map_location)
    for module in model.modules():
        if isinstance(module, LibraryConv):
            module.bind(library)
    return model.eval()

"""Run a model exported by ``compiler.export_model`` with TVM's runtime alone (no compiler, no TVM
compiler library): ``import tvmconv_runtime; model = tvmconv_runtime.load(out_dir)``.

This file is standalone on purpose: ``export_model`` copies it into the export folder as
``tvmconv_runtime.py``, and the pickled model's conv layers are :class:`LibraryConv` modules of it.
It imports torch and ``tvm.runtime`` only (``TVM_USE_RUNTIME_LIB=1`` loads just libtvm_runtime).
"""
from __future__ import annotations

import json
import sys
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


def load(out_dir, map_location=None) -> nn.Module:
    """The exported model, its conv layers bound to the library's kernels (eval mode)."""
    import tvm.runtime

    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    library = tvm.runtime.load_module(str(out / manifest["library"]))
    sys.modules.setdefault("tvmconv_runtime", sys.modules[__name__])   # what the pickle names
    model = torch.load(out / MODEL, weights_only=False, map_location=map_location)
    for module in model.modules():
        if isinstance(module, LibraryConv):
            module.bind(library)
    return model.eval()

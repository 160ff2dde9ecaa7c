"""Fused layers: a convolution whose kernel also applies what follows it in a network.

:func:`compiler.convert` folds an eval-mode BatchNorm2d into the conv's weights and bias, and moves
the residual add and the activation that follow into the kernel's epilogue (the compute's
``output`` stage), so a ResNet block's last conv + BN + add + ReLU is one pass over the output
instead of four.  The modules here hold the folded parameters and the epilogue; their forward takes
the residual as a second input.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from . import ops
from .modules import Conv2d, ConvTranspose2d, _ConvBase
from .request import ADD, Epilogue

#: torch's own function for each activation of ``request.ACTIVATIONS`` (the unfused path, and what
#: the fused kernel is tested against).
TORCH_ACTIVATIONS = {
    "relu": F.relu, "relu6": F.relu6, "silu": F.silu, "sigmoid": torch.sigmoid, "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh,
}


def apply_epilogue(y: torch.Tensor, steps: Tuple[str, ...], residual: Optional[torch.Tensor]) -> torch.Tensor:
    """The epilogue in torch's ops, in order (for residuals the kernel cannot take: broadcasting ones)."""
    for step in steps:
        y = y + residual if step == ADD else TORCH_ACTIVATIONS[step](y)
    return y


def _autograd_needed(*tensors) -> bool:
    """Whether autograd may differentiate the call (fx proxies: it may, so the traced graph is)."""
    if any(t is not None and not isinstance(t, torch.Tensor) for t in tensors):
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _Fused:
    """Mixin: the kernel applies ``self.epilogue``; ``forward(input, residual=None)``."""

    def _fused_run(self, input: torch.Tensor, residual: Optional[torch.Tensor], output_padding=None):
        if self.epilogue.residual != (residual is not None):
            raise TypeError(f"{type(self).__name__} with epilogue {self.epilogue} "
                            f"{'takes' if self.epilogue.residual else 'takes no'} residual input")
        if not self._plain(input) or (residual is not None and ops.needs_operator(residual)):
            if _autograd_needed(input, self.weight, self.bias, residual):    # torch differentiates the epilogue
                return apply_epilogue(self._convolve(input), self.epilogue.steps, residual)
            return self._convolve(input, residual, "+".join(self.epilogue.steps))
        self._check_input(input)
        if residual is None:
            return self._run(input, output_padding)
        batched = input if input.dim() == 4 else input.unsqueeze(0)
        out_shape, _ = self._dispatch(batched, output_padding)         # memoised
        expected = out_shape if input.dim() == 4 else out_shape[1:]
        if tuple(residual.shape) == tuple(expected) and residual.dtype == input.dtype and \
                residual.device == input.device:
            return self._run(input, output_padding, residual=residual)
        # A residual the kernel cannot read in the output's place (it broadcasts, or torch's add would
        # promote its dtype): the same epilogue in torch's ops after the plain kernel.
        fused, self.epilogue = self.epilogue, Epilogue()
        try:
            y = self._run(input, output_padding)
        finally:
            self.epilogue = fused
        return apply_epilogue(y, fused.steps, residual)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", epilogue={self.epilogue}"


class FusedConv2d(_Fused, Conv2d):
    """``Conv2d`` (BatchNorm folded in) followed by its epilogue, in one kernel."""

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self._repeat(input, residual)
        return y if y is not None else self._fused_run(input, residual)


class FusedConvTranspose2d(_Fused, ConvTranspose2d):
    """``ConvTranspose2d`` (BatchNorm folded in) followed by its epilogue, in one kernel."""

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self._repeat(input, residual)
        if y is not None:
            return y
        if self.padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose2d')
        return self._fused_run(input, residual, tuple(self.output_padding))


def ours_from_torch(conv: nn.Module, fused: bool = False) -> _ConvBase:
    """Our module (fused or plain) with ``conv``'s constructor arguments, sharing its parameters."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    cls = (FusedConvTranspose2d if transposed else FusedConv2d) if fused else \
        (ConvTranspose2d if transposed else Conv2d)
    args = dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta",
                dtype=conv.weight.dtype)
    if transposed:
        args["output_padding"] = conv.output_padding
    ours = cls(**args)
    ours.weight = conv.weight
    if conv.bias is not None:
        ours.bias = conv.bias
    ours.train(conv.training)
    return ours


def fold_batch_norm(conv: _ConvBase, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias (computed in float64, stored in the
    conv's dtype): ``bn(conv(x)) = conv'(x)`` with ``w' = w * s``, ``b' = (b - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)`` per output channel."""
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        bias = (bias - mean) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        weight = conv.weight.double()
        if conv.transposed:            # (in, out/groups, kh, kw): output channel g*opg + j at [g-th block, j]
            in_channels, opg = weight.shape[:2]
            blocks = weight.reshape(conv.groups, in_channels // conv.groups, opg, *weight.shape[2:])
            weight = (blocks * scale.reshape(conv.groups, 1, opg, 1, 1)).reshape(weight.shape)
        else:
            weight = weight * scale.reshape(-1, 1, 1, 1)
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter(weight.to(dtype), requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)

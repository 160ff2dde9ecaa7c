"""Fused layers against torch: BatchNorm folded, residual add and activations in the kernel's epilogue.

The bound extends ``reference.py``'s to the epilogue.  The pre-activation value ``z = conv(x, w') + b'
+ r`` sums ``K + 2`` terms in float32 (``K`` products, the bias, the residual), each operand already
rounded (the folded weight once more: ``w'32 = w'(1 + d)``), so ``|z32 - z| <= (K + 3) u (M + |r|)``
with ``M = conv(|x|, |w'|) + |b'|``.  An activation with slope at most ``L`` carries that over times
``L`` (1 for relu/relu6/tanh, 1.13 for gelu, 1.1 for silu, 1.5 for hardswish (its slope at x = 3),
1/4 and 1/6 for the sigmoids: we use 1.5 for all), its float32 evaluation (exp, erf, tanh: a few
ulps) adds ``4 u |y|``, and the final rounding ``u |y|``.
"""
import copy

import pytest
import torch
from torch import nn

from compiler.fusion import TORCH_ACTIVATIONS, FusedConv2d, FusedConvTranspose2d, fold_batch_norm, \
    ours_from_torch
from compiler.request import ACTIVATIONS, Epilogue

U32 = 2.0 ** -24
SLOPE = 1.5


def _batch_norm(channels):
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(-1.5, 1.5)           # negative scales too
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def check_fused(conv: nn.Module, bn, steps, x: torch.Tensor, residual=None):
    """Fuse ``conv`` (+ ``bn``) with ``steps``; compare with torch's unfused float64 ops."""
    ours = ours_from_torch(conv, fused=True)
    if bn is not None:
        fold_batch_norm(ours, bn)
    ours.epilogue = Epilogue(steps)
    with torch.no_grad():
        y = ours(x, residual) if residual is not None else ours(x)
        z = copy.deepcopy(conv).double()(x.double())
        if bn is not None:
            z = copy.deepcopy(bn).double()(z)
        exact = _epilogue64(z, steps, residual)
        # M + |r|: the folded layer on |x| with |w'|, |b'|, plus |r|
        absolute = copy.deepcopy(conv).double()
        absolute.weight = nn.Parameter(ours.weight.detach().double().abs())
        if ours.bias is not None:
            absolute.bias = nn.Parameter(ours.bias.detach().double().abs())
        magnitude = absolute(x.double().abs())
        if residual is not None:
            magnitude = magnitude + residual.double().abs()
    assert y.shape == exact.shape and y.dtype == x.dtype
    k = (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    if conv.transposed:
        k = (conv.out_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    bound = SLOPE * (k + 3) * U32 * magnitude + 5 * U32 * exact.abs()
    err = (y.double() - exact).abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (f"{steps}: error {err.flatten()[worst]:.3e} > bound "
                                        f"{bound.flatten()[worst]:.3e}")
    return ours


def _epilogue64(z, steps, residual):
    for step in steps:
        z = z + residual.double() if step == "add" else TORCH_ACTIVATIONS[step](z)
    return z


LAYERS = {   # one per CPU rule: channel-vector, direct, depthwise, transposed, fallback-ish
    "dense3x3": lambda: nn.Conv2d(16, 32, 3, padding=1, bias=False),
    "pointwise": lambda: nn.Conv2d(24, 16, 1),
    "grouped": lambda: nn.Conv2d(8, 8, 3, padding=1, groups=4),
    "depthwise": lambda: nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False),
    "transposed": lambda: nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, bias=False),
    "transposed-grouped": lambda: nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=2),
}


@pytest.mark.parametrize("layer", LAYERS, ids=str)
@pytest.mark.parametrize("steps", [("relu",), ("add",), ("add", "relu"), ("hardswish",), ("silu",),
                                   ("relu6", "add")], ids="+".join)
def test_fused_layer_with_batch_norm(layer, steps):
    conv = LAYERS[layer]()
    bn = _batch_norm(conv.out_channels)
    x = torch.randn(2, conv.in_channels, 10, 10)
    out_shape = conv(x).shape
    residual = torch.randn(out_shape) if "add" in steps else None
    check_fused(conv, bn, steps, x, residual)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation(activation):
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(1, 8, 9, 11) * 2
    check_fused(conv, None, (activation,), x)


@pytest.mark.parametrize("dtype", [torch.float64])
def test_float64_epilogue(dtype):
    conv = nn.Conv2d(4, 8, 3, padding=1).to(dtype)
    ours = ours_from_torch(conv, fused=True)
    ours.epilogue = Epilogue(("add", "gelu"))
    x, r = torch.randn(1, 4, 6, 6, dtype=dtype), torch.randn(1, 8, 6, 6, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, r), nn.functional.gelu(conv(x) + r), rtol=1e-12, atol=1e-12)


def test_unbatched_input_and_residual():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    ours = check_fused(conv, None, ("add", "relu"), torch.randn(1, 4, 7, 7), torch.randn(1, 8, 7, 7))
    x, r = torch.randn(4, 7, 7), torch.randn(8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, r), torch.relu(conv(x) + r))


def test_a_broadcasting_residual_takes_torchs_add():
    """The kernel reads a residual of the output's exact shape; anything torch would broadcast is
    added by torch after the kernel, with the same result."""
    conv = nn.Conv2d(4, 8, 3, padding=1)
    ours = ours_from_torch(conv, fused=True)
    ours.epilogue = Epilogue(("add", "relu"))
    x, r = torch.randn(2, 4, 6, 6), torch.randn(1, 8, 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, r), torch.relu(conv(x) + r))
        with pytest.raises(RuntimeError):                   # torch's own broadcast error
            ours(x, torch.randn(3, 8, 6, 6))


def test_residual_given_or_missing_against_the_epilogue():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    fused_add = ours_from_torch(conv, fused=True)
    fused_add.epilogue = Epilogue(("add",))
    fused_relu = ours_from_torch(conv, fused=True)
    fused_relu.epilogue = Epilogue(("relu",))
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(TypeError, match="takes residual"):
        fused_add(x)
    with pytest.raises(TypeError, match="takes no residual"):
        fused_relu(x, torch.randn(1, 8, 6, 6))


def test_bad_epilogues_are_refused():
    with pytest.raises(ValueError, match="unknown epilogue steps"):
        Epilogue(("relu", "swish"))
    with pytest.raises(ValueError, match="at most one residual"):
        Epilogue(("add", "add"))


def test_fused_repr_names_the_epilogue():
    ours = ours_from_torch(nn.Conv2d(4, 8, 3), fused=True)
    ours.epilogue = Epilogue(("add", "relu"))
    assert repr(ours) == "FusedConv2d(4, 8, kernel_size=(3, 3), stride=(1, 1), epilogue=add+relu)"
    assert isinstance(ours_from_torch(nn.ConvTranspose2d(4, 8, 3), fused=True), FusedConvTranspose2d)
    assert isinstance(ours, FusedConv2d)


def test_repeated_fused_calls_take_each_new_residual():
    """A fused module's repeated call (``_repeat``) reads the new input and residual every time,
    and a residual of another shape, a channels_last one or none at all takes the full path."""
    conv = nn.Conv2d(4, 8, 3, padding=1)
    ours = ours_from_torch(conv, fused=True)
    ours.epilogue = Epilogue(("add", "relu"))
    with torch.no_grad():
        for _ in range(3):
            x, r = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 6, 6)
            torch.testing.assert_close(ours(x, r), torch.relu(conv(x) + r))
        assert "_repeat_record" in ours.__dict__
        r = torch.randn(1, 8, 1, 6)
        torch.testing.assert_close(ours(x, r), torch.relu(conv(x) + r))
        r = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(x, r), torch.relu(conv(x) + r))
        with pytest.raises(TypeError, match="takes residual"):
            ours(x)

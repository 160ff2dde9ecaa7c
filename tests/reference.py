"""The differential helper: our module against torch.nn, shape, then dtype, then values.

Tolerances come from the dtype's arithmetic, not from observed errors.  Each output element is a
sum of ``K = in_channels/groups * kh * kw`` products plus the bias, accumulated in ``acc`` (float32
for the half types).  Standard floating-point error analysis bounds the accumulation error by
``gamma_K * sum|x*w|`` with ``gamma_K ~= K * u_acc`` (u = unit roundoff), and the final rounding to
the layer's dtype adds ``u_out * |y|``.  Below the smallest normal number ``lambda`` rounding is
absolute: the standard model with gradual underflow is ``fl(a) = a(1 + d) + e`` with
``|e| <= lambda * u`` (half the subnormal spacing), so each rounding also adds that much: ``K`` times
in the accumulator's type, once in the output's (float16 outputs under ``2**-14`` otherwise fail a
purely relative bound by a fraction of a subnormal step).  The reference is torch in float64 on the same (already
rounded) inputs and weights, so its own error is negligible; ``sum|x*w|`` is torch's convolution of
``|x|`` with ``|w|`` (and ``|b|``), computed the same way.  The bound is worst-case, so a correct
kernel never exceeds it, while an indexing or padding bug produces errors of order ``|y|``.
"""
from __future__ import annotations

import copy

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
                 torch.bfloat16: 2.0 ** -8}
ACCUMULATE = {torch.float64: torch.float64, torch.float32: torch.float32, torch.float16: torch.float32,
              torch.bfloat16: torch.float32}


def torch_twin(ours: torch.nn.Module, **overrides) -> torch.nn.Module:
    """The torch.nn layer with our module's constructor arguments and parameters."""
    cls = getattr(torch.nn, type(ours).__name__)
    args = dict(in_channels=ours.in_channels, out_channels=ours.out_channels,
                kernel_size=ours.kernel_size, stride=ours.stride, padding=ours.padding,
                dilation=ours.dilation, groups=ours.groups, bias=ours.bias is not None,
                padding_mode=ours.padding_mode, dtype=ours.weight.dtype,
                device=ours.weight.device)
    if ours.transposed:
        args["output_padding"] = ours.output_padding
    args.update(overrides)
    ref = cls(**args)
    ref.load_state_dict(ours.state_dict())
    return ref


def _float64(module: torch.nn.Module, absolute: bool) -> torch.nn.Module:
    m = copy.deepcopy(module).double()
    if absolute:
        with torch.no_grad():
            for p in m.parameters():
                p.abs_()
    return m


def assert_matches_torch(ours: torch.nn.Module, x: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """Run ``ours`` and its torch twin on ``x``; check shape, dtype and values within the dtype's bound."""
    with torch.no_grad():
        y = ours(x, **forward_kwargs)
    return assert_output_matches(ours, x, y, **forward_kwargs)


def assert_output_matches(ours: torch.nn.Module, x: torch.Tensor, y, **forward_kwargs) -> torch.Tensor:
    """Check ``y``, computed for ``ours`` on ``x`` by any kernel of ours, against the torch twin."""
    ref = torch_twin(ours)
    with torch.no_grad():
        expected_meta = ref(x, **forward_kwargs)            # torch in the layer's own dtype
        exact = _float64(ref, False)(x.double(), **forward_kwargs)
        magnitude = _float64(ref, True)(x.double().abs(), **forward_kwargs)
    assert isinstance(y, torch.Tensor)
    assert y.shape == expected_meta.shape, f"shape {tuple(y.shape)} != torch {tuple(expected_meta.shape)}"
    assert y.dtype == expected_meta.dtype, f"dtype {y.dtype} != torch {expected_meta.dtype}"
    if y.numel() == 0:
        return y
    reduction = (ours.in_channels // ours.groups) * ours.kernel_size[0] * ours.kernel_size[1] + 1
    assert_within_bound(y, exact, magnitude, reduction)
    return y


def assert_within_bound(y: torch.Tensor, exact: torch.Tensor, magnitude: torch.Tensor, reduction: int,
                        roundings: int = 1) -> None:
    """``y`` (in its own dtype) against the float64 ``exact`` value of a sum of at most ``reduction``
    products accumulated in the dtype's accumulation type, whose absolute terms sum to
    ``magnitude``.  ``roundings`` counts the roundings to ``y``'s dtype on the way: one (the
    result), or two where a rounded intermediate is summed again (each adds ``u_out * magnitude``
    at most: it rounds partial sums bounded by ``magnitude``)."""
    u_acc, u_out = UNIT_ROUNDOFF[ACCUMULATE[y.dtype]], UNIT_ROUNDOFF[y.dtype]
    acc, out = ACCUMULATE[y.dtype], y.dtype
    underflow = reduction * torch.finfo(acc).smallest_normal * u_acc + \
        roundings * torch.finfo(out).smallest_normal * u_out
    bound = reduction * u_acc * magnitude + u_out * exact.abs() + (roundings - 1) * u_out * magnitude + underflow
    err = (y.double() - exact).abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"error {err.flatten()[worst].item():.3e} exceeds bound {bound.flatten()[worst].item():.3e} "
        f"at flat index {worst.item()} (y={y.flatten()[worst].item()}, exact={exact.flatten()[worst].item()})")

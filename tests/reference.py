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

TF32 (float32 on tensor cores, where torch allows it): each product's operands are first rounded to
TF32, relative error at most ``u_tf32 = 2**-11`` each (normal operands, as in the tests), so a product moves by at most
``(2 u_tf32 + u_tf32**2) |x*w|`` (the product of two TF32 values is then exact in float32), the
sum of those moves is at most that times ``sum|x*w|``, and the accumulation's bound grows by the
factor ``(1 + u_tf32)**2`` on the rounded terms.
"""
from __future__ import annotations

import copy

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
                 torch.bfloat16: 2.0 ** -8}
#: unit roundoff of TF32 operands (10 stored mantissa bits, round to nearest)
TF32_ROUNDOFF = 2.0 ** -11
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


def assert_output_matches(ours: torch.nn.Module, x: torch.Tensor, y, operand_roundoff=None,
                          **forward_kwargs) -> torch.Tensor:
    """Check ``y``, computed for ``ours`` on ``x`` by any kernel of ours, against the torch twin.
    ``operand_roundoff``: of the products' operands (``TF32_ROUNDOFF``); by default that of the
    request of ``ours``'s last call (TF32 where torch allowed it on a GPU with TF32)."""
    if operand_roundoff is None:
        request = getattr(ours, "last_request", None)
        operand_roundoff = TF32_ROUNDOFF if getattr(request, "tf32", False) else 0.0
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
    assert_within_bound(y, exact, magnitude, reduction, operand_roundoff=operand_roundoff)
    return y


def assert_within_bound(y: torch.Tensor, exact: torch.Tensor, magnitude: torch.Tensor, reduction: int,
                        roundings: int = 1, operand_roundoff: float = 0.0) -> None:
    """``y`` (in its own dtype) against the float64 ``exact`` value of a sum of at most ``reduction``
    products accumulated in the dtype's accumulation type, whose absolute terms sum to
    ``magnitude``.  ``roundings`` counts the roundings to ``y``'s dtype on the way: one (the
    result), or two where a rounded intermediate is summed again (each adds ``u_out * magnitude``
    at most: it rounds partial sums bounded by ``magnitude``).  ``operand_roundoff``: the products'
    operands were rounded first with that unit roundoff (TF32: module docstring)."""
    u_acc, u_out = UNIT_ROUNDOFF[ACCUMULATE[y.dtype]], UNIT_ROUNDOFF[y.dtype]
    acc, out = ACCUMULATE[y.dtype], y.dtype
    underflow = reduction * torch.finfo(acc).smallest_normal * u_acc + \
        roundings * torch.finfo(out).smallest_normal * u_out
    operands = (1 + operand_roundoff) ** 2          # the rounded products' growth
    bound = reduction * u_acc * operands * magnitude + (operands - 1) * magnitude + u_out * exact.abs() + \
        (roundings - 1) * u_out * magnitude + underflow
    err = (y.double() - exact).abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"error {err.flatten()[worst].item():.3e} exceeds bound {bound.flatten()[worst].item():.3e} "
        f"at flat index {worst.item()} (y={y.flatten()[worst].item()}, exact={exact.flatten()[worst].item()})")

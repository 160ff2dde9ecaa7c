"""Tensor-expression definitions of conv2d and conv_transpose2d (NCHW), one per operator family,
and of their gradient kernels (weight, padded input folded back, bias).  A forward request may
instead be ``NHWC`` (``request.LAYOUTS``): the same compute, its tensors indexed through
:class:`_Physical` views, the reduction ordered ``rh, rw, rc``.

Nothing here knows about targets or schedules (a TF32 request's operands are rounded by
``targets.cuda.round_to_tf32``, the one definition of that number format).  Every function takes a :class:`KernelRequest` and
returns the TE tensors ``[input, weight, (bias,) (residual,) output]`` in kernel-argument order;
stage names are fixed so that schedules can find them: ``pad`` (conv2d only, the padding mode as an
index map), ``conv`` (the reduction, in the accumulation dtype) and ``output`` (bias, the request's
epilogue (residual add, activations) and the cast to the layer's dtype).
Reduce axes are ``rc, rh, rw``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

from tvm import te, tirx

from targets.cuda import round_to_tf32

from .request import ADD, FORWARD, NCHW, PAD_GRAD, WEIGHT_GRAD, Epilogue, KernelRequest
from .spec import ConvSpec

#: Half-precision types accumulate in float32 (as cuDNN / oneDNN do); the rest in their own type.
ACCUMULATE_DTYPE = {"float16": "float32", "bfloat16": "float32", "float32": "float32",
                    "float64": "float64"}


def _operand(value, acc: str, tf32: bool):
    """A product's operand in the accumulation type; for a TF32 request rounded to TF32 as NVIDIA's
    tensor cores take it (``round_to_tf32``: the product of two TF32 values is exact in float32)."""
    value = value.astype(acc)
    return round_to_tf32(value) if tf32 else value


def _pad_index(i, before: int, size: int, mode: str):
    """Source index for padded position ``i`` of an axis of length ``size`` (padding_mode as index math).

    Valid because the spec rejected reflect pads >= size and circular pads > size beforehand;
    a negative pad simply crops, as ``F.pad`` does.
    """
    j = i - before
    if mode == "reflect":
        j = tirx.abs(j)                                  # left edge: -j
        return (size - 1) - tirx.abs((size - 1) - j)     # right edge: 2(size-1) - j
    if mode == "replicate":
        return tirx.max(tirx.min(j, size - 1), 0)
    if mode == "circular":
        return tirx.floormod(j, size)
    return j


class _Physical:
    """A tensor of ``layout`` indexed in NCHW order ``[n, c, h, w]`` (so one compute serves both
    layouts); ``shape`` is the logical NCHW one."""

    def __init__(self, tensor: te.Tensor, layout: str = NCHW):
        self.tensor, self.layout = tensor, layout
        dims = tuple(int(d) for d in tensor.shape)
        self.shape = dims if layout == NCHW else (dims[0], dims[3], dims[1], dims[2])
        self.dtype = tensor.dtype

    def __getitem__(self, index):
        return self.tensor[physical(index, self.layout)]


def physical(nchw, layout: str) -> tuple:
    """An NCHW index or shape in ``layout``'s order."""
    n, c, h, w = nchw
    return (n, c, h, w) if layout == NCHW else (n, h, w, c)


def _compute(shape, fcompute, name: str, layout: str) -> _Physical:
    """``te.compute`` of NCHW ``shape`` stored in ``layout``, ``fcompute`` taking NCHW indices."""
    if layout == NCHW:
        return _Physical(te.compute(shape, fcompute, name=name))
    return _Physical(te.compute(physical(shape, layout), lambda n, h, w, c: fcompute(n, c, h, w), name=name),
                     layout)


def _zero_pad(x: _Physical, top: int, bottom: int, left: int, right: int) -> _Physical:
    """``x`` with zero rows/columns around its spatial axes (stage ``pad``, in ``x``'s layout),
    indexed in NCHW order."""
    n, c, h, w = x.shape
    return _compute((n, c, h + top + bottom, w + left + right), lambda b, ch, i, j: tirx.if_then_else(
        tirx.all(i >= top, i < h + top, j >= left, j < w + left), x[b, ch, i - top, j - left],
        tirx.const(0, x.dtype)), "pad", x.layout)


def _pad(x, spec: ConvSpec):
    """The padded input (stage ``pad``, in ``x``'s layout) indexed in NCHW order; ``x`` itself when
    there is nothing to pad (the reduction reads the input directly)."""
    if not any(spec.pads):
        return x
    x = x if isinstance(x, _Physical) else _Physical(x)
    n, c, h, w = x.shape
    pt, pb, pl, pr = spec.pads
    if spec.padding_mode == "zeros":
        return _zero_pad(x, pt, pb, pl, pr)
    shape = (n, c, h + pt + pb, w + pl + pr)
    return _compute(shape, lambda b, ch, i, j: x[
        b, ch, _pad_index(i, pt, h, spec.padding_mode), _pad_index(j, pl, w, spec.padding_mode)],
        "pad", x.layout)


def activation(name: str, x, dtype: str):
    """torch's activation ``name`` (``request.ACTIVATIONS``) of the TIR value ``x`` of type ``dtype``."""
    def c(value):
        return tirx.const(value, dtype)
    one, zero = c(1), c(0)
    if name == "relu":
        return tirx.max(x, zero)
    if name == "relu6":
        return tirx.min(tirx.max(x, zero), c(6))
    if name == "sigmoid":
        return tirx.sigmoid(x)
    if name == "silu":
        return x * tirx.sigmoid(x)
    if name in ("hardsigmoid", "hardswish"):      # relu6(x + 3) / 6, times x for hardswish
        gate = tirx.min(tirx.max(x + c(3), zero), c(6)) / c(6)
        return gate if name == "hardsigmoid" else x * gate
    if name == "gelu":                             # x/2 (1 + erf(x / sqrt 2)), torch's default (exact)
        return c(0.5) * x * (one + tirx.erf(x * c(math.sqrt(0.5))))
    if name == "gelu_tanh":                        # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = c(math.sqrt(2 / math.pi)) * (x + c(0.044715) * x * x * x)
        return c(0.5) * x * (one + tirx.tanh(inner))
    if name == "tanh":
        return tirx.tanh(x)
    raise ValueError(f"unknown activation {name!r}")


def _epilogue(conv, bias, residual, dtype: str, epilogue: Epilogue, layout: str = NCHW) -> te.Tensor:
    """Bias add, then the epilogue's steps (a residual add, activations) in the accumulation type,
    then one rounding to the layer's dtype (stage ``output``, in ``layout``); ``conv`` and
    ``residual`` are indexed in NCHW order."""
    def value(n, k, i, j):
        v = conv[n, k, i, j]
        if bias is not None:
            v = v + bias[k].astype(conv.dtype)
        for step in epilogue.steps:
            v = v + residual[n, k, i, j].astype(conv.dtype) if step == ADD else activation(step, v, conv.dtype)
        return v.astype(dtype)
    return _compute(conv.shape, value, "output", layout).tensor


@dataclass(frozen=True)
class PhaseTaps:
    """A transposed layer's weight packed as the GEMMs of its output phases read it (the tensor-core
    rule's B operand): ``[sh, sw, groups, co/groups, K]``, K one phase's taps and input channels in
    the GEMM's order, ``(ci, jh, jw)`` for an NCHW kernel, ``(jh, jw, ci)`` for an NHWC one (``j``: a
    phase's tap, ``conv_transpose2d``), taps past the kernel's edge zeros.  Torch's ``[ci, co/groups,
    kh, kw]`` has a phase's taps ``s`` apart and the channels a whole ``co * kh * kw`` apart: no run of
    K is contiguous there, so a kernel reads it an element per load."""

    layout: str = NCHW


@dataclass(frozen=True)
class ChannelsLastWeight:
    """A conv2d weight packed ``[co, kh, kw, ci/groups]`` (a channels_last weight's bytes) for a kernel
    of NCHW activations that reads its K as runs of input channels (the tensor-core rule's NCHW
    input read through an NHWC copy: ``schedules.cuda_tensorcore.relayout``).  An NHWC request's
    weight has this layout already (``_placeholders``)."""


def packed_weight_shape(spec: ConvSpec, block):
    """The packed weight's shape: for ``block`` output channels ``[co/block, ci/groups, kh, kw,
    block]`` (a block of output channels' weights contiguous); for a :class:`PhaseTaps` or a
    :class:`ChannelsLastWeight`, its layout."""
    if isinstance(block, ChannelsLastWeight):
        co, cpg, kh, kw = spec.weight_shape
        return (co, kh, kw, cpg)
    if isinstance(block, PhaseTaps):
        (sh, sw), taps = spec.stride, _phase_tap_counts(spec)
        cpg, opg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
        return (sh, sw, spec.groups, opg, *((cpg, *taps) if block.layout == NCHW else (*taps, cpg)))
    co, cpg, kh, kw = spec.weight_shape
    return (co // block, cpg, kh, kw, block)


def pack_weight(spec: ConvSpec, dtype: str, block) -> List[te.Tensor]:
    """``[weight, packed]``: torch's weight into :func:`packed_weight_shape` (``block``: output
    channels per block, or a :class:`PhaseTaps`).

    Run once per weight change by the modules (schedules ask for it through ``weight_block``).
    """
    w = te.placeholder(spec.weight_shape, dtype, name="weight")
    if isinstance(block, PhaseTaps):
        return [w, te.compute(packed_weight_shape(spec, block), _phase_packing(spec, w, block), name="packed_weight")]
    if isinstance(block, ChannelsLastWeight):
        return [w, te.compute(packed_weight_shape(spec, block), lambda co, r, c, ci: w[co, ci, r, c],
                              name="packed_weight")]
    packed = te.compute(packed_weight_shape(spec, block),
                        lambda a, ci, r, c, v: w[a * block + v, ci, r, c], name="packed_weight")
    return [w, packed]


def _phase_tap_counts(spec: ConvSpec):
    """Taps per output phase along each axis (``conv_transpose2d``'s ``ceil(k / s')``)."""
    return tuple(_phase_taps(s, d, k)[3] for s, d, k in zip(spec.stride, spec.dilation, spec.kernel_size))


def _phase_packing(spec: ConvSpec, w, packing: PhaseTaps):
    """``fcompute`` of a :class:`PhaseTaps` packing of the torch-layout weight ``w``."""
    cpg = spec.in_channels // spec.groups
    (sh, sw), (dh, dw), (kh_size, kw_size) = spec.stride, spec.dilation, spec.kernel_size
    pt, _, pl, _ = spec.pads
    taps_h, taps_w = _phase_taps(sh, dh, kh_size), _phase_taps(sw, dw, kw_size)

    def value(ph, pw, g, o, *k):
        c, jh, jw = k if packing.layout == NCHW else (k[2], k[0], k[1])
        kh = _kernel_tap(tirx.floormod(ph + pt, sh), jh, *taps_h[:3])
        kw = _kernel_tap(tirx.floormod(pw + pl, sw), jw, *taps_w[:3])
        return _tap_or_zero(w, g * cpg + c, o, kh, kw, spec.kernel_size)
    return value


def _tap_or_zero(w, ci, co, kh, kw, kernel_size):
    """Torch-layout transposed weight ``w[ci, co, kh, kw]``, zero for a tap past the kernel's edge
    (a phase's taps run ``s'`` apart from its first, so the last may fall outside)."""
    (kh_size, kw_size) = kernel_size
    return tirx.if_then_else(tirx.all(kh < kh_size, kw < kw_size),
                             w[ci, co, tirx.min(kh, kh_size - 1), tirx.min(kw, kw_size - 1)], tirx.const(0, w.dtype))


def _phase_taps(stride: int, dil: int, k: int):
    """(g, s', inverse of d' mod s', taps per phase) of one axis (``conv_transpose2d``)."""
    g = math.gcd(stride, dil)
    s_red = stride // g
    inv = pow(dil // g, -1, s_red) if s_red > 1 else 0
    return g, s_red, inv, -(-k // s_red)


def _kernel_tap(r_pad, j, g, s_red, inv):
    """Kernel index of the j-th tap reaching phase offset ``r_pad = (r + pad) % s`` (int or expr)."""
    if isinstance(r_pad, int):
        return (r_pad // g * inv) % s_red + s_red * j
    return tirx.floormod(tirx.floordiv(r_pad, g) * inv, s_red) + s_red * j


def _placeholders(spec: ConvSpec, input_shape: Sequence[int], dtype: str, weight_block=None, layout: str = NCHW):
    """(input, weight, bias): the input a :class:`_Physical` view of ``layout``; the weight torch's
    ``[co, ci/groups, kh, kw]``, pre-packed (``weight_block``), or for NHWC (or a
    :class:`ChannelsLastWeight`) ``[co, kh, kw, ci/groups]``,
    each a view indexed as torch's (the compute stays one); a :class:`PhaseTaps` packing the plain
    packed placeholder, which ``conv_transpose2d`` indexes by phase itself."""
    x = _Physical(te.placeholder(physical(input_shape, layout), dtype, name="input"), layout)
    if isinstance(weight_block, PhaseTaps):           # read as packed (``conv_transpose2d``)
        w = te.placeholder(packed_weight_shape(spec, weight_block), dtype, name="weight")
    elif weight_block and not isinstance(weight_block, ChannelsLastWeight):
        packed = te.placeholder(packed_weight_shape(spec, weight_block), dtype, name="weight")
        w = _WeightView(packed, lambda co, ci, r, c: (co // weight_block, ci, r, c, co % weight_block))
    elif layout != NCHW or weight_block:
        co, cpg, kh, kw = spec.weight_shape
        w = _WeightView(te.placeholder((co, kh, kw, cpg), dtype, name="weight"), lambda co, ci, r, c: (co, r, c, ci))
    else:
        w = te.placeholder(spec.weight_shape, dtype, name="weight")
    b = te.placeholder((spec.out_channels,), dtype, name="bias") if spec.bias else None
    return x, w, b


class _WeightView:
    """A weight placeholder in another layout, indexed as torch's ``[co, ci, kh, kw]`` through
    ``index`` (torch's index -> the placeholder's)."""

    def __init__(self, tensor: te.Tensor, index):
        self.tensor, self.index = tensor, index
        self.dtype = tensor.dtype

    def __getitem__(self, index):
        return self.tensor[self.index(*index)]


def _finish(request: KernelRequest, x, w, b, conv) -> List[te.Tensor]:
    """The epilogue on ``conv`` (indexed in NCHW order): kernel arguments ``[input, weight, (bias,)
    (residual,) output]``, activations in the request's layout."""
    residual = None
    if request.epilogue.residual:
        residual = _Physical(te.placeholder(physical(request.output_shape, request.layout), request.dtype,
                                            name="residual"), request.layout)
    out = _epilogue(conv, b, residual, request.dtype, request.epilogue, request.layout)
    return [getattr(t, "tensor", t) for t in (x, w, b, residual, out) if t is not None]


def conv2d(request: KernelRequest, weight_block=None) -> List[te.Tensor]:
    """Direct convolution, every variant of ``torch.nn.Conv2d``.

    ``output[n, co, oh, ow] = bias[co] + sum_{rc, rh, rw} pad[n, g*cpg + rc, oh*sh + rh*dh, ow*sw + rw*dw]
    * weight[co, rc, rh, rw]`` with ``g = co // (out_channels / groups)``, ``cpg = in_channels / groups``.
    With ``weight_block`` the weight argument is pre-packed (:func:`pack_weight`).  An NHWC request
    stores ``pad``, ``conv`` and ``output`` NHWC and reduces over ``rh, rw, rc`` (a GEMM's K in the
    order of the input's bytes).
    """
    spec, input_shape, dtype, layout = request.spec, request.input_shape, request.dtype, request.layout
    x, w, b = _placeholders(spec, input_shape, dtype, weight_block, layout)
    acc = ACCUMULATE_DTYPE[dtype]
    _, _, oh_size, ow_size = request.output_shape
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel_size
    cpg, opg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    p = _pad(x, spec)
    rc = te.reduce_axis((0, cpg), name="rc")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    conv = _compute(
        (input_shape[0], spec.out_channels, oh_size, ow_size),
        lambda n, co, oh, ow: te.sum(
            _operand(p[n, co // opg * cpg + rc, oh * sh + rh * dh, ow * sw + rw * dw], acc, request.tf32)
            * _operand(w[co, rc, rh, rw], acc, request.tf32), axis=[rc, rh, rw] if layout == NCHW else [rh, rw, rc]),
        "conv", layout)
    return _finish(request, x, w, b, conv)


def conv_transpose2d(request: KernelRequest, packing: Optional[PhaseTaps] = None) -> List[te.Tensor]:
    """Transposed convolution, decomposed by output phase so that no multiply-add meets an inserted zero.

    Output row ``oh`` sits at ``f = oh + pad`` in the uncropped output and receives input row ``ih``
    through tap ``kh`` iff ``f = ih*s + kh*d``.  Write ``oh = q*s + r`` (phase ``r``, ``0 <= r < s``).
    With ``g = gcd(s, d)``, ``s' = s/g``, ``d' = d/g``: a tap exists only if ``(r + pad) % g == 0``, and
    then ``kh = kh0(r) + s'*j`` with ``kh0(r) = ((r + pad) % s / g) * inverse(d' mod s') mod s'`` and
    ``ih = q + ((r + pad) - kh*d) / s`` (an exact division).  So ``conv`` is computed per phase,
    ``conv[n, co, rh_phase, rw_phase, q_h, q_w]``, reducing over ``j < ceil(k/s')`` only, and within a
    phase the taps are the same for every pixel: a dense sub-convolution.  ``output`` interleaves the
    phases back into NCHW and adds the bias.

    An NHWC request (channels_last input and output; the weight ``[ci, kh, kw, co/groups]``, the
    channels_last bytes of torch's ``[ci, co/groups, kh, kw]``) stores ``conv`` as ``[n, rh_phase,
    rw_phase, q_h, q_w, co]`` and reduces over ``rh, rw, rc``, the channels innermost as the input's.
    With ``packing`` the weight argument is packed per phase (:class:`PhaseTaps`, :func:`pack_weight`).
    """
    spec, input_shape, dtype, layout = request.spec, request.input_shape, request.dtype, request.layout
    x, w, b = _placeholders(spec, input_shape, dtype, packing, layout)
    acc = ACCUMULATE_DTYPE[dtype]
    n, _, h, wd = input_shape
    _, _, oh_size, ow_size = request.output_shape
    cpg, opg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    (sh, sw), (dh, dw), (kh_size, kw_size) = spec.stride, spec.dilation, spec.kernel_size
    pt, _, pl, _ = spec.pads

    gh, sh_red, inv_h, nh = _phase_taps(sh, dh, kh_size)
    gw, sw_red, inv_w, nw = _phase_taps(sw, dw, kw_size)
    qh_size, qw_size = -(-oh_size // sh), -(-ow_size // sw)

    def row_offset(r, pad, stride, kernel_index, dil):
        """Input row = q + row_offset: f = q*s + r + pad and f - kh*d is a multiple of s."""
        r_pad = r + pad
        return r_pad // stride + (r_pad % stride - kernel_index * dil) // stride if isinstance(r, int) else \
            tirx.floordiv(r_pad, stride) + tirx.floordiv(tirx.floormod(r_pad, stride) - kernel_index * dil, stride)

    def margins(stride, pad, dil, g, s_red, inv, taps, q_size, size):
        """Zero rows needed before/after the input so that every tap of every phase reads in bounds
        (taps that fall outside the kernel read zero weights, so they need in-bounds inputs too)."""
        offsets = [row_offset(r, pad, stride, _kernel_tap((r + pad) % stride, j, g, s_red, inv), dil)
                   for r in range(stride) for j in range(taps)]
        return max(0, -min(offsets)), max(0, q_size - 1 + max(offsets) - (size - 1))

    mt, mb = margins(sh, pt, dh, gh, sh_red, inv_h, nh, qh_size, h)
    ml, mr = margins(sw, pl, dw, gw, sw_red, inv_w, nw, qw_size, wd)
    xp = x
    if mt or mb or ml or mr:
        xp = _zero_pad(x, mt, mb, ml, mr)
    # Taps past the kernel's edge (when s' does not divide k) read zero weights instead of being tested.
    khp, kwp = sh_red * nh, sw_red * nw
    wp = w
    if packing is None and (khp, kwp) != (kh_size, kw_size):
        wp = te.compute((*spec.weight_shape[:2], khp, kwp),
                        lambda i, o, r, c: _tap_or_zero(w, i, o, r, c, spec.kernel_size), name="weight_pad")
    rc = te.reduce_axis((0, cpg), name="rc")
    rh = te.reduce_axis((0, nh), name="rh")
    rw = te.reduce_axis((0, nw), name="rw")

    def body(nn_, co, ph, pw, qh, qw):
        rph, rpw = tirx.floormod(ph + pt, sh), tirx.floormod(pw + pl, sw)
        kh, kw = _kernel_tap(rph, rh, gh, sh_red, inv_h), _kernel_tap(rpw, rw, gw, sw_red, inv_w)
        ih = qh + row_offset(ph, pt, sh, kh, dh) + mt
        iw = qw + row_offset(pw, pl, sw, kw, dw) + ml
        ci = co // opg * cpg + rc
        if packing is None:
            weight = wp[ci, tirx.floormod(co, opg), kh, kw]
        else:               # the phase's GEMM row: (ph, pw, group, co in group, K)
            k = (rc, rh, rw) if packing.layout == NCHW else (rh, rw, rc)
            weight = w[ph, pw, co // opg, tirx.floormod(co, opg), *k]
        prod = _operand(xp[nn_, ci, ih, iw], acc, request.tf32) * _operand(weight, acc, request.tf32)
        # A phase that no tap reaches (possible only when gcd(s, d) > 1) stays zero.
        conds = ([tirx.floormod(rph, gh) == 0] if gh > 1 else []) + \
                ([tirx.floormod(rpw, gw) == 0] if gw > 1 else [])
        if conds:
            prod = tirx.if_then_else(tirx.all(*conds), prod, tirx.const(0, acc))
        return te.sum(prod, axis=[rc, rh, rw] if layout == NCHW else [rh, rw, rc])

    if layout == NCHW:
        conv = te.compute((n, spec.out_channels, sh, sw, qh_size, qw_size), body, name="conv")
        interleaved = te.compute((n, spec.out_channels, oh_size, ow_size), lambda b_, co, oh, ow: conv[
            b_, co, oh % sh, ow % sw, oh // sh, ow // sw], name="interleave")
    else:
        conv = te.compute((n, sh, sw, qh_size, qw_size, spec.out_channels),
                          lambda n_, ph, pw, qh, qw, co: body(n_, co, ph, pw, qh, qw), name="conv")
        interleaved = _compute((n, spec.out_channels, oh_size, ow_size), lambda b_, co, oh, ow: conv[
            b_, oh % sh, ow % sw, oh // sh, ow // sw, co], "interleave", layout)
    return _finish(request, x, w, b, interleaved)


def weight_grad(request: KernelRequest) -> List[te.Tensor]:
    """The gradient of the layer's weight: ``[input, grad_output, grad_weight]`` (torch's shapes).

    For Conv2d, ``grad_w[co, ci, r, s] = sum_{n, oh, ow} pad(x)[n, g*cpg + ci, oh*sh + r*dh,
    ow*sw + s*dw] * gy[n, co, oh, ow]`` with ``g = co // (out_channels / groups)``: the forward's
    products, summed over pixels instead of taps (:func:`_conv_weight_grad`).

    ConvTranspose2d is the adjoint of the Conv2d ``C_w`` with the same weight whose input has the
    transposed layer's output channels (``spec.input_grad``): ``<T_w(x), z> = <x, C_w(z)>`` for
    every ``z``.  ``T`` is linear in ``w``, so ``<gy, T_dw(x)> = <C_dw(gy), x> = sum_{n, co, oh, ow}
    x[n, co, oh, ow] * sum_{ci, r, s} pad(gy)[n, g*cpg + ci, oh*sh + r*dh, ow*sw + s*dw] dw[co, ci, r, s]``:
    the same family with the roles swapped, data := ``gy``, cotangent := ``x``, laid out as
    ``C_w``'s weight ``[in_channels, out_channels/groups, kh, kw]``, which is torch's transposed
    weight.  The pixel sums run over ``x``'s rows and columns: ``C_w`` on ``gy`` has ``op // s``
    more (``spec.input_grad``), which no tap of the forward reaches.
    """
    spec, dtype = request.spec, request.dtype
    x = te.placeholder(request.input_shape, dtype, name="input")
    gy = te.placeholder(request.output_shape, dtype, name="grad_output")
    if spec.transposed:
        conv_spec, data, cotangent = spec.input_grad(request.input_shape, request.output_padding).spec, gy, x
    else:
        conv_spec, data, cotangent = spec, x, gy
    grad = _conv_weight_grad(conv_spec, data, cotangent, ACCUMULATE_DTYPE[dtype])
    out = te.compute(grad.shape, lambda co, ci, r, c: grad[co, ci, r, c].astype(dtype), name="output")
    return [x, gy, out]


def _conv_weight_grad(spec: ConvSpec, data: te.Tensor, cotangent: te.Tensor, acc: str) -> te.Tensor:
    """Stage ``conv``: Conv2d's weight gradient, reduced over ``rn, roh, row`` (the cotangent's
    images, rows and columns) in ``acc``; ``data`` is read through the padding (stage ``pad``)."""
    n, _, oh_size, ow_size = (int(d) for d in cotangent.shape)
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    cpg, opg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    p = _pad(data, spec)
    rn = te.reduce_axis((0, n), name="rn")
    roh = te.reduce_axis((0, oh_size), name="roh")
    row = te.reduce_axis((0, ow_size), name="row")
    return te.compute(spec.weight_shape, lambda co, ci, r, c: te.sum(
        p[rn, co // opg * cpg + ci, roh * sh + r * dh, row * sw + c * dw].astype(acc)
        * cotangent[rn, co, roh, row].astype(acc), axis=[rn, roh, row]), name="conv")


def _fold_candidates(mode: str, before: int, after: int, size: int):
    """The padded positions ``before + offset(i)`` that ``padding_mode`` maps to source ``i`` of an
    axis of ``size``, as ``(offset(i), condition(i) or None)``; each position appears once.

    reflect: ``i``, ``-i`` (for ``i > 0``) and ``2(size-1) - i`` (for ``i < size-1``): pads are
    below ``size``, so one reflection per side.  circular: ``i`` and ``i -+ size`` (pads at most
    ``size``).  replicate: ``i``, and every left pad for ``i = 0``, every right pad for ``i = size-1``.
    zeros (a crop): ``i``.  Positions outside the padded axis are dropped by the caller."""
    direct = [(lambda i: i, None)]
    if mode == "reflect":
        return direct + [(lambda i: -i, lambda i: i > 0),
                         (lambda i: 2 * (size - 1) - i, lambda i: i < size - 1)]
    if mode == "circular":
        return direct + [(lambda i: i - size, None), (lambda i: i + size, None)]
    if mode == "replicate":
        left = [(lambda i, k=k: -k, lambda i: i == 0) for k in range(1, before + 1)]
        right = [(lambda i, k=k: size - 1 + k, lambda i: i == size - 1) for k in range(1, after + 1)]
        return direct + left + right
    return direct


def _fold_axis(source: te.Tensor, axis: int, mode: str, before: int, after: int, size: int, acc: str,
               name: str) -> te.Tensor:
    """``source`` with padded axis ``axis`` folded onto its ``size`` source positions (sums in ``acc``)."""
    padded = int(source.shape[axis])
    shape = tuple(size if a == axis else int(d) for a, d in enumerate(source.shape))

    def value(*index):
        i = index[axis]
        total = tirx.const(0, acc)
        for k, (offset, condition) in enumerate(_fold_candidates(mode, before, after, size)):
            p = before + offset(i)
            read = list(index)
            read[axis] = tirx.max(tirx.min(p, padded - 1), 0)
            term = source[tuple(read)].astype(acc)
            checks = [condition(i)] if condition else []
            if k or before < 0 or after < 0:           # the direct position is inside unless cropped
                checks.append(tirx.all(p >= 0, p < padded))
            total = total + (tirx.if_then_else(tirx.all(*checks), term, tirx.const(0, acc)) if checks else term)
        return total
    return te.compute(shape, value, name=name)


def pad_grad(request: KernelRequest) -> List[te.Tensor]:
    """The gradient of a padded input folded back onto the input: ``[grad_padded, grad_input]``.

    ``spec.input_grad`` says which padding the adjoint's output carries; each input position sums
    the few padded positions its padding mode maps to it (:func:`_fold_candidates`), columns first
    (stage ``fold_w``), then rows (stage ``output``, one rounding to the layer's dtype).
    """
    adjoint = request.spec.input_grad(request.input_shape, request.output_padding)
    n, c, h, w = request.input_shape
    pt, pb, pl, pr = adjoint.pads
    acc, mode = ACCUMULATE_DTYPE[request.dtype], adjoint.padding_mode
    g = te.placeholder((n, c, h + pt + pb, w + pl + pr), request.dtype, name="grad_padded")
    columns = _fold_axis(g, 3, mode, pl, pr, w, acc, "fold_w")
    rows = _fold_axis(columns, 2, mode, pt, pb, h, acc, "fold_h")
    out = te.compute(rows.shape, lambda *i: rows(*i).astype(request.dtype), name="output")
    return [g, out]


def bias_grad(shape: Sequence[int], dtype: str) -> List[te.Tensor]:
    """``[grad_output, grad_bias]``: ``grad_bias[c] = sum_{n, h, w} grad_output[n, c, h, w]`` (stage
    ``sum`` in the accumulation type, reduce axes ``rn, rh, rw``; stage ``output`` rounds)."""
    n, c, h, w = (int(d) for d in shape)
    gy = te.placeholder((n, c, h, w), dtype, name="grad_output")
    rn, rh, rw = te.reduce_axis((0, n), name="rn"), te.reduce_axis((0, h), name="rh"), te.reduce_axis((0, w), name="rw")
    acc = ACCUMULATE_DTYPE[dtype]
    total = te.compute((c,), lambda k: te.sum(gy[rn, k, rh, rw].astype(acc), axis=[rn, rh, rw]), name="sum")
    return [gy, te.compute((c,), lambda k: total[k].astype(dtype), name="output")]


def define(request: KernelRequest, weight_block=None) -> List[te.Tensor]:
    """The TE tensors of ``request``, by operator (``weight_block``: the weight argument is
    pre-packed by :func:`pack_weight`, in blocks of output channels for the forward conv2d, by
    :class:`PhaseTaps` for the forward conv_transpose2d, :class:`ChannelsLastWeight` for an NCHW conv2d)."""
    if request.operator == FORWARD and request.spec.transposed and isinstance(weight_block, PhaseTaps):
        if weight_block.layout != request.layout:
            raise ValueError(f"{weight_block} is not the packing of a {request.layout} kernel")
        return conv_transpose2d(request, weight_block)
    if request.operator != FORWARD or request.spec.transposed:
        if weight_block:
            raise ValueError("pre-packed weights are defined for the forward operators only "
                             "(blocks of channels for conv2d, PhaseTaps for conv_transpose2d)")
        if request.operator == WEIGHT_GRAD:
            return weight_grad(request)
        if request.operator == PAD_GRAD:
            return pad_grad(request)
        return conv_transpose2d(request)
    if isinstance(weight_block, PhaseTaps):
        raise ValueError("PhaseTaps packs a transposed layer's weight")
    if isinstance(weight_block, ChannelsLastWeight) and request.layout != NCHW:
        raise ValueError("an NHWC kernel reads [co, kh, kw, ci/groups] weights already (no ChannelsLastWeight)")
    return conv2d(request, weight_block)

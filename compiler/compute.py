"""Tensor-expression definitions of conv2d and conv_transpose2d (NCHW), one per operator family.

Nothing here knows about targets or schedules.  Every function returns the TE tensors
``[input, weight, (bias,) output]`` in kernel-argument order; stage names are fixed so that
schedules can find them: ``pad`` (conv2d only, the padding mode as an index map), ``conv``
(the reduction, in the accumulation dtype) and ``output`` (bias add and cast to the layer's dtype).
Reduce axes are ``rc, rh, rw``.
"""
from __future__ import annotations

import math
from typing import List, Sequence

from tvm import te, tirx

from .spec import ConvSpec

#: Half-precision types accumulate in float32 (as cuDNN / oneDNN do); the rest in their own type.
ACCUMULATE_DTYPE = {"float16": "float32", "bfloat16": "float32", "float32": "float32",
                    "float64": "float64"}


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


def _pad(x: te.Tensor, spec: ConvSpec) -> te.Tensor:
    n, c, h, w = (int(d) for d in x.shape)
    pt, pb, pl, pr = spec.pads
    if not any(spec.pads):
        return x                      # nothing to pad: the reduction reads the input directly
    shape = (n, c, h + pt + pb, w + pl + pr)
    if spec.padding_mode == "zeros":
        return te.compute(shape, lambda b, ch, i, j: tirx.if_then_else(
            tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl),
            x[b, ch, i - pt, j - pl], tirx.const(0, x.dtype)), name="pad")
    return te.compute(shape, lambda b, ch, i, j: x[
        b, ch, _pad_index(i, pt, h, spec.padding_mode), _pad_index(j, pl, w, spec.padding_mode)],
        name="pad")


def _epilogue(conv: te.Tensor, bias, dtype: str) -> te.Tensor:
    """Bias add in the accumulation type, then one rounding to the layer's dtype."""
    if bias is None:
        return te.compute(conv.shape, lambda n, k, i, j: conv[n, k, i, j].astype(dtype), name="output")
    return te.compute(conv.shape, lambda n, k, i, j: (
        conv[n, k, i, j] + bias[k].astype(conv.dtype)).astype(dtype), name="output")


def _placeholders(spec: ConvSpec, input_shape: Sequence[int], dtype: str):
    x = te.placeholder(tuple(input_shape), dtype, name="input")
    w = te.placeholder(spec.weight_shape, dtype, name="weight")
    b = te.placeholder((spec.out_channels,), dtype, name="bias") if spec.bias else None
    return x, w, b


def conv2d(spec: ConvSpec, input_shape: Sequence[int], dtype: str) -> List[te.Tensor]:
    """Direct convolution, every variant of ``torch.nn.Conv2d``.

    ``output[n, co, oh, ow] = bias[co] + sum_{rc, rh, rw} pad[n, g*cpg + rc, oh*sh + rh*dh, ow*sw + rw*dw]
    * weight[co, rc, rh, rw]`` with ``g = co // (out_channels / groups)``, ``cpg = in_channels / groups``.
    """
    x, w, b = _placeholders(spec, input_shape, dtype)
    acc = ACCUMULATE_DTYPE[dtype]
    _, _, oh_size, ow_size = spec.output_shape(input_shape)
    (sh, sw), (dh, dw), (kh, kw) = spec.stride, spec.dilation, spec.kernel_size
    cpg, opg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    p = _pad(x, spec)
    rc = te.reduce_axis((0, cpg), name="rc")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    conv = te.compute(
        (input_shape[0], spec.out_channels, oh_size, ow_size),
        lambda n, co, oh, ow: te.sum(
            p[n, co // opg * cpg + rc, oh * sh + rh * dh, ow * sw + rw * dw].astype(acc)
            * w[co, rc, rh, rw].astype(acc), axis=[rc, rh, rw]),
        name="conv")
    out = _epilogue(conv, b, dtype)
    return [t for t in (x, w, b, out) if t is not None]


def conv_transpose2d(spec: ConvSpec, input_shape: Sequence[int], dtype: str,
                     output_padding=None) -> List[te.Tensor]:
    """Transposed convolution as a gather over the taps that really reach each output pixel.

    Output pixel ``f = oh + pad`` (position in the uncropped output) receives input row ``ih`` through
    tap ``kh`` iff ``f = ih*s + kh*d``.  With ``g = gcd(s, d)``, ``s' = s/g``, ``d' = d/g`` that needs
    ``f % g == 0`` and ``kh = kh0(f) + s'*j`` where ``kh0 = (f/g) * inverse(d' mod s') mod s'``.  Reducing
    over ``j < ceil(k/s')`` instead of over every ``kh`` skips the zeros that the textbook
    "dilate the input with stride-1 zeros" formulation multiplies, so no multiply-add is spent on them.
    """
    x, w, b = _placeholders(spec, input_shape, dtype)
    acc = ACCUMULATE_DTYPE[dtype]
    n, _, h, wd = input_shape
    _, _, oh_size, ow_size = spec.output_shape(input_shape, output_padding)
    cpg, opg = spec.in_channels // spec.groups, spec.out_channels // spec.groups
    pt, _, pl, _ = spec.pads

    def taps(stride: int, dil: int, k: int):
        g = math.gcd(stride, dil)
        s_red = stride // g
        inv = pow(dil // g, -1, s_red) if s_red > 1 else 0
        return g, s_red, inv, -(-k // s_red)

    gh, sh_red, inv_h, nh = taps(spec.stride[0], spec.dilation[0], spec.kernel_size[0])
    gw, sw_red, inv_w, nw = taps(spec.stride[1], spec.dilation[1], spec.kernel_size[1])
    rc = te.reduce_axis((0, cpg), name="rc")
    rh = te.reduce_axis((0, nh), name="rh")
    rw = te.reduce_axis((0, nw), name="rw")

    def tap(f, j, g, s_red, inv):
        return tirx.floormod(tirx.floordiv(f, g) * inv, s_red) + s_red * j if s_red > 1 else j

    def body(nn_, co, oh, ow):
        fh, fw = oh + pt, ow + pl
        kh = tap(fh, rh, gh, sh_red, inv_h)
        kw = tap(fw, rw, gw, sw_red, inv_w)
        ih = tirx.floordiv(fh - kh * spec.dilation[0], spec.stride[0])
        iw = tirx.floordiv(fw - kw * spec.dilation[1], spec.stride[1])
        conds = [kh < spec.kernel_size[0], kw < spec.kernel_size[1], ih >= 0, ih < h, iw >= 0, iw < wd]
        if gh > 1:
            conds.append(tirx.floormod(fh, gh) == 0)
        if gw > 1:
            conds.append(tirx.floormod(fw, gw) == 0)
        ci = co // opg * cpg + rc
        # Clamped indices keep every load in bounds even where a vectorised select evaluates both sides.
        ihc, iwc = tirx.max(tirx.min(ih, h - 1), 0), tirx.max(tirx.min(iw, wd - 1), 0)
        khc, kwc = tirx.min(kh, spec.kernel_size[0] - 1), tirx.min(kw, spec.kernel_size[1] - 1)
        prod = x[nn_, ci, ihc, iwc].astype(acc) * w[ci, tirx.floormod(co, opg), khc, kwc].astype(acc)
        return te.sum(tirx.if_then_else(tirx.all(*conds), prod, tirx.const(0, acc)), axis=[rc, rh, rw])

    conv = te.compute((n, spec.out_channels, oh_size, ow_size), body, name="conv")
    out = _epilogue(conv, b, dtype)
    return [t for t in (x, w, b, out) if t is not None]


def define(spec: ConvSpec, input_shape: Sequence[int], dtype: str, output_padding=None) -> List[te.Tensor]:
    """The TE tensors of ``spec`` applied to a batched NCHW ``input_shape``."""
    if spec.transposed:
        return conv_transpose2d(spec, input_shape, dtype, output_padding)
    return conv2d(spec, input_shape, dtype)

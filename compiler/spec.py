"""Convolution layer specifications: every torch argument normalised once, plus all shape arithmetic.

This module is pure Python (no TVM): it is the single home of output-size rules, torch's 'same'
padding split, ``output_size -> output_padding`` and every validation that must happen before a
kernel runs.  Error types and wording follow ``torch.nn.Conv2d`` / ``torch.nn.ConvTranspose2d``
as observed on torch 2.13 (behaviour wins over the documentation).
"""
from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("same", "valid")

IntPair = Tuple[int, int]


def pair(value) -> tuple:
    """torch's ``_pair``: an int is repeated, an iterable is taken as it is (even of the wrong length)."""
    if isinstance(value, collections.abc.Iterable):
        return tuple(value)
    return (value, value)


def _check_ints(name: str, values: Sequence) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be a tuple of ints, but got {tuple(values)!r}")


def _check_rank2(name: str, values: tuple) -> None:
    if len(values) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(values)}")


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution or transposed convolution layer, NCHW, as torch describes it.

    ``padding`` is the torch attribute as given (an int pair or 'same'/'valid');
    ``pads`` is the resolved amount as ``(top, bottom, left, right)``.
    """

    transposed: bool
    in_channels: int
    out_channels: int
    kernel_size: IntPair
    stride: IntPair
    padding: Union[str, IntPair]
    dilation: IntPair
    groups: int
    bias: bool
    padding_mode: str
    output_padding: IntPair = (0, 0)

    # ----------------------------------------------------------------- construction
    @staticmethod
    def conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
               groups=1, bias=True, padding_mode="zeros") -> "ConvSpec":
        kernel_size, stride, dilation = pair(kernel_size), pair(stride), pair(dilation)
        padding = padding if isinstance(padding, str) else pair(padding)
        spec = ConvSpec(False, in_channels, out_channels, kernel_size, stride, padding, dilation,
                        groups, bool(bias), padding_mode)
        spec._check_construction()
        return spec

    @staticmethod
    def conv_transpose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
                         output_padding=0, groups=1, bias=True, dilation=1,
                         padding_mode="zeros") -> "ConvSpec":
        if padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose2d')
        spec = ConvSpec(True, in_channels, out_channels, pair(kernel_size), pair(stride), pair(padding),
                        pair(dilation), groups, bool(bias), padding_mode, pair(output_padding))
        spec._check_construction()
        return spec

    def _check_construction(self) -> None:
        """The ValueErrors torch raises in ``_ConvNd.__init__``."""
        for name in ("in_channels", "out_channels", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, but got {v!r}")
        if self.groups <= 0:
            raise ValueError("groups must be a positive integer")
        if self.in_channels % self.groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if self.out_channels % self.groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if isinstance(self.padding, str):
            if self.padding not in PADDING_STRINGS:
                raise ValueError(f"Invalid padding string {self.padding!r}, should be one of "
                                 f"{set(PADDING_STRINGS)}")
            if self.padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {set(PADDING_MODES)}, but got "
                             f"padding_mode='{self.padding_mode}'")
        _check_ints("kernel_size", self.kernel_size)
        _check_ints("stride", self.stride)
        _check_ints("dilation", self.dilation)
        if not isinstance(self.padding, str):
            _check_ints("padding", self.padding)
        _check_ints("output_padding", self.output_padding)
        if any(k < 0 for k in self.kernel_size):
            raise RuntimeError(f"Trying to create tensor with negative dimension: kernel_size="
                               f"{self.kernel_size}")

    # ----------------------------------------------------------------- derived values
    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        """torch's weight shape: (out, in/groups, kh, kw), or (in, out/groups, kh, kw) when transposed."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def pads(self) -> Tuple[int, int, int, int]:
        """Resolved padding (top, bottom, left, right); 'same' splits an odd total as torch does."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            out = []
            for d, k in zip(self.dilation, self.kernel_size):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def forward_key(self) -> tuple:
        """What determines the generated kernel (everything but the weights' values)."""
        return (self.transposed, self.in_channels, self.out_channels, self.kernel_size, self.stride,
                self.pads, self.dilation, self.groups, self.bias, self.padding_mode)

    # ----------------------------------------------------------------- forward-time checks
    def _check_forward_args(self) -> None:
        """Argument errors torch only raises when the layer is called (RuntimeError)."""
        _check_rank2("stride", self.stride)
        if not isinstance(self.padding, str):
            _check_rank2("padding", self.padding)
        _check_rank2("dilation", self.dilation)
        if len(self.kernel_size) != 2:
            raise RuntimeError(f"expected kernel_size to have 2 values, but got {list(self.kernel_size)}")
        if any(s <= 0 for s in self.stride):
            raise RuntimeError(f"non-positive stride is not supported, got stride={list(self.stride)}")
        if any(d <= 0 for d in self.dilation):
            raise RuntimeError(f"dilation should be greater than zero, but got {list(self.dilation)}")
        if any(k <= 0 for k in self.kernel_size):
            raise RuntimeError("kernel size should be greater than zero, but got kernel_height: "
                               f"{self.kernel_size[0]} kernel_width: {self.kernel_size[1]}")
        if self.padding_mode == "zeros" and any(p < 0 for p in self.pads):
            raise RuntimeError(f"negative padding is not supported, got padding={self.padding}")
        if self.transposed:
            if len(self.output_padding) != 2:
                _check_rank2("output_padding", self.output_padding)
            if any(p < 0 for p in self.output_padding):
                raise RuntimeError("negative output_padding is not supported, got output_padding="
                                   f"{list(self.output_padding)}")
        rows = self.in_channels if self.transposed else self.out_channels     # the weight's dimension 0
        if rows % self.groups:
            raise RuntimeError(f"Given groups={self.groups}, expected weight to be divisible by {self.groups} "
                               f"at dimension 0, but got weight of size [{list(self.weight_shape)}] instead")
        if self.out_channels == 0 or (self.transposed and self.in_channels == 0):
            raise RuntimeError(f"Given groups={self.groups}, expected weight to be at least 1 at "
                               f"dimension 0, but got weight of size {list(self.weight_shape)} instead")

    def output_shape(self, input_shape: Sequence[int], output_padding: Optional[IntPair] = None
                     ) -> Tuple[int, int, int, int]:
        """Validate a batched NCHW input shape and return the output shape (RuntimeError as torch)."""
        self._check_forward_args()
        n, c, h, w = input_shape
        kind = "transposed=1" if self.transposed else f"groups={self.groups}"
        if c != self.in_channels:
            raise RuntimeError(
                f"Given {kind}, weight of size {list(self.weight_shape)}, expected input"
                f"{list(input_shape)} to have {self.in_channels} channels, but got {c} channels instead")
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        if self.transposed:
            oph, opw = self.output_padding if output_padding is None else output_padding
            if not (oph < sh or oph < dh) or not (opw < sw or opw < dw):
                raise RuntimeError(
                    "output padding must be smaller than either stride or dilation, but got "
                    f"output_padding_height: {oph} output_padding_width: {opw} stride_height: {sh} "
                    f"stride_width: {sw} dilation_height: {dh} dilation_width: {dw}")
            if n != 0 and (h == 0 or w == 0):
                raise RuntimeError("Only zero batch or zero channel inputs are supported, but got "
                                   f"input shape: {list(input_shape)}")
            pt, _, pl, _ = self.pads
            oh = (h - 1) * sh - 2 * pt + dh * (kh - 1) + oph + 1
            ow = (w - 1) * sw - 2 * pl + dw * (kw - 1) + opw + 1
            # torch refuses a size of 0 too, except on one backend path (4x4 kernels) that returns an
            # empty tensor; we refuse it consistently.
            if oh <= 0 or ow <= 0:
                raise RuntimeError(f"Given input size per channel: ({h} x {w}). Calculated output size "
                                   f"per channel: ({oh} x {ow}). Output size is too small")
            return (n, self.out_channels, oh, ow)
        self._check_padding_fits(input_shape)
        pt, pb, pl, pr = self.pads
        hp, wp = h + pt + pb, w + pl + pr
        ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if hp < ekh or wp < ekw:
            raise RuntimeError(f"Calculated padded input size per channel: ({hp} x {wp}). Kernel size: "
                               f"({ekh} x {ekw}). Kernel size can't be greater than actual input size")
        # torch 2.13 returns no channels at all when the input has none (in_channels == 0)
        channels = self.out_channels if c else 0
        return (n, channels, (hp - ekh) // sh + 1, (wp - ekw) // sw + 1)

    def _check_padding_fits(self, input_shape: Sequence[int]) -> None:
        """reflect needs pad < size, circular pad <= size, replicate a non-empty input (as F.pad)."""
        mode = self.padding_mode
        if mode == "zeros":
            return
        pt, pb, pl, pr = self.pads
        for dim, size, (before, after) in ((2, input_shape[2], (pt, pb)), (3, input_shape[3], (pl, pr))):
            if mode == "reflect" and (before >= size or after >= size):
                raise RuntimeError(
                    f"Padding size should be less than the corresponding input dimension, but got: "
                    f"padding ({before}, {after}) at dimension {dim} of input {list(input_shape)}")
            if mode == "circular" and (before > size or after > size):
                raise RuntimeError(f"Padding value causes wrapping around more than once: padding "
                                   f"({before}, {after}) at dimension {dim} of input {list(input_shape)}")
            if mode == "replicate" and size == 0:
                raise RuntimeError("Expected 3D or 4D (batch mode) tensor with possibly 0 batch size and "
                                   f"other non-zero dimensions for input, but got: {list(input_shape)}")

    def output_padding_for(self, input_shape: Sequence[int], output_size: Sequence[int]) -> IntPair:
        """torch's ``_output_padding``: the output_padding that yields ``output_size`` (ValueError if none)."""
        has_batch = len(input_shape) == 4
        non_spatial = 2 if has_batch else 1
        output_size = [int(s) for s in output_size]
        if len(output_size) == non_spatial + 2:
            output_size = output_size[non_spatial:]
        if len(output_size) != 2:
            raise ValueError(f"ConvTranspose2D: for {len(input_shape)}D input, output_size must have 2 "
                             f"or {non_spatial + 2} elements (got {len(output_size)})")
        spatial = list(input_shape[non_spatial:])
        pt, _, pl, _ = self.pads
        min_sizes = [(size - 1) * s - 2 * p + d * (k - 1) + 1 for size, s, p, d, k in
                     zip(spatial, self.stride, (pt, pl), self.dilation, self.kernel_size)]
        max_sizes = [m + s - 1 for m, s in zip(min_sizes, self.stride)]
        for size, lo, hi in zip(output_size, min_sizes, max_sizes):
            if size < lo or size > hi:
                raise ValueError(f"requested an output size of {output_size}, but valid sizes range from "
                                 f"{min_sizes} to {max_sizes} (for an input of torch.Size({spatial}))")
        return tuple(size - lo for size, lo in zip(output_size, min_sizes))

    def input_grad(self, input_shape: Sequence[int], output_padding: Optional[IntPair] = None) -> "Adjoint":
        """The layer whose forward maps ``grad_output`` to the gradient of the input (its adjoint).

        Conv2d's adjoint is a ConvTranspose2d with the same weight, stride, dilation and groups.
        Its output padding recovers the input size: the transposed form of padding ``p`` gives
        ``L - 2p + op`` rows, ``L = (out - 1) s + d (k - 1) + 1``, so ``op = in - L + 2p``, which
        torch accepts only in ``[0, max(s, d))``.  Where it does not (asymmetric 'same' pads) or the
        padding is not zeros, the adjoint is the unpadded transposed form (``op = in_padded - L``,
        always below ``s``): its output is the gradient of the *padded* input, folded back through
        the padding's index map (``pads``, ``padding_mode``).  ConvTranspose2d's adjoint is a Conv2d of
        padding ``p``; it yields ``in + op // s`` rows (``op >= s`` happens with ``d > s``), the
        extra rows reached by no tap: ``pads`` crops them."""
        n, _, h, w = input_shape
        out_shape = self.output_shape(input_shape, output_padding)
        kh, kw = self.kernel_size
        if self.transposed:
            oph, opw = self.output_padding if output_padding is None else output_padding
            ph, pw = self.pads[0], self.pads[2]
            adjoint = ConvSpec.conv2d(self.out_channels, self.in_channels, (kh, kw), self.stride, (ph, pw),
                                      self.dilation, self.groups, bias=False)
            extra = (oph // self.stride[0], opw // self.stride[1])
            return Adjoint(adjoint, None, (0, extra[0], 0, extra[1]), "zeros")
        pt, pb, pl, pr = self.pads
        spans = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in
                 zip(out_shape[2:], self.stride, self.dilation, self.kernel_size)]
        direct = tuple(size - span + 2 * p for size, span, p in zip((h, w), spans, (pt, pl)))
        if self.padding_mode == "zeros" and all(0 <= op < max(s, d) for op, s, d in
                                                zip(direct, self.stride, self.dilation)):
            padding, output_padding, pads = (pt, pl), direct, (0, 0, 0, 0)
        else:
            padded = (h + pt + pb, w + pl + pr)
            padding, output_padding, pads = (0, 0), tuple(p - span for p, span in zip(padded, spans)), self.pads
        adjoint = ConvSpec.conv_transpose2d(self.out_channels, self.in_channels, (kh, kw), self.stride, padding,
                                            output_padding, self.groups, False, self.dilation)
        return Adjoint(adjoint, output_padding, pads, self.padding_mode if any(pads) else "zeros")

    @property
    def class_name(self) -> str:
        return "ConvTranspose2d" if self.transposed else "Conv2d"

    def constructor_args(self) -> dict:
        """Every constructor argument of the torch class, by name, in its signature's order."""
        args = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding)}
        if self.transposed:
            args.update(output_padding=list(self.output_padding), groups=self.groups, bias=self.bias,
                        dilation=list(self.dilation))
        else:
            args.update(dilation=list(self.dilation), groups=self.groups, bias=self.bias)
        args["padding_mode"] = self.padding_mode
        return args

    def describe(self) -> str:
        """The layer as Python source, e.g. ``Conv2d(64, 64, kernel_size=[3, 3], ...)``."""
        args = self.constructor_args()
        head = f"{args.pop('in_channels')}, {args.pop('out_channels')}"
        return f"{self.class_name}({head}, " + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"

    def flops_for_input(self, input_shape: Sequence[int]) -> int:
        """2 x useful multiply-adds for one call on ``input_shape`` (N, C, H, W)."""
        n, c, h, w = input_shape
        kh, kw = self.kernel_size
        if self.transposed:
            return 2 * n * c * h * w * (self.out_channels // self.groups) * kh * kw
        _, co, oh, ow = self.output_shape(input_shape)
        return 2 * n * co * oh * ow * (c // self.groups) * kh * kw


@dataclass(frozen=True)
class Adjoint:
    """How the gradient of a layer's input is computed (:meth:`ConvSpec.input_grad`): the layer
    ``spec`` on ``grad_output`` (with ``output_padding`` when it is transposed), whose output is the
    gradient of the input padded by ``pads`` (top, bottom, left, right) in ``padding_mode``; the
    positions of that padded gradient that map to one input position are summed into it."""

    spec: ConvSpec
    output_padding: Optional[IntPair]
    pads: Tuple[int, int, int, int]
    padding_mode: str

    @property
    def folds(self) -> bool:
        """The adjoint's output is a padded gradient (a fold back to the input is needed)."""
        return any(self.pads)


def strides_like_channels_last(sizes: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether a 4-d tensor's strides read as channels_last: c10's ``is_channels_last_strides_2d``
    (what ``Tensor.suggest_memory_format`` asks), ambiguous layouts (a trivial channel stride, N111
    shapes whose size-1 strides tie) falling back to NCHW as torch does."""
    if len(sizes) != 4 or strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def output_channels_last(input_sizes: Sequence[int], input_strides: Sequence[int], weight_sizes: Sequence[int],
                         weight_strides: Sequence[int], cuda: bool = False, float64: bool = False) -> bool:
    """torch's memory format for a convolution's output (batched input): channels_last when the
    input or the weight reads as channels_last (``mkldnn_conv_use_channels_last`` and
    ``thnn_conv_use_channels_last`` on the CPU, ``cudnn_conv_suggest_memory_format`` on CUDA,
    which keeps float64 in NCHW), else NCHW."""
    if cuda and float64:
        return False
    return strides_like_channels_last(input_sizes, input_strides) or \
        strides_like_channels_last(weight_sizes, weight_strides)

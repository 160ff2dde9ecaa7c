"""A kernel request: everything that determines one generated kernel, as one typed, hashable value.

Compute, the schedule rules, the record lookup, the kernel cache, export and tuning all take a
:class:`KernelRequest` instead of loose ``(spec, input_shape, dtype, output_padding, ...)`` arguments,
so a new dimension of the request (an epilogue, a layout, another operator) is added in one place.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional, Tuple

from .spec import ConvSpec, IntPair

#: Activations an epilogue can apply, by the name of their torch function (``gelu`` is the exact,
#: erf form, ``gelu_tanh`` ``F.gelu(approximate='tanh')``).
ACTIVATIONS = ("relu", "relu6", "silu", "sigmoid", "hardswish", "hardsigmoid", "gelu", "gelu_tanh", "tanh")
#: The epilogue step that adds a residual tensor of the output's shape and dtype.
ADD = "add"
#: Memory layouts of a kernel's activations (input, residual, output): torch's default ``NCHW``, or
#: ``NHWC``, the bytes of a ``torch.channels_last`` tensor, read in place with the weight as
#: ``[co, kh, kw, ci/groups]`` (a channels_last weight's bytes; a transposed layer's ``[ci, kh, kw,
#: co/groups]``).  ``input_shape`` stays NCHW either way.  NHWC serves the forward operators (the
#: tensor-core rule's 16-byte channel loads); the gradients are NCHW only.
NCHW, NHWC = "NCHW", "NHWC"
LAYOUTS = (NCHW, NHWC)
#: What a kernel computes for its layer: the forward pass; the gradient of the weight (arguments
#: ``(input, grad_output, grad_weight)``); or the fold of a padded input gradient back onto the input
#: (``spec.input_grad``'s pads and padding mode; arguments ``(grad_padded, grad_input)``).
FORWARD, WEIGHT_GRAD, PAD_GRAD = "forward", "weight_grad", "pad_grad"
OPERATORS = (FORWARD, WEIGHT_GRAD, PAD_GRAD)


@dataclass(frozen=True)
class Epilogue:
    """What the kernel does to each accumulated output after the bias, in order, before the one
    rounding to the layer's dtype: ``"add"`` (a residual input) and activations (``ACTIVATIONS``).
    ResNet's last conv of a block is ``("add", "relu")``, MobileNet's expansion ``("hardswish",)``."""

    steps: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        unknown = [s for s in self.steps if s != ADD and s not in ACTIVATIONS]
        if unknown:
            raise ValueError(f"unknown epilogue steps {unknown}: expected {ADD!r} or one of {ACTIVATIONS}")
        if self.steps.count(ADD) > 1:
            raise ValueError("an epilogue adds at most one residual")

    @property
    def residual(self) -> bool:
        """The kernel takes a residual tensor (after the bias, before the output)."""
        return ADD in self.steps

    def __str__(self) -> str:
        return "+".join(self.steps) or "none"


@dataclass(frozen=True, eq=False)
class KernelRequest:
    """One kernel: layer (``spec.transposed`` picks the family), batched NCHW input shape of the
    layer's forward, dtype, the transposed layer's output padding for this call, layout, epilogue,
    operator (``OPERATORS``: the forward pass or a gradient kernel of the layer) and ``tf32``: a
    float32 forward whose products take TF32 operands (NVIDIA tensor cores' float32 mode, what torch's
    cuDNN convolutions do while ``torch.backends.cudnn.allow_tf32`` is on), not exact float32.

    Equality and hashing go through :attr:`key`, which holds the layer's resolved form (``'same'``
    and its explicit pads are one request)."""

    spec: ConvSpec
    input_shape: Tuple[int, int, int, int]
    dtype: str
    output_padding: Optional[IntPair] = None
    layout: str = "NCHW"
    epilogue: Epilogue = field(default_factory=Epilogue)
    operator: str = FORWARD
    tf32: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.spec.transposed:
            padding = self.spec.output_padding if self.output_padding is None else self.output_padding
            object.__setattr__(self, "output_padding", tuple(int(p) for p in padding))
        else:
            object.__setattr__(self, "output_padding", None)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not supported: expected one of {LAYOUTS}")
        if self.layout != NCHW and self.operator != FORWARD:
            raise ValueError(f"layout {self.layout} is defined for the forward operators only")
        if not isinstance(self.epilogue, Epilogue):
            object.__setattr__(self, "epilogue", Epilogue(self.epilogue))
        if self.operator not in OPERATORS:
            raise ValueError(f"operator {self.operator!r} is not one of {OPERATORS}")
        if self.operator != FORWARD and self.epilogue.steps:
            raise ValueError(f"a {self.operator} kernel has no epilogue (got {self.epilogue})")
        if self.tf32 and (self.dtype != "float32" or self.operator != FORWARD):
            raise ValueError(f"TF32 is a mode of float32 forward kernels, not of a {self.dtype} {self.operator} one")

    @property
    def op(self) -> str:
        """``conv2d``/``conv_transpose2d`` for the forward pass, ``conv2d_weight_grad`` etc. otherwise
        (so forward requests keep the keys their tuning records were made with)."""
        family = "conv_transpose2d" if self.spec.transposed else "conv2d"
        return family if self.operator == FORWARD else f"{family}_{self.operator}"

    @functools.cached_property
    def output_shape(self) -> Tuple[int, int, int, int]:
        """torch's output shape (raises torch's errors for a bad request)."""
        return tuple(self.spec.output_shape(self.input_shape, self.output_padding))

    @functools.cached_property
    def key(self) -> tuple:
        # exact float32 requests keep the key they had before TF32 existed
        return (self.op, self.spec.forward_key(), self.input_shape, self.dtype, self.output_padding,
                self.layout, self.epilogue.steps) + (("tf32",) if self.tf32 else ())

    def __eq__(self, other) -> bool:
        return isinstance(other, KernelRequest) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def describe(self) -> str:
        """``Conv2d(...) on 1x64x56x56 float32`` (TF32 and the epilogue when there are)."""
        text = f"{self.spec.describe()} on {'x'.join(map(str, self.input_shape))} {self.dtype}"
        text += " (TF32)" if self.tf32 else ""
        text += f" then {self.epilogue}" if self.epilogue.steps else ""
        return text if self.operator == FORWARD else f"{self.operator} of {text}"

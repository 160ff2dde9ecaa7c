"""Parse a layer written as Python source, e.g. ``"Conv2d(64, 64, 3, padding=1)"`` (CLI and suites)."""
from __future__ import annotations

import ast
import difflib
import inspect
import re

_CLASSES = ("Conv2d", "ConvTranspose2d")
_EXAMPLE = "Conv2d(64, 64, 3, padding=1)"
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _syntax_error(source: str, error: SyntaxError) -> ValueError:
    """``layer text 'Conv2d(8, 8': invalid syntax: '(' was never closed (missing ')'?)``."""
    message = (error.msg or "").strip()
    if message.lower().startswith("invalid syntax"):            # "invalid syntax. Perhaps you forgot a comma?"
        message = message[len("invalid syntax"):].lstrip(".: ")
    opened = re.fullmatch(r"'(.)' was never closed", message)
    where = ""
    if opened and opened.group(1) in _CLOSING:
        message += f" (missing {_CLOSING[opened.group(1)]!r}?)"
    elif error.offset:
        where = f" at column {error.offset}"
    if message:
        message = ": " + message[0].lower() + message[1:]
    return ValueError(f"layer text {source!r}: invalid syntax{where}{message}")


def _literal(node, source: str, what: str):
    if isinstance(node, ast.Starred):
        raise ValueError(f"layer text {source!r}: {ast.unparse(node)!r} is not allowed: write the arguments out")
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"layer text {source!r}: {what} {ast.unparse(node)!r} is not a literal (numbers, "
                         "strings, tuples, lists, True, False and None are; nothing is evaluated)") from None


def parse_call(text: str):
    """``(class name, positional args, keyword args)`` of a layer's text, checked to be a call of
    ``Conv2d``/``ConvTranspose2d`` (optionally qualified, as ``nn.Conv2d``) with literal arguments.
    Nothing is evaluated; every refusal is a ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"layer text must be a str, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ValueError(f"layer text is empty: expected e.g. {_EXAMPLE!r}")
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as e:
        raise _syntax_error(source, e) from e
    func = getattr(tree, "func", None)
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if not isinstance(tree, ast.Call) or name is None:
        raise ValueError(f"layer text {source!r}: expected a call such as {_EXAMPLE!r} "
                         f"(Conv2d(...) or ConvTranspose2d(...))")
    if name not in _CLASSES:
        raise ValueError(f"unknown layer class {name!r}: expected Conv2d or ConvTranspose2d")
    args = [_literal(a, source, f"argument {i}") for i, a in enumerate(tree.args, 1)]
    kwargs = {}
    for k in tree.keywords:
        if k.arg is None:
            raise ValueError(f"layer text {source!r}: {ast.unparse(k)!r} is not allowed: write the "
                             "keyword arguments out")
        if k.arg in kwargs:                 # ast.parse leaves this to the compiler: a SyntaxError there
            raise ValueError(f"layer text {source!r}: invalid syntax: keyword argument repeated: {k.arg}")
        kwargs[k.arg] = _literal(k.value, source, f"argument {k.arg}=")
    return name, args, kwargs


def _check_call(name: str, cls, args, kwargs) -> None:
    """The TypeError a call with these arguments would raise, worded as ``Conv2d() ...``, with a
    suggestion for a misspelt keyword."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # pragma: no cover - no signature to check against
        return
    params = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1)
                raise TypeError(f"{name}() got an unexpected keyword argument {key!r}"
                                + (f" (did you mean {close[0]!r}?)" if close else ""))
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional) and not any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        raise TypeError(f"{name}() takes at most {len(positional)} positional arguments but {len(args)} "
                        "were given")
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}() {e}") from None


def parse_layer(text: str, namespace=None):
    """Build the layer ``text`` describes from ``namespace`` (default: this project's modules).

    Only ``Conv2d(...)`` / ``ConvTranspose2d(...)`` calls with literal arguments are accepted;
    nothing is evaluated.  Malformed text, another class or non-literal arguments raise ValueError;
    arguments the constructor does not take raise the TypeError the call would (``Conv2d() got an
    unexpected keyword argument 'paddin' (did you mean 'padding'?)``); argument values are checked
    by the constructor itself (torch's errors).
    """
    if namespace is None:
        import compiler as namespace
    name, args, kwargs = parse_call(text)
    cls = getattr(namespace, name)
    _check_call(name, cls, args, kwargs)
    return cls(*args, **kwargs)


def spec_of(layer):
    """The ConvSpec of a layer given as text, as one of our modules or torch's, or as a ConvSpec."""
    from torch import nn

    from .modules import _ConvBase
    from .spec import ConvSpec

    if isinstance(layer, ConvSpec):
        return layer
    if isinstance(layer, str):
        layer = parse_layer(layer)
    if isinstance(layer, _ConvBase):
        return layer._spec()
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        transposed = isinstance(layer, nn.ConvTranspose2d)
        padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
        return ConvSpec(transposed, layer.in_channels, layer.out_channels, tuple(layer.kernel_size),
                        tuple(layer.stride), padding, tuple(layer.dilation), layer.groups,
                        layer.bias is not None, layer.padding_mode, tuple(layer.output_padding))
    raise TypeError(f"expected a Conv2d/ConvTranspose2d (ours or torch's), its text, or a ConvSpec; "
                    f"got {type(layer).__name__}")


def batched_shape(input_shape) -> tuple:
    """``(N, C, H, W)`` from a 4-D shape or an unbatched 3-D one (as the modules accept)."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        return (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"expected a 3-D (C, H, W) or 4-D (N, C, H, W) input shape, got {list(shape)}")
    return shape


def request_of(layer, input_shape=None, dtype: str = "float32", output_padding=None):
    """The KernelRequest of ``layer`` (anything :func:`spec_of` takes) on ``input_shape`` (3-D or 4-D),
    or ``layer`` itself when it already is a request (then no shape, dtype or padding may be given)."""
    from .request import FORWARD, KernelRequest

    if isinstance(layer, KernelRequest):
        if input_shape is not None or output_padding is not None:
            raise TypeError("a KernelRequest already holds its input shape and output padding")
        if layer.operator != FORWARD:
            # tuning, export and reports take a layer's forward kernel: the gradient kernels have other
            # arguments (compiler.gradients runs them)
            raise ValueError(f"{layer.describe()}: only forward kernel requests are tuned, exported or "
                             f"reported (got operator {layer.operator!r})")
        return layer
    if input_shape is None:
        raise TypeError("an input shape is needed to build a kernel for a layer")
    return KernelRequest(spec_of(layer), batched_shape(input_shape), dtype, output_padding)

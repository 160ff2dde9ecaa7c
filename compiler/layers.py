"""Parse a layer written as Python source, e.g. ``"Conv2d(64, 64, 3, padding=1)"`` (CLI and suites)."""
from __future__ import annotations

import ast

_CLASSES = ("Conv2d", "ConvTranspose2d")


def _literal(node):
    return ast.literal_eval(node)


def parse_layer(text: str, namespace=None):
    """Build the layer ``text`` describes from ``namespace`` (default: this project's modules).

    Only ``Conv2d(...)`` / ``ConvTranspose2d(...)`` calls with literal arguments are accepted;
    nothing is evaluated.
    """
    if namespace is None:
        import compiler as namespace
    tree = ast.parse(text.strip(), mode="eval").body
    name = tree.func.attr if isinstance(getattr(tree, "func", None), ast.Attribute) else \
        getattr(getattr(tree, "func", None), "id", None)
    if not isinstance(tree, ast.Call) or name not in _CLASSES:
        raise ValueError(f"expected Conv2d(...) or ConvTranspose2d(...), got {text!r}")
    args = [_literal(a) for a in tree.args]
    kwargs = {k.arg: _literal(k.value) for k in tree.keywords}
    return getattr(namespace, name)(*args, **kwargs)


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

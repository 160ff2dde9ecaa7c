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

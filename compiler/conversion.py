"""``convert``: every Conv2d / ConvTranspose2d of a model runs the project's kernels, fused where it can.

The model is copied (``copy.deepcopy``): the original keeps torch's layers and stays usable as the
reference.  With ``fuse=True`` on a model in eval mode, the copy is traced with ``torch.fx`` and,
for each conv module called exactly once whose output feeds only the next op:

1. an eval-mode ``BatchNorm2d`` with running statistics is folded into its weights and bias;
2. a following residual add (``out += identity``, ``out + identity``, ``torch.add``) becomes the
   kernel's ``add`` epilogue step (the residual is read in the kernel's output pass);
3. a following activation (``ACTIVATION_MODULES`` / ``ACTIVATION_FUNCTIONS``) becomes an
   epilogue step too, so ResNet's ``conv3 -> bn3 -> += identity -> relu`` is one kernel; on CPUs
   except ``CPU_TORCH_ACTIVATIONS``, which stay torch's ops there.

A model fx cannot trace, a model in training mode, or ``fuse=False`` is converted module by module,
unfused.  Conv subclasses that override ``forward`` keep their own code (and torch's kernels).
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Dict, Iterable, List, Optional

import torch
from torch import fx, nn
from torch.nn import functional as F

from .fusion import fold_batch_norm, ours_from_torch
from .modules import _ConvBase
from .request import ADD, Epilogue

ACTIVATION_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                      nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Tanh: "tanh"}
ACTIVATION_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu",
                        torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardswish: "hardswish",
                        F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", F.tanh: "tanh"}
ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
ADDS = (operator.add, operator.iadd, torch.add)
TORCH_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


#: Activations left to torch on CPUs: LLVM lowers their exp / erf / tanh to a scalar libm call per
#: element, where torch's ops are vectorised.  Measured single-threaded on znver3: SiLU on 1.2M
#: values 5.1 ms in our epilogue, 1.7 ms as torch's op; EfficientNet-B0 (SiLU after most convs)
#: 0.79x torch with it fused, 0.95x with torch's SiLU.
CPU_TORCH_ACTIVATIONS = frozenset({"sigmoid", "silu", "gelu", "gelu_tanh", "tanh"})


class ConversionWarning(UserWarning):
    """A part of the model stayed as it was (it does not trace, or a conv subclass has its own forward)."""


def convertible(module: nn.Module) -> bool:
    """A torch conv whose forward is torch's own (subclasses that only add attributes or methods)."""
    if not isinstance(module, TORCH_CONVS) or isinstance(module, _ConvBase):
        return False
    base = nn.ConvTranspose2d if isinstance(module, nn.ConvTranspose2d) else nn.Conv2d
    cls = type(module)
    return cls.forward is base.forward and getattr(cls, "_conv_forward", None) is getattr(base, "_conv_forward", None)


def convert(model: nn.Module, example_inputs=None, *, target=None, fuse: bool = True,
            tuning_database=None) -> nn.Module:
    """A copy of ``model`` whose Conv2d / ConvTranspose2d layers run this project's kernels.

    ``example_inputs`` (a tensor or a tuple of them): run once through the converted model, so every
    kernel is compiled before this returns.  ``target``: the TVM target of every converted layer
    (None: each input's device).  ``fuse``: fold BatchNorm and fuse the residual add and activation
    that follow a conv into its kernel (eval mode and a traceable model only).
    ``tuning_database``: the modules' record folder (None: the default, False: hand-written only).
    """
    model = copy.deepcopy(model)
    if convertible(model):                         # the model is one conv layer
        model = ours_from_torch(model)
    if fuse and not model.training:
        traced = _trace(model)
        if traced is not None:
            model = traced
            _fuse(model, CPU_TORCH_ACTIVATIONS if _on_cpu(model, target) else frozenset())
    _swap(model)
    for module in model.modules():
        if isinstance(module, _ConvBase):
            module.target, module.tuning_database = target, tuning_database
    if example_inputs is not None:
        inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        from . import precompile
        precompile.compile_all(precompile.model_jobs(model, inputs))       # on two cores
        with torch.no_grad():
            model(*inputs)
    return model


class _ConvLeafTracer(fx.Tracer):
    """Every conv module is one node (user subclasses too, which fx would otherwise trace through)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, TORCH_CONVS) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> Optional[fx.GraphModule]:
    try:
        graph = _ConvLeafTracer().trace(model)
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable code
        warnings.warn(f"{type(model).__name__} does not trace with torch.fx ({type(e).__name__}: {e}); "
                      "converting its convolutions without fusion", ConversionWarning, stacklevel=3)
        return None
    # fx keeps the tracer class for pickling; ours would make every pickle of the model import this
    # compiler (an exported model must load with TVM's runtime alone)
    graph._tracer_cls = None
    for node in graph.nodes:        # annotations postponed by `from __future__ import annotations` are
        if isinstance(node.type, str):      # strings: fx can neither pickle nor re-import them
            node.type = None
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _activation(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """The epilogue name of the activation ``node`` computes on its first argument, or None."""
    if node.op == "call_module":
        module = modules[node.target]
        if type(module) is nn.GELU:
            return "gelu" if module.approximate == "none" else "gelu_tanh"
        return ACTIVATION_MODULES.get(type(module))
    if node.op == "call_function":
        if node.target is F.gelu:
            return "gelu_tanh" if node.kwargs.get("approximate", "none") == "tanh" else "gelu"
        if node.target in ACTIVATION_FUNCTIONS and len(node.args) == 1:
            return ACTIVATION_FUNCTIONS[node.target]
        return None
    if node.op == "call_method" and len(node.args) == 1 and not node.kwargs:
        return ACTIVATION_METHODS.get(node.target)
    return None


def _residual(node: fx.Node, producer: fx.Node, conv: fx.Node) -> Optional[fx.Node]:
    """The other operand if ``node`` adds a tensor node to ``producer``'s output (no alpha, no scalar)
    and that operand is computed before ``conv`` (of two conv branches, the one computed last takes the
    add: ResNet's main path, not its downsample), else None.  ``a += b`` updates ``a`` in place, so
    the conv's output must be ``a`` there."""
    if node.op != "call_function" or node.target not in ADDS or node.kwargs or len(node.args) != 2:
        return None
    first, second = node.args
    if node.target is operator.iadd and first is not producer:
        return None
    other = second if first is producer else first
    if not isinstance(other, fx.Node) or other is producer:
        return None
    for earlier in conv.graph.nodes:
        if earlier is other:
            return other
        if earlier is conv:
            return None
    return None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _identity_in_eval(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """``nn.Identity``, dropout in eval mode, and torchvision's ``stochastic_depth(..., training=False)``
    (EfficientNet and ConvNeXt put it between a block's last conv and its residual add)."""
    if node.op == "call_module":
        module = modules[node.target]
        return type(module) is nn.Identity or (isinstance(module, nn.modules.dropout._DropoutNd)
                                               and not module.training)
    if node.op == "call_function":
        if node.target is F.dropout:
            return node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False
        if getattr(node.target, "__name__", "") == "stochastic_depth":
            return node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True) is False
    return False


def _next(node: fx.Node, modules, chain: List[fx.Node]) -> Optional[fx.Node]:
    """The only user of ``node``, past identities (which join ``chain``), or None."""
    nxt = _only_user(node)
    while nxt is not None and nxt.args[:1] == (node,) and _identity_in_eval(nxt, modules):
        chain.append(nxt)
        node, nxt = nxt, _only_user(nxt)
    return nxt


def _on_cpu(model: nn.Module, target) -> bool:
    """Whether the converted layers run on a CPU: ``target``'s kind, else the parameters' device."""
    if target is not None:
        from targets import resolve
        return str(resolve(target).kind.name) == "llvm"
    return all(p.device.type == "cpu" for p in model.parameters())


def _fuse(gm: fx.GraphModule, unfused_activations=frozenset()) -> None:
    """Fold and fuse in place (see the module docstring); ``gm``'s graph is recompiled.  Activations
    in ``unfused_activations`` stay ops of their own."""
    modules = dict(gm.named_modules())
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1 or not convertible(modules[node.target]):
            continue
        conv = modules[node.target]
        if conv.training or len(node.args) != 1 or node.kwargs:
            continue
        chain, bn, residual, steps = [node], None, None, []
        nxt = _next(node, modules, chain)
        if nxt is not None and nxt.op == "call_module" and calls[nxt.target] == 1 and \
                type(modules[nxt.target]) is nn.BatchNorm2d and _foldable(modules[nxt.target]) and \
                nxt.args == (chain[-1],):
            bn = modules[nxt.target]
            chain.append(nxt)
            nxt = _next(nxt, modules, chain)
        if nxt is not None and (other := _residual(nxt, chain[-1], node)) is not None:
            residual = other
            chain.append(nxt)
            steps.append(ADD)
            nxt = _next(nxt, modules, chain)
        if nxt is not None and nxt.args[:1] == (chain[-1],) and (name := _activation(nxt, modules)) is not None \
                and name not in unfused_activations:
            chain.append(nxt)
            steps.append(name)
        if bn is None and not steps:
            continue                                 # nothing to fuse: converted by _swap
        last = chain[-1]
        ours = ours_from_torch(conv, fused=True)
        if bn is not None:
            fold_batch_norm(ours, bn)
        ours.epilogue = Epilogue(tuple(steps))
        gm.add_submodule(node.target, ours)           # replaces the torch conv at its path
        with gm.graph.inserting_after(last):
            fused = gm.graph.call_module(node.target, (node.args[0],) + ((residual,) if residual else ()))
        last.replace_all_uses_with(fused)
        for dead in reversed(chain):
            gm.graph.erase_node(dead)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _foldable(bn: nn.BatchNorm2d) -> bool:
    """Eval mode with running statistics: a fixed affine map per channel."""
    return not bn.training and bn.running_mean is not None and bn.running_var is not None


def _swap(model: nn.Module) -> None:
    """Replace every convertible torch conv by ours, sharing its parameters; a module reachable at
    several paths (one layer used twice) becomes one module of ours at all of them."""
    done: Dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TORCH_CONVS) and not isinstance(child, _ConvBase) and not convertible(child):
                warnings.warn(f"{type(child).__name__} at '{name}' overrides torch's forward: left as it is "
                              "(torch's kernels)", ConversionWarning, stacklevel=3)
                continue
            if convertible(child):
                if id(child) not in done:
                    done[id(child)] = ours_from_torch(child)
                setattr(parent, name, done[id(child)])


def converted_layers(model: nn.Module) -> List[nn.Module]:
    """The modules of ours in ``model`` (each once)."""
    return [m for m in _unique(model.modules()) if isinstance(m, _ConvBase)]


def _unique(modules: Iterable[nn.Module]) -> List[nn.Module]:
    seen, out = set(), []
    for m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out

"""Our kernels as torch operators: ``tvm_conv::conv2d``, ``tvm_conv::conv_transpose2d`` and their
gradients, so autograd, ``torch.compile``, ``torch.export``, ``torch.fx`` and ``torch.jit.trace`` see
one opaque operator per layer call, with a fake implementation (torch's shape rules from
``compiler.spec``, no kernel) and a backward formula whose three gradients are operators too
(``conv_input_grad``, ``conv_weight_grad``, ``conv_bias_grad``: ``compiler.gradients``' kernels).

The operators are declared with ``torch.library.define`` and a Python kernel per device key rather
than ``torch.library.custom_op``: the latter's Python autograd wrapper cost ~13 us more per call
(measured: 34 against 22 us of dispatch for an empty body, single-threaded, under no_grad).  The
modules still call the kernels directly when nothing needs the operator (:func:`needs_operator`):
a plain inference call through the operator cost ~20 us more than the direct call.  An eager call
that autograd differentiates (nothing traced) applies the operator's autograd Function itself
(:func:`eager_autograd`), and the operators' Autograd kernel is written here (:func:`_function`)
rather than registered with ``torch.library.register_autograd``, whose wrapper cost ~180 us more
per training call and ~100 us more per gradient operator.

Layer arguments travel as schema types: ``padding`` is the int pair or ``padding_string``
(``'same'``/``'valid'``); ``epilogue`` the steps joined by ``+`` (``''``: none); ``target`` a target
name or TVM target string (None: the tensors' device); ``database`` a tuning folder, None for the
default, ``''`` for hand-written schedules only.  Double backward is refused with a clear error.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import tvm_ffi
from torch.utils._python_dispatch import _get_current_dispatch_mode

from targets.cuda import has_tf32

from .build import Kernel, generation, get_kernel
from .build import takes as build_takes
from .request import ADD, NCHW, NHWC, Epilogue, KernelRequest
from .spec import ConvSpec, output_channels_last

NAMESPACE = "tvm_conv"
#: The real dtypes our kernels compute in (torch dtype -> kernel dtype name).
REAL_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}
#: Complex dtypes, computed as torch's aten does: three real convolutions of the component dtype.
COMPLEX_DTYPES = {torch.complex32: torch.float16, torch.complex64: torch.float32,
                  torch.complex128: torch.float64}

_LAYER = "int[] stride, int[] padding, str? padding_string, int[] dilation, int groups, str padding_mode"
_WHERE = "str epilogue, str? target, str? database"
_SCHEMAS = {
    "conv2d": f"(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, {_LAYER}, {_WHERE}) -> Tensor",
    "conv_transpose2d": "(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, int[] stride, "
                        "int[] padding, int[] output_padding, int[]? output_size, int[] kernel_size, int groups, "
                        "int[] dilation, "
                        f"{_WHERE}) -> Tensor",
    # the gradients: ``output_padding`` is the call's resolved one (output_size already applied)
    "conv_input_grad": f"(Tensor grad_output, Tensor input, Tensor weight, bool transposed, {_LAYER}, "
                       "int[] output_padding, str? target, str? database) -> Tensor",
    "conv_weight_grad": f"(Tensor grad_output, Tensor input, Tensor weight, bool transposed, {_LAYER}, "
                        "int[] output_padding, str? target, str? database) -> Tensor",
    "conv_bias_grad": "(Tensor grad_output, str? target) -> Tensor",
}
_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")
for _name, _schema in _SCHEMAS.items():
    _LIBRARY.define(_name + _schema)


# ------------------------------------------------------------------------------ when to use them
_TENSOR, _PARAMETER, _PROXY = torch.Tensor, torch.nn.Parameter, torch.fx.Proxy
_is_compiling, _is_tracing = torch.compiler.is_compiling, torch._C._is_tracing
functorch_active = torch._C._are_functorch_transforms_active


def traced(*tensors) -> bool:
    """Whether something other than eager execution on real tensors is running: torch.compile or
    export, jit tracing, a dispatch mode (fake tensors...), fx proxies or tensor subclasses.
    (Names bound once and a plain loop: this runs at every module call.)"""
    if _is_compiling() or _is_tracing() or _get_current_dispatch_mode() is not None:
        return True
    for t in tensors:
        kind = type(t)
        if kind is not _TENSOR and kind is not _PARAMETER and t is not None and isinstance(t, (_TENSOR, _PROXY)):
            return True
    return False


def needs_operator(*tensors) -> bool:
    """Whether a module call must go through the operator: it is traced, or autograd will
    differentiate it."""
    if traced(*tensors):
        return True
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return True
    return False


# ------------------------------------------------------------------------------ the layer
def layer_spec(transposed: bool, weight_shape: Sequence[int], has_bias: bool, stride, padding,
               dilation, groups: int, padding_mode: str, output_padding=(0, 0)) -> ConvSpec:
    """The layer as torch's forward sees it: channels and kernel size from the weight tensor itself
    (torch's forward never reads ``in_channels``/``kernel_size``), the rest from the attributes."""
    if len(weight_shape) != 4:
        raise RuntimeError(f"expected stride to be a single integer value or a list of "
                           f"{len(weight_shape) - 2} values to match the convolution dimensions, but got "
                           f"stride={list(stride)}")
    first, second, kh, kw = weight_shape
    in_channels, out_channels = (first, second * groups) if transposed else (second * groups, first)
    return ConvSpec(transposed, in_channels, out_channels, (kh, kw), tuple(stride),
                    padding if isinstance(padding, str) else tuple(padding), tuple(dilation), groups,
                    has_bias, padding_mode, tuple(output_padding))


def check_bias(spec: ConvSpec, weight_shape, bias_shape) -> None:
    """torch's error for a bias that is not one value per output channel."""
    if bias_shape is not None and tuple(bias_shape) != (spec.out_channels,):
        kind = "transposed=1, " if spec.transposed else ""
        raise RuntimeError(f"Given {kind}weight of size {list(weight_shape)}, expected bias to be "
                           f"1-dimensional with {spec.out_channels} elements, but got bias of size "
                           f"{list(bias_shape)} instead")


def check_input(op_name: str, input, weight: torch.Tensor, dtypes=REAL_DTYPES, layer_name: str = "") -> None:
    """torch's errors for the input tensor (type, rank, dtype, device), before any kernel."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op_name}(): argument 'input' must be Tensor, not {type(input).__name__}")
    if input.dim() not in (3, 4):
        raise RuntimeError(f"Expected 3D (unbatched) or 4D (batched) input to {op_name}, but got "
                           f"input of size: {list(input.shape)}")
    if weight.dtype not in dtypes:
        raise RuntimeError(f"{layer_name or op_name} computes in {', '.join(map(str, dtypes))}; its parameters are "
                           f"{weight.dtype}")
    if input.dtype != weight.dtype:
        raise RuntimeError(f"Input type ({input.dtype}) and weight type ({weight.dtype}) should be the same")
    if input.device != weight.device:
        raise RuntimeError(f"Input device ({input.device}) and weight device ({weight.device}) should be the same")


@functools.lru_cache(maxsize=None)
def resolve_target(target: Optional[str], device: torch.device):
    """The TVM target of a call: the named one, else the device's (host CPU or that GPU's arch)."""
    from targets import resolve
    from tvm.target import Target
    if target is None:
        from .modules import _device_target
        return _device_target(device)
    if target in ("llvm", "cuda") or target.startswith(("cuda/", "sm_")):
        return resolve(target)
    return Target(target)


def encode_database(database) -> Optional[str]:
    """The modules' ``tuning_database`` (folder, None, False) as the schema's ``str?``."""
    return "" if database is False else (None if database is None else str(database))


def decode_database(database: Optional[str]):
    return False if database == "" else database


def encode_target(target) -> Optional[str]:
    return None if target is None else str(target)


# ------------------------------------------------------------------------------ running a kernel
#: Bytes of the widest vector load of our CUDA kernels (``LDG.128``, ``cp.async`` 16: the tensor-core
#: rule's ``VECTOR_BYTES``), which fault on an address that is not a multiple of it.  torch's
#: allocations are 256-byte aligned, but a view may start anywhere in its storage.
CUDA_ALIGNMENT = 16


def aligned(t: torch.Tensor, alignment: int = CUDA_ALIGNMENT) -> torch.Tensor:
    """``t``, or where its data does not start on ``alignment`` bytes a copy with the same strides."""
    return t if t.data_ptr() % alignment == 0 else t.clone()


def launch(kernel, *tensors: torch.Tensor) -> None:
    """Run ``kernel`` on ``tensors`` (CUDA ones on torch's current stream of their device, the inputs
    :func:`aligned` for the kernels' vector loads; the last tensor, the output, is ours)."""
    if tensors[-1].is_cuda:
        with torch.cuda.device(tensors[-1].device), tvm_ffi.use_torch_stream():
            kernel(*(aligned(t) for t in tensors[:-1]), tensors[-1])
    else:
        kernel(*tensors)


#: id(weight) -> (weakref to the weight, key, packed copy); an entry leaves with its weight.  A plain
#: dict keyed by id: a WeakIdKeyDictionary lookup took ~3 of a small layer's ~35 us per call.
_PACKED: Dict[int, tuple] = {}


def packed_weight(kernel: Kernel, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``kernel`` takes it, packed once per weight tensor and version (the operator's
    path: a compiled or exported model passes the same parameter tensor at every call): torch's
    layout, the rule's blocks (``kernel.pack``), or for an NHWC kernel ``[co, kh, kw, ci/groups]``
    (a channels_last weight's own bytes, read in place)."""
    ohwi = kernel.pack is None and kernel.request.layout == NHWC
    if kernel.pack is None and not ohwi:
        return weight.detach().contiguous()
    if ohwi and weight.is_contiguous(memory_format=torch.channels_last):
        return weight.detach().permute(0, 2, 3, 1)
    key = (weight._version, weight.data_ptr(), kernel.packed_weight_shape if not ohwi else NHWC, weight.dtype)
    hit = _PACKED.get(id(weight))
    if hit is None or hit[0]() is not weight or hit[1] != key:
        w = weight.detach()
        if ohwi:
            packed = w.permute(0, 2, 3, 1).contiguous()
        else:
            packed = w.new_empty(kernel.packed_weight_shape)
            launch(kernel.pack, w.contiguous(), packed)
        if hit is None or hit[0]() is not weight:
            weakref.finalize(weight, _PACKED.pop, id(weight), None)
        hit = _PACKED[id(weight)] = (weakref.ref(weight), key, packed)
    return hit[2]


def drop_packed_weight(weight: torch.Tensor) -> None:
    """Forget ``weight``'s packed copy (after writes through ``weight.data``, which keep its version)."""
    hit = _PACKED.get(id(weight))
    if hit is not None and hit[0]() is weight:
        del _PACKED[id(weight)]


def tf32_allowed(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether torch's convolution may take this call's products on TF32 tensor cores: float32 on a
    CUDA device while ``torch.backends.cudnn.conv.fp32_precision`` is ``"tf32"`` (what
    ``torch.backends.cudnn.allow_tf32``, True by default, sets).  Read at every call, as torch does."""
    return dtype is torch.float32 and device.type == "cuda" and torch.backends.cudnn.conv.fp32_precision == "tf32"


_PLANS: Dict[tuple, tuple] = {}
_PLANS_SIZE = 1024


def plan(spec: ConvSpec, x_shape, dtype: torch.dtype, device: torch.device, output_padding, epilogue: Epilogue,
         target, database, weight_shape, bias_shape, tf32: bool = False, layout: str = NCHW
         ) -> Tuple[tuple, Optional[Kernel], KernelRequest]:
    """(output shape, kernel or None when there is nothing to compute, request) for a batched call:
    the bias check, torch's shape rules and the kernel lookup (raising torch's errors); ``tf32``
    (:func:`tf32_allowed`) makes the request a TF32 one on a target with TF32 tensor cores;
    ``layout`` (:func:`kernel_layout`) is asked for where some rule may take it (``build.takes``),
    and the kernel is NCHW where none does or all then decline (``build.get_kernel``)."""
    check_bias(spec, weight_shape, bias_shape)
    request = KernelRequest(spec, tuple(x_shape), REAL_DTYPES[dtype], output_padding, epilogue=epilogue,
                            tf32=tf32 and has_tf32(target))
    out_shape = request.output_shape                          # raises torch's errors
    if layout != NCHW and build_takes(replace(request, layout=layout), target):
        request = replace(request, layout=layout)
    kernel = None                  # nothing to compute: no kernel for empty outputs or meta tensors
    if x_shape[0] != 0 and 0 not in out_shape and device.type != "meta":
        kernel = get_kernel(request, target, prepacked=True, database=database)
        request = kernel.request           # NCHW where the rules declined the layout asked for
    return out_shape, kernel, request


def kernel_layout(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The layout to ask a kernel for on batched ``x``: NHWC where torch's output is channels_last
    (a rule that takes NHWC then reads the channels_last input in place and writes the channels_last
    output itself: the tensor-core rule on a GPU, the depthwise NHWC rule on a CPU; ``plan`` takes
    NCHW where none does, and the input is copied in and the output out), else NCHW."""
    if weight.dim() != 4 or plainly_nchw(x) and plainly_nchw(weight):
        return NCHW                   # (a weight of another rank: the layer check raises torch's error)
    channels_last = output_channels_last(x.shape, x.stride(), weight.shape, weight.stride(), x.is_cuda,
                                         x.dtype == torch.float64)
    return NHWC if channels_last else NCHW


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Batched activation ``t`` as a kernel of ``layout`` reads or writes it: contiguous NCHW, or the
    NHWC view of its channels_last bytes (copied only where ``t`` is not channels_last)."""
    t = t.detach()
    return t.contiguous() if layout == NCHW else t.permute(0, 2, 3, 1).contiguous()


def new_output(x: torch.Tensor, out_shape, kernel: Optional[Kernel]) -> torch.Tensor:
    """The output tensor of a call on ``x``: NCHW, or channels_last for an NHWC kernel."""
    if kernel is not None and kernel.request.layout == NHWC:
        return torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return x.new_empty(out_shape)


def _memo_plan(transposed, weight, bias, stride, padding, padding_string, dilation, groups, padding_mode,
               output_padding, x, epilogue: str, target: Optional[str], database: Optional[str]):
    """:func:`plan` memoised on everything it depends on (as the modules' dispatch memo)."""
    key = (transposed, tuple(weight.shape), None if bias is None else tuple(bias.shape), tuple(stride),
           tuple(padding), padding_string, tuple(dilation), groups, padding_mode, tuple(output_padding),
           tuple(x.shape), x.dtype, x.device, epilogue, target, database, generation(),
           kernel_layout(x, weight), tf32_allowed(x.dtype, x.device))
    hit = _PLANS.get(key)
    if hit is None:
        spec = layer_spec(transposed, weight.shape, bias is not None, stride,
                          padding_string or padding, dilation, groups, padding_mode, output_padding)
        steps = Epilogue(tuple(epilogue.split("+")) if epilogue else ())
        where = resolve_target(target, x.device)
        hit = plan(spec, tuple(x.shape), x.dtype, x.device, tuple(output_padding) if transposed else None,
                   steps, where, decode_database(database), weight.shape, None if bias is None else bias.shape,
                   key[-1], key[-2])
        if len(_PLANS) >= _PLANS_SIZE:
            _PLANS.clear()
        _PLANS[key] = hit
    return hit


def _batched(t: Optional[torch.Tensor], batched: bool):
    return t if t is None or batched else t.unsqueeze(0)


def _forward(op_name, transposed, input, weight, bias, residual, stride, padding, padding_string, dilation,
             groups, padding_mode, output_padding, epilogue, target, database, compute: bool):
    """Checks, output shape and (``compute``) the kernel: the operators' real and fake kernels."""
    check_input(op_name, input, weight)
    batched = input.dim() == 4
    x = _batched(input, batched)
    out_shape, kernel, _ = _memo_plan(transposed, weight, bias, stride, padding, padding_string, dilation,
                                      groups, padding_mode, output_padding, x, epilogue, target, database)
    steps = tuple(epilogue.split("+")) if epilogue else ()
    if (ADD in steps) != (residual is not None):
        raise TypeError(f"{NAMESPACE}::{op_name} with epilogue {epilogue!r} "
                        f"{'takes' if ADD in steps else 'takes no'} residual input")
    if residual is not None and (tuple(_batched(residual, batched).shape) != tuple(out_shape)
                                 or residual.dtype != input.dtype or residual.device != input.device):
        # a residual the kernel cannot read in the output's place (it broadcasts, or torch's add would
        # promote its dtype): the same epilogue in torch's ops after the plain kernel (as compiler.fusion)
        from .fusion import apply_epilogue
        y = _forward(op_name, transposed, input, weight, bias, None, stride, padding, padding_string, dilation,
                     groups, padding_mode, output_padding, "", target, database, compute)
        return apply_epilogue(y, steps, residual)
    y = new_output(x, out_shape, kernel)
    if compute and kernel is not None:
        layout = kernel.request.layout
        args = [in_layout(x, layout), packed_weight(kernel, weight)]
        if bias is not None:
            args.append(bias.detach().contiguous())
        if residual is not None:
            args.append(in_layout(_batched(residual, batched), layout))
        launch(kernel, *args, in_layout(y, layout))
    y = in_torchs_format(y, x, weight)
    return y if batched else y.squeeze(0)


def in_torchs_format(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The kernel's NCHW output ``y`` in the memory format torch gives the output of a convolution
    of batched ``x`` with ``weight`` (``spec.output_channels_last``): channels_last inputs and
    weights give channels_last outputs."""
    if plainly_nchw(x) and plainly_nchw(weight) or not output_channels_last(
            x.shape, x.stride(), weight.shape, weight.stride(), x.is_cuda, x.dtype == torch.float64):
        return y
    if y.is_contiguous(memory_format=torch.channels_last):    # an NHWC kernel's output as it is; one
        n, c, h, w = y.shape                                   # channel or one pixel: the same bytes,
        strides = (h * w * c, 1, w * c, c)                     # torch's channels_last strides
        return y if y.stride() == strides else y.as_strided(y.shape, strides)
    return y.contiguous(memory_format=torch.channels_last)


def plainly_nchw(t: torch.Tensor) -> bool:
    """Contiguous with more than one channel and one pixel: then some spatial stride is below the
    channels' and it never reads as channels_last (the per-call fast path; a contiguous tensor of
    one channel or pixel may carry channels_last strides on its size-1 dimensions)."""
    return t.is_contiguous() and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1


def transposed_output_padding(input_shape, kernel_size, stride, padding, output_padding, output_size,
                              dilation) -> List[int]:
    """The call's output padding: the layer's, or the one ``output_size`` asks for (torch's rule,
    which sizes it with the ``kernel_size`` attribute, not the weight)."""
    if output_size is None:
        return list(output_padding)
    spec = ConvSpec(True, 1, 1, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), 1, False,
                    "zeros", tuple(output_padding))
    return list(spec.output_padding_for(tuple(input_shape), list(output_size)))


def _conv2d(compute):
    def kernel(input, weight, bias, residual, stride, padding, padding_string, dilation, groups, padding_mode,
               epilogue, target, database):
        return _forward("conv2d", False, input, weight, bias, residual, stride, padding, padding_string,
                        dilation, groups, padding_mode, (0, 0), epilogue, target, database, compute)
    return kernel


def _conv_transpose2d(compute):
    def kernel(input, weight, bias, residual, stride, padding, output_padding, output_size, kernel_size, groups,
               dilation, epilogue, target, database):
        check_input("conv_transpose2d", input, weight)
        output_padding = transposed_output_padding(input.shape, kernel_size, stride, padding, output_padding,
                                                   output_size, dilation)
        return _forward("conv_transpose2d", True, input, weight, bias, residual, stride, padding, None,
                        dilation, groups, "zeros", output_padding, epilogue, target, database, compute)
    return kernel


# ------------------------------------------------------------------------------ gradients
def _grad_spec(transposed, weight_shape, stride, padding, padding_string, dilation, groups, padding_mode,
               output_padding) -> ConvSpec:
    return layer_spec(transposed, weight_shape, False, stride, padding_string or padding, dilation, groups,
                      padding_mode, output_padding)


def _input_grad(grad_output, input, weight, transposed, stride, padding, padding_string, dilation, groups,
                padding_mode, output_padding, target, database):
    from . import gradients
    batched = input.dim() == 4
    spec = _grad_spec(transposed, weight.shape, stride, padding, padding_string, dilation, groups,
                      padding_mode, output_padding)
    grad = gradients.conv_input_grad(spec, tuple(_batched(input, batched).shape), weight.detach(),
                                     _batched(grad_output, batched), tuple(output_padding) if transposed else None,
                                     target=resolve_target(target, input.device),
                                     tuning_database=decode_database(database))
    return grad if batched else grad.squeeze(0)


def _weight_grad(grad_output, input, weight, transposed, stride, padding, padding_string, dilation, groups,
                 padding_mode, output_padding, target, database):
    from . import gradients
    batched = input.dim() == 4
    spec = _grad_spec(transposed, weight.shape, stride, padding, padding_string, dilation, groups,
                      padding_mode, output_padding)
    return gradients.conv_weight_grad(spec, _batched(input, batched), _batched(grad_output, batched),
                                      tuple(output_padding) if transposed else None,
                                      target=resolve_target(target, input.device),
                                      tuning_database=decode_database(database))


def _bias_grad(grad_output, target):
    from . import gradients
    g = _batched(grad_output, grad_output.dim() == 4)
    return gradients.conv_bias_grad(g, target=resolve_target(target, grad_output.device))


_FAKES = {
    "conv2d": _conv2d(False), "conv_transpose2d": _conv_transpose2d(False),
    "conv_input_grad": lambda grad_output, input, *rest: input.new_empty(input.shape),
    "conv_weight_grad": lambda grad_output, input, weight, *rest: weight.new_empty(weight.shape),
    "conv_bias_grad": lambda grad_output, target: grad_output.new_empty(grad_output.shape[-3]),
}
_KERNELS = {"conv2d": _conv2d(True), "conv_transpose2d": _conv_transpose2d(True),
            "conv_input_grad": _input_grad, "conv_weight_grad": _weight_grad, "conv_bias_grad": _bias_grad}


def direct(name: str):
    """The operator's real kernel as a plain Python function (no dispatcher: complex inference)."""
    return _KERNELS[name]


for _name in _SCHEMAS:
    for _key in ("CPU", "CUDA"):
        _LIBRARY.impl(_name, _KERNELS[_name], _key)
    torch.library.register_fake(f"{NAMESPACE}::{_name}", _FAKES[_name], lib=_LIBRARY)


# ------------------------------------------------------------------------------ autograd
def _setup(transposed: bool):
    def setup_context(ctx, inputs, output):
        if transposed:
            (input, weight, bias, residual, stride, padding, output_padding, output_size, kernel_size, groups,
             dilation, epilogue, target, database) = inputs
            padding_string, padding_mode = None, "zeros"
            output_padding = transposed_output_padding(input.shape, kernel_size, stride, padding, output_padding,
                                                       output_size, dilation)
        else:
            (input, weight, bias, residual, stride, padding, padding_string, dilation, groups, padding_mode,
             epilogue, target, database) = inputs
            output_padding = [0, 0]
        ctx.save_for_backward(input, weight)
        ctx.layer = (transposed, list(stride), list(padding), padding_string, list(dilation), groups,
                     padding_mode, list(output_padding), target, database)
        ctx.has_bias, ctx.has_residual, ctx.epilogue = bias is not None, residual is not None, epilogue
        ctx.arguments = len(inputs)
    return setup_context


def _backward(ctx, grad_output):
    """The layer's gradients: the backward of both layer operators' Functions (``_function``)."""
    if ctx.epilogue not in ("", ADD):
        raise RuntimeError(f"{NAMESPACE}: no backward through the fused epilogue {ctx.epilogue!r} (the modules "
                           "run their epilogue in torch's ops when autograd is on)")
    input, weight = ctx.saved_tensors
    target, database = ctx.layer[-2:]
    grads: List[Optional[torch.Tensor]] = [None] * ctx.arguments
    # A backward that records nothing, on real tensors, calls the gradient kernels directly;
    # otherwise (a graph being built: create_graph, compile, export) the operators, which refuse a
    # double backward clearly.
    eager = not torch.is_grad_enabled() and not traced(grad_output) and not functorch_active()
    ops = _DIRECT if eager else getattr(torch.ops, NAMESPACE)
    if ctx.needs_input_grad[0]:
        grads[0] = ops.conv_input_grad(grad_output, input, weight, *ctx.layer)
    if ctx.needs_input_grad[1]:
        grads[1] = ops.conv_weight_grad(grad_output, input, weight, *ctx.layer)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grads[2] = ops.conv_bias_grad(grad_output, target)
    if ctx.has_residual and ctx.needs_input_grad[3]:
        grads[3] = grad_output
    return tuple(grads)


class _Direct:
    """The operators' real kernels by name, as ``torch.ops.tvm_conv`` offers them (no dispatcher)."""

    def __getattr__(self, name: str):
        return _KERNELS[name]


_DIRECT = _Direct()
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
#: what is left below autograd for plain CPU and CUDA tensors outside any mode: their backend alone
_BACKEND_ONLY = {torch._C.DispatchKeySet(key).raw_repr() for key in (torch._C.DispatchKey.CPU,
                                                                      torch._C.DispatchKey.CUDA)}


def _below_autograd(name: str, keyset, args):
    """The operator's work below autograd: its real kernel, called directly where nothing but the
    tensors' backend remains to dispatch to (``keyset`` None: a module's eager call), else
    redispatched (fake tensors, functionalization, dispatch modes: compile, export)."""
    if keyset is None or (keyset & _AFTER_AUTOGRAD).raw_repr() in _BACKEND_ONLY:
        return _KERNELS[name](*args)
    with torch._C._AutoDispatchBelowAutograd():
        op = getattr(getattr(torch.ops, NAMESPACE), name).default
        return op.redispatch(keyset & _AFTER_AUTOGRAD, *args)


def _function(name: str, transposed: Optional[bool]):
    """The autograd Function of operator ``name``: a layer's (``transposed`` set: ``_backward``) or a
    gradient's (None: double backward refused).  Its arguments are the operator's, then the
    dispatch keyset (None from the modules' eager calls).

    Written here rather than through ``torch.library.register_autograd`` (which builds the same
    Function) for the per-call cost.  Measured single-threaded, Conv2d(8, 8, 3, padding=1) on
    1x8x4x4 (kernels of 25-40 us): through the registered formula a training call took 268 us
    against 88 under no_grad, each gradient operator 118-137 us against 26-36 us for its kernel
    alone: torch's wrapper re-reads the 13-argument schema once per argument (``fill_defaults``, 75
    us) and redispatches even where only the backend is left.  The context is set up in
    ``forward``: a Function with a ``setup_context`` of its own binds its arguments through
    ``inspect.signature`` at every call (~100 us here); it would only serve functorch's transforms,
    which neither this nor the registered Function supported."""
    setup = _setup(transposed) if transposed is not None else None

    def forward(ctx, *args):
        *inputs, keyset = args
        output = _below_autograd(name, keyset, inputs)
        if setup is not None:
            setup(ctx, inputs, output)
        return output

    def backward(ctx, *grads):
        if setup is None:
            raise RuntimeError(f"{NAMESPACE}::{name}: double backward (differentiating a gradient of our "
                               "convolutions, e.g. create_graph=True then backward again) is not supported")
        return (*_backward(ctx, *grads), None)

    return type(f"{NAMESPACE}_{name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


_FUNCTIONS = {name: _function(name, {"conv2d": False, "conv_transpose2d": True}.get(name)) for name in _SCHEMAS}


def _autograd_kernel(name: str):
    """The operator's kernel for torch's Autograd dispatch key."""
    function, any_requires_grad = _FUNCTIONS[name], torch._C._any_requires_grad

    def kernel(keyset, *args):
        if torch.is_grad_enabled() and any_requires_grad(*args):
            return function.apply(*args, keyset)
        return _below_autograd(name, keyset, args)
    return kernel


for _name in _SCHEMAS:
    _LIBRARY.impl(_name, _autograd_kernel(_name), "Autograd", with_keyset=True)


def eager_autograd(name: str):
    """``tvm_conv::<name>`` for an eager call that autograd differentiates (not traced: see
    :func:`traced`): the operator's Function and kernels, without the dispatcher (under functorch's
    transforms, torch.func.grad, vmap..., the operator itself)."""
    if functorch_active():
        return getattr(getattr(torch.ops, NAMESPACE), name)
    return _EAGER[name]


def _eager_apply(function):
    return lambda *args: function.apply(*args, None)


_EAGER = {name: _eager_apply(_FUNCTIONS[name]) for name in ("conv2d", "conv_transpose2d")}


# ------------------------------------------------------------------------------ complex
#: torch's pads that have no ComplexHalf kernel (its complex32 layers with these modes raise).
_NO_COMPLEX_HALF_PAD = {"reflect": "reflection_pad2d", "replicate": "replication_pad2d"}


def check_complex(dtype: torch.dtype, padding_mode: str) -> None:
    """torch's NotImplementedError for complex32 layers padded by a mode it has no such pad for."""
    if dtype == torch.complex32 and padding_mode in _NO_COMPLEX_HALF_PAD:
        raise NotImplementedError(f'"{_NO_COMPLEX_HALF_PAD[padding_mode]}" not implemented for \'ComplexHalf\'')


def complex_convolution(real_conv, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """A complex convolution from three real ones, as torch's aten ``complex_convolution`` (Gauss's
    trick, the same formula, so the same roundings): ``a = conv(xr, wr, br)``, ``b = conv(xi, wi)``,
    ``c = conv(xr + xi, wr + wi, br + bi)``, result ``a - b + i (c - a - b)``.  ``real_conv(x, w, b)``
    is one of our real convolutions; autograd differentiates this composition as it does torch's."""
    xr, xi = torch.view_as_real(input.resolve_conj()).unbind(-1)
    wr, wi = torch.view_as_real(weight.resolve_conj()).unbind(-1)
    if bias is None:
        a, b, c = real_conv(xr, wr, None), real_conv(xi, wi, None), real_conv(xr + xi, wr + wi, None)
    else:
        br, bi = torch.view_as_real(bias.resolve_conj()).unbind(-1)
        a, b, c = real_conv(xr, wr, br), real_conv(xi, wi, None), real_conv(xr + xi, wr + wi, br + bi)
    return a - b + 1j * (c - a - b)

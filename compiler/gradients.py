"""Gradients of Conv2d and ConvTranspose2d, computed by the project's own kernels.

What autograd's backward formulas call (``compiler.ops``): each function validates its arguments
as torch would (RuntimeError, before any kernel runs), returns a new tensor of torch's gradient shape
and dtype, and gives zeros without running a kernel when there is nothing to sum (an empty batch).

- input: the adjoint layer (``ConvSpec.input_grad``) on ``grad_output``, our ConvTranspose2d kernel
  for a Conv2d and our Conv2d kernel for a ConvTranspose2d, with the same weight; where the adjoint
  yields the gradient of the padded input (reflect/replicate/circular padding, asymmetric pads, a
  transposed layer's extra rows), the ``pad_grad`` kernel folds it back onto the input.
- weight: the ``weight_grad`` kernel (``compute.weight_grad``), one definition for both families.
- bias: a sum per channel over images, rows and columns (``compute.bias_grad``).

Tensors are batched NCHW, float16/bfloat16/float32/float64, on the CPU or a CUDA GPU; ``target``
None means the tensors' device, ``tuning_database`` as the modules' attribute.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Dict, NamedTuple, Optional

import torch
import tvm
from tvm import te

from schedules import schedule_bias_grad

from . import compute, library_cache
from .build import ENTRY, Kernel, generation, get_kernel
from .modules import SUPPORTED_DTYPES, _device_target
from .ops import launch
from .request import PAD_GRAD, WEIGHT_GRAD, KernelRequest
from .spec import ConvSpec


def conv_input_grad(spec: ConvSpec, input_shape, weight: torch.Tensor, grad_output: torch.Tensor,
                    output_padding=None, *, target=None, tuning_database=None) -> torch.Tensor:
    """The gradient of the layer's input (shape ``input_shape``) for ``grad_output`` and ``weight``."""
    input_shape = tuple(int(d) for d in input_shape)
    _check_tensor("weight", weight, tuple(spec.weight_shape), grad_output)
    plan = _plan("input", spec, input_shape, output_padding, grad_output, target, tuning_database)
    if plan.kernel is None:
        return grad_output.new_zeros(input_shape)
    kernel, w = plan.kernel, weight.detach().contiguous()
    if kernel.pack is not None:
        packed = w.new_empty(kernel.packed_weight_shape)
        launch(kernel.pack, w, packed)
        w = packed
    result = grad_output.new_empty(kernel.request.output_shape)
    launch(kernel, grad_output.detach().contiguous(), w, result)
    if plan.fold is None:
        return result
    grad_input = grad_output.new_empty(input_shape)
    launch(plan.fold, result, grad_input)
    return grad_input


def conv_weight_grad(spec: ConvSpec, input: torch.Tensor, grad_output: torch.Tensor, output_padding=None, *,
                     target=None, tuning_database=None) -> torch.Tensor:
    """The gradient of the layer's weight (``spec.weight_shape``) for ``input`` and ``grad_output``."""
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise RuntimeError(f"expected a 4-D batched NCHW input tensor, got "
                           f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
    _check_tensor("input", input, tuple(input.shape), grad_output)
    plan = _plan("weight", spec, tuple(input.shape), output_padding, grad_output, target, tuning_database)
    if plan.kernel is None:
        return grad_output.new_zeros(plan.weight_shape)
    grad_weight = grad_output.new_empty(plan.weight_shape)
    launch(plan.kernel, input.detach().contiguous(), grad_output.detach().contiguous(), grad_weight)
    return grad_weight


def conv_bias_grad(grad_output: torch.Tensor, *, target=None) -> torch.Tensor:
    """The gradient of the bias: ``grad_output`` summed over images, rows and columns."""
    if not isinstance(grad_output, torch.Tensor) or grad_output.dim() != 4:
        raise RuntimeError("expected a 4-D batched NCHW grad_output tensor, got "
                           f"{tuple(grad_output.shape) if isinstance(grad_output, torch.Tensor) else grad_output!r}")
    dtype = _dtype_name(grad_output)
    channels = grad_output.shape[1]
    if grad_output.numel() == 0:
        return grad_output.new_zeros(channels)
    kernel = _bias_kernel(tuple(grad_output.shape), dtype, target or _device_target(grad_output.device))
    grad_bias = grad_output.new_empty(channels)
    launch(kernel, grad_output.detach().contiguous(), grad_bias)
    return grad_bias


# ---------------------------------------------------------------------------------------- plans
class _Plan(NamedTuple):
    weight_shape: tuple
    kernel: Optional[Kernel]         # None: nothing to sum (the gradient is zeros)
    fold: Optional[Kernel] = None    # the input gradient's pad_grad kernel, where the adjoint pads


#: (which, spec, input shape, output padding, grad_output's shape/dtype/device, target, database)
#: -> _Plan: a repeated backward skips the shape rules and the kernel-cache lookups (the modules'
#: dispatch memo does the same for the forward).
_PLANS: Dict[tuple, _Plan] = {}
_PLAN_MEMO_SIZE = 256


def _plan(which: str, spec: ConvSpec, input_shape: tuple, output_padding, grad_output, target, database) -> _Plan:
    """The validated kernels of one gradient (torch's errors on the first call with these arguments)."""
    if not isinstance(grad_output, torch.Tensor):
        raise TypeError(f"grad_output must be a Tensor, got {type(grad_output).__name__}")
    key = (which, spec, input_shape, None if output_padding is None else tuple(output_padding),
           tuple(grad_output.shape), grad_output.dtype, grad_output.device,
           None if target is None else str(target), database, generation())
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(which, spec, input_shape, output_padding, grad_output, target, database)
        if len(_PLANS) >= _PLAN_MEMO_SIZE:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _make_plan(which, spec, input_shape, output_padding, grad_output, target, database) -> _Plan:
    if len(input_shape) != 4:
        raise RuntimeError(f"expected a 4-D batched NCHW input shape, got {tuple(input_shape)}")
    dtype = _dtype_name(grad_output)
    output_shape = spec.output_shape(input_shape, output_padding)        # torch's forward errors
    if tuple(grad_output.shape) != tuple(output_shape):
        raise RuntimeError(f"Mismatch in shape: grad_output has a shape of {tuple(grad_output.shape)} and "
                           f"output has a shape of {tuple(output_shape)}")
    weight_shape = tuple(spec.weight_shape)
    if 0 in input_shape or 0 in output_shape:
        return _Plan(weight_shape, None)
    spec = _unbiased(spec)
    target = target or _device_target(grad_output.device)
    if which == "weight":
        request = KernelRequest(spec, input_shape, dtype, output_padding, operator=WEIGHT_GRAD)
        return _Plan(weight_shape, get_kernel(request, target, database=database))
    adjoint = spec.input_grad(input_shape, output_padding)
    request = KernelRequest(adjoint.spec, tuple(output_shape), dtype, adjoint.output_padding)
    kernel = get_kernel(request, target, prepacked=True, database=database)
    fold = None
    if adjoint.folds:
        fold = get_kernel(KernelRequest(spec, input_shape, dtype, output_padding, operator=PAD_GRAD), target,
                          database=database)
    return _Plan(weight_shape, kernel, fold)


# ---------------------------------------------------------------------------------------- checks
def _dtype_name(t: torch.Tensor) -> str:
    if t.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(f"gradients are computed for float16, bfloat16, float32 and float64 tensors, "
                           f"got {t.dtype}")
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"gradients are computed on CPUs and NVIDIA GPUs, got a tensor on {t.device}")
    return SUPPORTED_DTYPES[t.dtype]


def _check_tensor(name: str, tensor, shape: tuple, grad_output: torch.Tensor) -> None:
    """torch's RuntimeError for an operand of the wrong shape, dtype or device."""
    if not isinstance(grad_output, torch.Tensor):
        raise TypeError(f"grad_output must be a Tensor, got {type(grad_output).__name__}")
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != shape:
        raise RuntimeError(f"expected {name} of shape {list(shape)}, got {list(tensor.shape)}")
    if tensor.dtype != grad_output.dtype:
        raise RuntimeError(f"expected {name} and grad_output to have the same dtype, but got "
                           f"{tensor.dtype} and {grad_output.dtype}")
    if tensor.device != grad_output.device:
        raise RuntimeError(f"expected {name} and grad_output on the same device, but got "
                           f"{tensor.device} and {grad_output.device}")


def _unbiased(spec: ConvSpec) -> ConvSpec:
    """The layer without its bias: no gradient kernel reads it, so both share one kernel."""
    return dataclasses.replace(spec, bias=False) if spec.bias else spec


# ---------------------------------------------------------------------------------------- kernels
_BIAS_KERNELS: Dict[tuple, object] = {}
_BIAS_LOCK = threading.Lock()


def _bias_kernel(shape: tuple, dtype: str, target) -> object:
    """The bias-gradient kernel for ``grad_output``'s shape and dtype on ``target``, compiled once."""
    key = (shape, dtype, str(target))
    with _BIAS_LOCK:
        kernel = _BIAS_KERNELS.get(key)
        if kernel is None:
            func = te.create_prim_func(compute.bias_grad(shape, dtype)).with_attr("global_symbol", ENTRY)
            mod = tvm.IRModule({ENTRY: schedule_bias_grad(func, target).mod["main"]})
            executable, _ = library_cache.load(mod, target)
            kernel = _BIAS_KERNELS[key] = executable[ENTRY]
    return kernel


__all__ = ["conv_input_grad", "conv_weight_grad", "conv_bias_grad"]

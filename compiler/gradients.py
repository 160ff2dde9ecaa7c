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
from typing import Dict, Sequence

import torch
import tvm
import tvm_ffi
from tvm import te

from schedules import schedule_bias_grad

from . import compute, library_cache
from .build import ENTRY, get_kernel
from .modules import SUPPORTED_DTYPES, _device_target
from .request import PAD_GRAD, WEIGHT_GRAD, KernelRequest
from .spec import ConvSpec


def conv_input_grad(spec: ConvSpec, input_shape, weight: torch.Tensor, grad_output: torch.Tensor,
                    output_padding=None, *, target=None, tuning_database=None) -> torch.Tensor:
    """The gradient of the layer's input (shape ``input_shape``) for ``grad_output`` and ``weight``."""
    input_shape = tuple(int(d) for d in input_shape)
    dtype = _check(spec, input_shape, output_padding, grad_output, weight=weight)
    if 0 in input_shape or grad_output.numel() == 0:
        return grad_output.new_zeros(input_shape)
    spec = _unbiased(spec)
    adjoint = spec.input_grad(input_shape, output_padding)
    target = target or _device_target(grad_output.device)
    request = KernelRequest(adjoint.spec, tuple(grad_output.shape), dtype, adjoint.output_padding)
    kernel = get_kernel(request, target, prepacked=True, database=tuning_database)
    w = weight.detach().contiguous()
    if kernel.pack is not None:
        packed = w.new_empty(kernel.packed_weight_shape)
        _launch(kernel.pack, w, packed)
        w = packed
    result = grad_output.new_empty(request.output_shape)
    _launch(kernel, grad_output.detach().contiguous(), w, result)
    if not adjoint.folds:
        return result
    fold = get_kernel(KernelRequest(spec, input_shape, dtype, output_padding, operator=PAD_GRAD), target,
                      database=tuning_database)
    grad_input = grad_output.new_empty(input_shape)
    _launch(fold, result, grad_input)
    return grad_input


def conv_weight_grad(spec: ConvSpec, input: torch.Tensor, grad_output: torch.Tensor, output_padding=None, *,
                     target=None, tuning_database=None) -> torch.Tensor:
    """The gradient of the layer's weight (``spec.weight_shape``) for ``input`` and ``grad_output``."""
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise RuntimeError(f"expected a 4-D batched NCHW input tensor, got "
                           f"{tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__}")
    dtype = _check(spec, tuple(input.shape), output_padding, grad_output, input=input)
    if input.numel() == 0 or grad_output.numel() == 0:
        return grad_output.new_zeros(spec.weight_shape)
    request = KernelRequest(_unbiased(spec), tuple(input.shape), dtype, output_padding, operator=WEIGHT_GRAD)
    kernel = get_kernel(request, target or _device_target(input.device), database=tuning_database)
    grad_weight = grad_output.new_empty(spec.weight_shape)
    _launch(kernel, input.detach().contiguous(), grad_output.detach().contiguous(), grad_weight)
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
    _launch(kernel, grad_output.detach().contiguous(), grad_bias)
    return grad_bias


# ---------------------------------------------------------------------------------------- checks
def _dtype_name(t: torch.Tensor) -> str:
    if t.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(f"gradients are computed for float16, bfloat16, float32 and float64 tensors, "
                           f"got {t.dtype}")
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"gradients are computed on CPUs and NVIDIA GPUs, got a tensor on {t.device}")
    return SUPPORTED_DTYPES[t.dtype]


def _check(spec: ConvSpec, input_shape: Sequence[int], output_padding, grad_output: torch.Tensor,
           **others: torch.Tensor) -> str:
    """torch's errors for a backward call: shapes (the forward's own rules first), dtypes, devices."""
    if len(input_shape) != 4:
        raise RuntimeError(f"expected a 4-D batched NCHW input shape, got {tuple(input_shape)}")
    if not isinstance(grad_output, torch.Tensor):
        raise TypeError(f"grad_output must be a Tensor, got {type(grad_output).__name__}")
    dtype = _dtype_name(grad_output)
    output_shape = spec.output_shape(input_shape, output_padding)        # torch's forward errors
    if tuple(grad_output.shape) != tuple(output_shape):
        raise RuntimeError(f"Mismatch in shape: grad_output has a shape of {tuple(grad_output.shape)} and "
                           f"output has a shape of {tuple(output_shape)}")
    expected = {"weight": tuple(spec.weight_shape), "input": tuple(input_shape)}
    for name, tensor in others.items():
        if tuple(tensor.shape) != expected[name]:
            raise RuntimeError(f"expected {name} of shape {list(expected[name])}, got {list(tensor.shape)}")
        if tensor.dtype != grad_output.dtype:
            raise RuntimeError(f"expected {name} and grad_output to have the same dtype, but got "
                               f"{tensor.dtype} and {grad_output.dtype}")
        if tensor.device != grad_output.device:
            raise RuntimeError(f"expected {name} and grad_output on the same device, but got "
                               f"{tensor.device} and {grad_output.device}")
    return dtype


def _unbiased(spec: ConvSpec) -> ConvSpec:
    """The layer without its bias: no gradient kernel reads it, so both share one kernel."""
    return dataclasses.replace(spec, bias=False) if spec.bias else spec


# ---------------------------------------------------------------------------------------- kernels
def _launch(kernel, *tensors: torch.Tensor) -> None:
    """Run ``kernel`` on ``tensors`` (CUDA ones on torch's current stream of their device)."""
    if tensors[-1].is_cuda:
        with torch.cuda.device(tensors[-1].device), tvm_ffi.use_torch_stream():
            kernel(*tensors)
    else:
        kernel(*tensors)


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

"""``Conv2d`` and ``ConvTranspose2d``: torch.nn modules whose forward runs the project's own kernels.

Constructor signatures, defaults, attributes, parameter shapes and initialisation, ``extra_repr``
and errors are torch's (2.13), so ``state_dict`` moves both ways between these and ``torch.nn``.
Inputs and outputs cross into TVM through DLPack (no copies): the kernel writes straight into the
returned tensor.  Kernels are compiled on first use per (layer, input shape, dtype, target) and
cached for the process; ``module.kernel`` is the last one used (``.schedule``, ``.target``).
Where autograd, torch.compile/export, fx or jit tracing needs it, a call goes through the torch
operators of ``compiler.ops`` (differentiable, traceable); plain inference calls the kernel directly,
which costs ~20 us less per call.  complex32/64/128 are computed as torch computes them: three real
convolutions of the component dtype (``ops.complex_convolution``).

Where the schedule wants the weights in a blocked layout, they are packed once and kept beside the
weight tensor (ops.packed_weight); torch's version counter (bumped by every in-place update, ``load_state_dict`` included) and
the tensor's identity and address say when to repack.  Writes through ``weight.data`` bypass that
counter, as they bypass autograd: call ``module.drop_packed_weights()`` after them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

import torch
from torch import nn
from torch.nn import init

from targets import PRESETS, GpuPreset, host_target

from . import ops
from .build import Kernel, generation
from .request import NCHW, NHWC, Epilogue
from .spec import ConvSpec

_TENSOR = torch.Tensor

#: The real dtypes the kernels compute in (complex ones: ``ops.COMPLEX_DTYPES``).
SUPPORTED_DTYPES = ops.REAL_DTYPES
#: Every dtype a module takes.
MODULE_DTYPES = {**SUPPORTED_DTYPES, **ops.COMPLEX_DTYPES}


#: Distinct (layer, input shape, ...) combinations one module remembers before starting over.
_DISPATCH_MEMO_SIZE = 64


class _ConvBase(nn.Module):
    """Shared parameter ownership, initialisation, validation and kernel dispatch."""

    _op_name = "conv2d"

    def __init__(self, spec: ConvSpec, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        probe = torch.empty(0, **factory)
        self._check_dtype(probe.dtype)
        if probe.device.type not in ("cpu", "cuda", "meta"):
            raise RuntimeError(f"{type(self).__name__} runs on CPUs and NVIDIA GPUs (and shapes on meta "
                               f"tensors); got device {probe.device}")
        self.in_channels = spec.in_channels
        self.out_channels = spec.out_channels
        self.kernel_size = spec.kernel_size
        self.stride = spec.stride
        self.padding = spec.padding
        self.dilation = spec.dilation
        self.transposed = spec.transposed
        self.output_padding = spec.output_padding
        self.groups = spec.groups
        self.padding_mode = spec.padding_mode
        if isinstance(spec.padding, str) or len(spec.padding) == 2:   # torch's F.pad order
            pt, pb, pl, pr = spec.pads
            reversed_twice = [pl, pr, pt, pb]     # torch keeps a list for 'same'/'valid', a tuple otherwise
            self._reversed_padding_repeated_twice = (
                reversed_twice if isinstance(spec.padding, str) else tuple(reversed_twice))
        self.weight = nn.Parameter(torch.empty(spec.weight_shape, **factory))
        if spec.bias:
            self.bias = nn.Parameter(torch.empty(spec.out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.target = None      # None: the input's device (the host CPU, or its GPU's cuda/sm_XX)
        #: what the kernel applies after the bias (compiler.fusion's modules set it; plain layers: none)
        self.epilogue = Epilogue()
        #: tuning records to look up: a folder, None ($TVM_CONV_DATABASE or the shipped
        #: tuning_logs/<target key>), or False (hand-written schedules only)
        self.tuning_database = None
        self.kernel: Optional[Kernel] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch 2.13's ``_ConvNd.reset_parameters``, call for call, so a shared seed gives identical
        parameters: a weight in another memory format is drawn in a contiguous buffer and copied back,
        and the bias is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), U(0, 0) when fan_in is 0."""
        with torch.no_grad():
            if not self.weight.is_contiguous():
                buffer = torch.empty_like(self.weight, memory_format=torch.contiguous_format)
                init.kaiming_uniform_(buffer, a=math.sqrt(5))
                self.weight.copy_(buffer)
            else:
                init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * len(self.padding):
            s += ", padding={padding}"
        if self.dilation != (1,) * len(self.dilation):
            s += ", dilation={dilation}"
        if self.output_padding != (0,) * len(self.output_padding):
            s += ", output_padding={output_padding}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode={padding_mode}"
        return s.format(**self.__dict__)

    @property
    def schedule(self) -> Optional[str]:
        """The schedule that served the last call (None before the first call)."""
        return self.kernel.schedule if self.kernel is not None else None

    def drop_packed_weights(self) -> None:
        """Forget the packed copy of the weights (the next call repacks them)."""
        self.__dict__.pop("_repeat_record", None)
        ops.drop_packed_weight(self.weight)

    def _kernel_weight(self, kernel: Kernel) -> torch.Tensor:
        """The weight as ``kernel`` takes it: torch's layout, or packed once per weight change (one
        cache with the operators' calls, keyed by the weight tensor itself)."""
        return ops.packed_weight(kernel, self.weight)

    # ------------------------------------------------------------------ forward
    def _spec(self) -> ConvSpec:
        """The layer as torch's forward sees it now: stride, padding, dilation, groups and mode from
        the attributes, channels and kernel size from the weight tensor itself (torch's forward never
        reads ``in_channels``/``kernel_size``, so a replaced weight of another shape is what counts)."""
        return ops.layer_spec(self.transposed, self.weight.shape, self.bias is not None, self.stride,
                              self.padding, self.dilation, self.groups, self.padding_mode, self.output_padding)

    def _check_dtype(self, dtype: torch.dtype) -> None:
        if dtype not in MODULE_DTYPES:
            raise RuntimeError(f"{type(self).__name__} computes in {', '.join(map(str, MODULE_DTYPES))}; "
                               f"its parameters are {dtype}")

    def _check_input(self, input) -> None:
        ops.check_input(self._op_name, input, self.weight, MODULE_DTYPES, type(self).__name__)

    def _layer_key(self) -> tuple:
        """Everything of the module's own state that ``_spec`` and the bias check read (cheap to
        build: attribute reads, no validation)."""
        bias = self.bias
        return (tuple(self.weight.shape), tuple(self.stride), self.padding if isinstance(self.padding, str)
                else tuple(self.padding), tuple(self.dilation), self.groups, self.padding_mode,
                tuple(self.output_padding), None if bias is None else tuple(bias.shape))

    def _dispatch(self, x: torch.Tensor, output_padding, spec: Optional[ConvSpec] = None):
        """(output shape, kernel or None for empty outputs) for this call, memoised per module.

        The memo key holds everything the answer depends on (the module's attributes and parameter
        shapes, the input's shape, dtype and device, the target, the database setting, the process
        cache's generation, and torch's TF32 setting for this call), so a hit skips building the
        spec, the bias check, the shape rules and the kernel-cache lookup (together ~10 of a call's
        ~20 us of Python, measured) without changing what a call does: every error they raise is
        raised on the miss, and a changed attribute is a different key.
        """
        key = (self._layer_key(), output_padding, tuple(x.shape), x.dtype, x.device,
               None if self.target is None else str(self.target), self.tuning_database, generation(),
               self.epilogue, ops.kernel_layout(x, self.weight), ops.tf32_allowed(x.dtype, x.device))
        memo = self.__dict__.setdefault("_dispatch_memo", {})
        hit = memo.get(key)
        if hit is None:
            hit = ops.plan(spec or self._spec(), tuple(x.shape), x.dtype, x.device, output_padding, self.epilogue,
                           self.target or _device_target(x.device), self.tuning_database, self.weight.shape,
                           None if self.bias is None else self.bias.shape, key[-1], key[-2])
            if len(memo) >= _DISPATCH_MEMO_SIZE:
                memo.clear()
            memo[key] = hit
        self.__dict__["last_request"] = hit[2]          # what this call asked for (tune_model reads it)
        return hit[:2]

    def _run(self, input: torch.Tensor, output_padding=None, spec: Optional[ConvSpec] = None,
             residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The kernel on ``input``; ``residual`` (the epilogue's ``add`` input) has the output's shape."""
        batched = input.dim() == 4
        x = input if batched else input.unsqueeze(0)
        out_shape, kernel = self._dispatch(x, output_padding, spec)
        y = ops.new_output(x, out_shape, kernel)
        if kernel is not None:
            layout = kernel.request.layout
            args = [ops.in_layout(x, layout), self._kernel_weight(kernel)]
            if self.bias is not None:
                args.append(self.bias.detach().contiguous())
            if residual is not None:
                args.append(ops.in_layout(residual if batched else residual.unsqueeze(0), layout))
            ops.launch(kernel, *args, ops.in_layout(y, layout))
            if self.kernel is not kernel:
                self.kernel = kernel
        out = ops.in_torchs_format(y, x, self.weight)
        if kernel is not None and batched and spec is None and self._repeatable(x, out is y, residual, layout):
            parameters = tuple(args[1:len(args) - (residual is not None)])
            self.__dict__["_repeat_record"] = (self._repeat_key(x, residual), kernel, out_shape, parameters)
        return out if batched else out.squeeze(0)

    # ------------------------------------------------------------ a repeated inference call
    #: attributes whose values (immutable ones: tuples, str, int, None) the repeated call relies on
    _CALL_ATTRIBUTES = ("stride", "padding", "dilation", "groups", "padding_mode", "output_padding", "target",
                        "tuning_database", "epilogue")

    def _repeatable(self, x: torch.Tensor, kernel_output: bool, residual: Optional[torch.Tensor],
                    layout: str = NCHW) -> bool:
        """Whether a call on ``x`` (and a fused epilogue's ``residual``) may be repeated by
        ``_repeat``: the kernel reads them as they are (contiguous, or channels_last for an NHWC
        kernel), the output is the kernel's own (``kernel_output``: ``ops.in_torchs_format`` left
        it), and no attribute is a list (mutable in place, unseen by ``__setattr__``)."""
        form = torch.channels_last if layout == NHWC else torch.contiguous_format
        return kernel_output and x.is_contiguous(memory_format=form) and (
            residual is None or residual.is_contiguous(memory_format=form)) and not any(
            isinstance(self.__dict__.get(name), list) for name in self._CALL_ATTRIBUTES)

    def _repeat_key(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """What a repeated call must find unchanged to skip the checks and the dispatch memo: the
        input's shape, strides, dtype and device, the parameters' identity, storage, version (and
        the weight's strides: the output's memory format follows them), the
        kernel cache's generation and torch's TF32 setting (``ops.tf32_allowed``); the attributes are
        watched by ``__setattr__`` instead."""
        params = self._parameters
        w, b = params["weight"], params["bias"]
        return (x.shape, x.stride(), x.dtype, x.device, id(w), w.data_ptr(), w._version, w.stride(),
                None if b is None else (id(b), b.data_ptr(), b._version), generation(),
                ops.tf32_allowed(x.dtype, x.device),
                None if residual is None else (residual.shape, residual.stride(), residual.dtype, residual.device))

    def _repeat(self, x, residual=None) -> Optional[torch.Tensor]:
        """The output of a plain inference call identical in all but the input's values to the last
        recorded one (the same kernel on new data), or None to take the full path.  Measured on an
        SE layer, Conv2d(480, 20, 1) on 1x480x1x1 (a 3-7 us kernel, 2 threads): 58-85 us a call
        through the full path's checks, memo keys and attribute reads; on an H100, module calls with
        channels_last tensors (which had no repeated path) took 70-110 us at batch 1, kernels of a
        few us."""
        hit = self.__dict__.get("_repeat_record")
        if hit is None or type(x) is not _TENSOR or residual is not None and type(residual) is not _TENSOR:
            return None
        if ops.needs_operator(x, self._parameters["weight"], self._parameters["bias"], residual):
            return None
        key, kernel, out_shape, parameters = hit
        if self._repeat_key(x, residual) != key:
            return None
        if kernel.request.layout == NHWC:       # channels_last bytes as the NHWC kernel reads and writes them
            y = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
            tensors = (x.permute(0, 2, 3, 1), *parameters) + (() if residual is None else
                                                              (residual.permute(0, 2, 3, 1),))
            ops.launch(kernel, *tensors, y.permute(0, 2, 3, 1))
            return y
        y = x.new_empty(out_shape)
        if residual is None:
            ops.launch(kernel, x, *parameters, y)
        else:
            ops.launch(kernel, x, *parameters, residual, y)
        return y

    def __setattr__(self, name, value) -> None:
        self.__dict__.pop("_repeat_record", None)          # any attribute change: the next call takes the full path
        super().__setattr__(name, value)

    # ------------------------------------------------------------ the operators (autograd, tracing, complex)
    def _operator_args(self, residual, epilogue: str, output_size=None) -> tuple:
        """The operator's arguments after ``input, weight, bias`` (see ``ops._SCHEMAS``)."""
        where = (epilogue, ops.encode_target(self.target), ops.encode_database(self.tuning_database))
        if self.transposed:
            return (residual, list(self.stride), list(self.padding), list(self.output_padding),
                    output_size, list(self.kernel_size), self.groups, list(self.dilation)) + where
        text = isinstance(self.padding, str)
        return (residual, list(self.stride), [0, 0] if text else list(self.padding), self.padding if text else None,
                list(self.dilation), self.groups, self.padding_mode) + where

    def _convolve(self, input, residual=None, epilogue: str = "", output_size=None):
        """The layer through the operator (traced: compile, export, fx, jit.trace, fake tensors), the
        operator's formula as an autograd Function (an eager call autograd differentiates), or the
        operator's kernel called directly (complex layers outside autograd); complex layers are three
        real calls."""
        traced = ops.traced(input, self.weight, self.bias, residual)
        if traced:
            call = getattr(getattr(torch.ops, ops.NAMESPACE), self._op_name)
        elif ops.needs_operator(input, self.weight, self.bias, residual):
            call = ops.eager_autograd(self._op_name)        # the operator's formula, without the dispatcher
        else:
            call = ops.direct(self._op_name)
        if self._parameters["weight"].is_complex():
            if not isinstance(input, torch.fx.Proxy):
                self._check_input(input)
            ops.check_complex(self.weight.dtype, self.padding_mode)
            if residual is not None or epilogue:
                raise RuntimeError(f"{type(self).__name__}: fused epilogues are for real dtypes")
            tail = self._operator_args(None, "", output_size)
            return ops.complex_convolution(lambda x, w, b: call(x, w, b, *tail), input, self.weight, self.bias)
        if not traced and epilogue == "+".join(self.epilogue.steps):
            self._check_input(input)            # an eager autograd call: ``kernel``, ``last_request`` as direct ones
            x = input if input.dim() == 4 else input.unsqueeze(0)
            _, kernel = self._dispatch(x, *self._call_output_padding(input, output_size))
            self.kernel = kernel or self.kernel
        return call(input, self.weight, self.bias, *self._operator_args(residual, epilogue, output_size))

    def _call_output_padding(self, input, output_size=None):
        """(output padding, spec or None) of a call: the layer's, or what ``output_size`` asks for."""
        if not self.transposed:
            return None, None
        if output_size is None:
            return tuple(self.output_padding), None
        spec = self._spec()
        # torch sizes ``output_size`` with the kernel_size attribute, and convolves with the weight
        return tuple(dataclasses.replace(spec, kernel_size=tuple(self.kernel_size)).output_padding_for(
            tuple(input.shape), output_size)), spec

    def _plain(self, input) -> bool:
        """Whether a real call can run the kernel directly (see ``ops.needs_operator``)."""
        return not ops.needs_operator(input, self.weight, self.bias) and not self._parameters["weight"].is_complex()

    def __prepare_scriptable__(self):
        raise RuntimeError(f"compiler.{type(self).__name__} cannot be compiled by torch.jit.script (its forward "
                           "is Python that chooses kernels); use torch.jit.trace, torch.export or torch.compile, "
                           "which record it as the operator torch.ops.tvm_conv." + self._op_name)

    def __getstate__(self):
        """Pickling and deepcopy leave the compiled kernels, packed weights and memo behind: they
        belong to this process (the copy finds them again in the process's kernel cache)."""
        state = dict(self.__dict__)
        state.update(kernel=None, _dispatch_memo={}, last_request=None)
        state.pop("_repeat_record", None)
        return state


def _device_target(device: torch.device):
    """The target for tensors on ``device``: the host CPU, or the preset of that GPU's arch."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        arch = f"sm_{major}{minor}"
        return (PRESETS.get(arch) or GpuPreset(arch, torch.cuda.get_device_name(device))).target()
    return host_target()


class Conv2d(_ConvBase):
    """``torch.nn.Conv2d`` computed by TVM-generated kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        spec = ConvSpec.conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                               groups, bias, padding_mode)
        super().__init__(spec, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = self._repeat(input)
        if y is not None:
            return y
        if not self._plain(input):
            return self._convolve(input)
        self._check_input(input)
        return self._run(input)


class ConvTranspose2d(_ConvBase):
    """``torch.nn.ConvTranspose2d`` computed by TVM-generated kernels (no multiply-adds on zeros)."""

    _op_name = "conv_transpose2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        spec = ConvSpec.conv_transpose2d(in_channels, out_channels, kernel_size, stride, padding,
                                         output_padding, groups, bias, dilation, padding_mode)
        super().__init__(spec, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if output_size is None:
            y = self._repeat(input)
            if y is not None:
                return y
        if self.padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose2d')
        if not self._plain(input):
            return self._convolve(input, output_size=output_size if output_size is None or
                                  isinstance(output_size, torch.fx.Proxy) else list(output_size))
        self._check_input(input)
        return self._run(input, *self._call_output_padding(input, output_size))

"""Weights packed once per module and repacked exactly when they change (issue #3), and the packed
layouts themselves (blocks of output channels; a transposed layer's per-phase GEMM rows)."""
import pytest
import torch
import tvm
from hypothesis import HealthCheck, given, settings
from tvm import te

import compiler
from compiler import build, compute, ops
from compiler.request import KernelRequest
from compiler.spec import ConvSpec
from targets import host_target
from reference import assert_matches_torch, assert_output_matches
from test_random_configs import conv_transpose2d_cases


class CountingPack:
    """Wraps a kernel's pack function and counts its calls."""

    def __init__(self, kernel):
        self.inner, self.calls = kernel.pack, 0
        kernel.pack = self

    def __call__(self, *args):
        self.calls += 1
        self.inner(*args)


def _packed_layer():
    m = compiler.Conv2d(8, 32, 3, padding=1)
    x = torch.randn(1, 8, 14, 14)
    m(x)
    assert m.kernel.pack is not None and m.kernel.weight_block, m.schedule
    return m, x, CountingPack(m.kernel)


def test_calls_do_not_repack_unchanged_weights():
    m, x, pack = _packed_layer()
    m.drop_packed_weights()
    for _ in range(3):
        assert_matches_torch(m, x)
    assert pack.calls == 1


def test_in_place_update_repacks():
    m, x, pack = _packed_layer()
    with torch.no_grad():
        m.weight.mul_(-2.0)
    assert_matches_torch(m, x)
    assert pack.calls == 1
    m(x)
    assert pack.calls == 1


def test_load_state_dict_repacks():
    m, x, pack = _packed_layer()
    other = torch.nn.Conv2d(8, 32, 3, padding=1)
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(m(x), other(x).detach(), rtol=1e-5, atol=1e-5)
    assert pack.calls == 1


def test_new_parameter_and_data_swap_repack():
    m, x, pack = _packed_layer()
    m.weight = torch.nn.Parameter(torch.randn_like(m.weight))
    assert_matches_torch(m, x)
    m.weight.data = torch.randn_like(m.weight)      # new storage: a new address
    assert_matches_torch(m, x)
    assert pack.calls == 2


def test_writes_through_data_need_drop_packed_weights():
    m, x, pack = _packed_layer()
    m.weight.data.mul_(3.0)           # bypasses the version counter, as it bypasses autograd
    m.drop_packed_weights()
    assert_matches_torch(m, x)
    assert pack.calls == 1


def test_packed_kernel_takes_blocked_weights_and_exports_take_torch_layout():
    spec = compiler.ConvSpec.conv2d(8, 32, 3, padding=1)
    shape = (1, 8, 14, 14)
    packed = build.compile_kernel(KernelRequest(spec, shape, "float32"), host_target(), prepacked=True)
    plain = build.compile_kernel(KernelRequest(spec, shape, "float32"), host_target())
    assert packed.schedule == plain.schedule == "cpu-channel-vector"
    block = packed.weight_block
    assert packed.packed_weight_shape == (32 // block, 8, 3, 3, block) and plain.pack is None
    w, x, b = torch.randn(32, 8, 3, 3), torch.randn(*shape), torch.randn(32)
    wp = w.reshape(32 // block, block, 8, 3, 3).permute(0, 2, 3, 4, 1).contiguous()
    y1, y2 = torch.empty(1, 32, 14, 14), torch.empty(1, 32, 14, 14)
    packed(x, wp, b, y1)
    plain(x, w, b, y2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)


def _run_packed_transposed(spec, x, m, layout: str) -> torch.Tensor:
    """The transposed compute with its weight packed per output phase (``compute.PhaseTaps``): the
    pack and the convolution each compiled unscheduled for the host, run on ``m``'s weight."""
    packing = compute.PhaseTaps(layout)
    request = KernelRequest(spec, tuple(x.shape), "float64", spec.output_padding, layout=layout)
    pack = tvm.compile(te.create_prim_func(compute.pack_weight(spec, "float64", packing)), target=host_target())
    packed = torch.empty(compute.packed_weight_shape(spec, packing), dtype=torch.float64)
    pack(m.weight.detach(), packed)
    conv = tvm.compile(build.prim_func(request, packing), target=host_target())
    y = ops.new_output(x, request.output_shape, type("K", (), {"request": request}))
    conv(ops.in_layout(x, layout), packed, *([m.bias.detach()] if m.bias is not None else []),
         ops.in_layout(y, layout))
    return y


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(conv_transpose2d_cases())
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_phase_packed_transposed_weight_computes_torchs_numbers(layout, case):
    """A transposed layer's weight packed per phase (zero taps past the kernel's edge; phases without
    taps where stride and dilation share a factor), random layers, float64."""
    args, kw, shape = case
    m = torch.nn.ConvTranspose2d(*args, **kw, dtype=torch.float64)
    spec = ops.layer_spec(True, m.weight.shape, m.bias is not None, m.stride, m.padding, m.dilation, m.groups,
                          "zeros", m.output_padding)
    x = torch.randn(*shape, dtype=torch.float64)
    assert_output_matches(m, x, _run_packed_transposed(spec, x, m, layout), operand_roundoff=0.0)


def test_phase_packing_is_the_transposed_forms_own():
    """``PhaseTaps`` packs a transposed layer's weight for a kernel of its layout, nothing else."""
    transposed, conv = ConvSpec.conv_transpose2d(16, 8, 4, stride=2, padding=1), ConvSpec.conv2d(16, 8, 3)
    with pytest.raises(ValueError, match="not the packing"):
        build.prim_func(KernelRequest(transposed, (1, 16, 5, 5), "float32", (0, 0)), compute.PhaseTaps("NHWC"))
    with pytest.raises(ValueError, match="transposed"):
        build.prim_func(KernelRequest(conv, (1, 16, 5, 5), "float32"), compute.PhaseTaps())
    # (sh, sw, groups, co/groups, K): 2 x 2 taps per phase of the 4x4 kernel, (ci, jh, jw) for NCHW
    assert compute.packed_weight_shape(transposed, compute.PhaseTaps()) == (2, 2, 1, 8, 16, 2, 2)
    assert compute.packed_weight_shape(transposed, compute.PhaseTaps("NHWC")) == (2, 2, 1, 8, 2, 2, 16)

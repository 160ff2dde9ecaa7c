"""Weights packed once per module and repacked exactly when they change (issue #3)."""
import torch

import compiler
from compiler import build
from compiler.request import KernelRequest
from targets import host_target
from reference import assert_matches_torch


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

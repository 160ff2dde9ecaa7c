"""Models with our layers under torch.compile, torch.export, torch.fx and torch.jit: the same numbers
as eager (the same kernels run: equality is exact), gradients through compiled models, clear errors."""
import pytest
import torch
from torch import nn

import compiler


class Net(nn.Module):
    """Both families, a padding mode, groups, output_size and torch ops between our layers."""

    def __init__(self):
        super().__init__()
        self.stem = compiler.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.down = compiler.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.up = compiler.ConvTranspose2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.up(self.down(h), output_size=x.shape)


def _net_and_input():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 3, 12, 10)


def _ops_in(graph: torch.fx.Graph):
    return {str(n.target) for n in graph.nodes if n.op == "call_function" and "tvm_conv" in str(n.target)}


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_matches_eager(backend):
    net, x = _net_and_input()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), net(x))
    xg = x.clone().requires_grad_()
    compiled(xg).square().sum().backward()
    grads = [xg.grad] + [p.grad for p in net.parameters()]
    net.zero_grad()
    xe = x.clone().requires_grad_()
    net(xe).square().sum().backward()
    for got, expected in zip(grads, [xe.grad] + [p.grad for p in net.parameters()]):
        assert got is not None and torch.equal(got, expected)


def test_export_and_run_the_exported_program():
    net, x = _net_and_input()
    program = torch.export.export(net, (x,))
    assert _ops_in(program.graph) == {"tvm_conv.conv2d.default", "tvm_conv.conv_transpose2d.default"}
    with torch.no_grad():
        assert torch.equal(program.module()(x), net(x))


def test_export_of_a_converted_fused_model():
    from compiler import zoo
    torch.manual_seed(1)
    model = zoo.make("dcgan_generator").eval()
    z = torch.randn(2, 100, 1, 1)
    fast = compiler.convert(model, z)
    program = torch.export.export(fast, (z,))
    assert "tvm_conv.conv_transpose2d.default" in _ops_in(program.graph)
    with torch.no_grad():
        assert torch.equal(program.module()(z), fast(z))


def test_fx_symbolic_trace_records_the_operators():
    net, x = _net_and_input()
    traced = torch.fx.symbolic_trace(net)
    assert _ops_in(traced.graph) == {"tvm_conv.conv2d", "tvm_conv.conv_transpose2d"}
    with torch.no_grad():
        assert torch.equal(traced(x), net(x))
        assert torch.equal(traced(x[:1]), net(x[:1]))          # output_size stays symbolic


def test_jit_trace_matches_eager():
    net, x = _net_and_input()
    with torch.no_grad():
        traced = torch.jit.trace(net, (x,))
        assert "tvm_conv::conv2d" in str(traced.inlined_graph)
        assert torch.equal(traced(x), net(x))


def test_jit_script_refuses_clearly():
    with pytest.raises(RuntimeError, match="cannot be compiled by torch.jit.script.*torch.jit.trace"):
        torch.jit.script(Net())


def test_fake_tensors_give_shapes_without_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode
    m = compiler.ConvTranspose2d(4, 2, 3, stride=2)
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = m(torch.empty(5, 4, 7, 7), output_size=[16, 16])
    assert tuple(y.shape) == (5, 2, 16, 16) and m.kernel is None
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(RuntimeError, match="expected input"):
        compiler.Conv2d(3, 4, 3)(torch.empty(1, 5, 8, 8))


def test_operator_runs_its_kernel_without_redispatch_on_plain_tensors(monkeypatch):
    """The operators' Autograd kernel (compiler/ops.py ``_below_autograd``) calls the real kernel
    itself where only the tensors' backend is left below autograd (a compiled graph's calls), and
    redispatches otherwise (fake tensors: the fake kernel, no TVM call)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from compiler import ops
    redispatched = []
    real = torch._ops.OpOverload.redispatch
    monkeypatch.setattr(torch._ops.OpOverload, "redispatch",
                        lambda self, *a, **k: redispatched.append(str(self)) or real(self, *a, **k))
    m = compiler.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 6, 5)
    args = (None, [1, 1], [1, 1], None, [1, 1], 1, "zeros", "", None, None)
    with torch.no_grad():
        assert torch.equal(torch.ops.tvm_conv.conv2d(x, m.weight, m.bias, *args), m(x))
    y = torch.ops.tvm_conv.conv2d(x.requires_grad_(), m.weight, m.bias, *args)
    y.sum().backward()
    assert redispatched == [] and x.grad is not None and m.weight.grad is not None
    launched = []
    monkeypatch.setattr(ops, "launch", lambda *a: launched.append(a))
    mode = FakeTensorMode()
    fx, fw = mode.from_tensor(x.detach()), mode.from_tensor(m.weight.detach())
    with mode:
        assert torch.ops.tvm_conv.conv2d(fx, fw, None, *args).shape == (1, 4, 6, 5)
    assert redispatched == ["tvm_conv.conv2d.default"] and launched == []

"""Gradients through our layers (tvm_conv operators, compiler.gradients' kernels) against torch's.

The bound is the forward's (tests/reference.py) applied to each gradient, itself a sum of products:
the input gradient sums ``out_channels/groups * kh * kw`` products per element (three times as many
positions where reflect/replicate/circular padding folds the pad back: each input element is read by
itself and at most one mirrored or wrapped copy per side, per dimension), the weight gradient
``N * OH * OW`` (transposed: ``N * IH * IW``), the bias gradient ``N * OH * OW``; the magnitude
``sum |a * b|`` is torch's gradient of the same layer on absolute values.  float64 throughout.
"""
import copy
import random

import pytest
import torch
from torch import nn

import compiler
from reference import UNIT_ROUNDOFF, torch_twin

U = UNIT_ROUNDOFF[torch.float64]


def _grads(layer, x, g, **kwargs):
    x = x.detach().requires_grad_()
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    return torch.autograd.grad(layer(x, **kwargs), [x] + params, g)


def assert_grads_match(ours, x, **kwargs):
    """Input, weight and bias gradients of ``ours`` on ``x`` (float64) against its torch twin's."""
    ours = ours.double()
    x = x.double()
    ref = torch_twin(ours)
    with torch.no_grad():
        g = torch.randn_like(ref(x, **kwargs))
    got = _grads(ours, x, g, **kwargs)
    exact = _grads(ref, x, g, **kwargs)
    absolute = copy.deepcopy(ref)
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
    magnitude = _grads(absolute, x.abs(), g.abs(), **kwargs)
    kh, kw = ours.kernel_size
    n = max(x.shape[0] if x.dim() == 4 else 1, 1)
    pixels = max(g.shape[-1] * g.shape[-2], x.shape[-1] * x.shape[-2])
    folds = 1 if ours.padding_mode == "zeros" else 9
    terms = [ours.out_channels // ours.groups * kh * kw * folds, n * pixels, n * pixels]
    for name, a, b, m, k in zip(("input", "weight", "bias"), got, exact, magnitude, terms):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        bound = k * U * m + U * b.abs() + k * torch.finfo(torch.float64).smallest_normal
        err = (a - b).abs()
        assert bool((err <= bound).all()), f"{name} gradient: error {err.max().item():.3e} over the bound"


CONV_GRID = [
    ("Conv2d(3, 4, 3)", (2, 3, 9, 8)),
    ("Conv2d(4, 6, 3, stride=2, padding=1)", (2, 4, 11, 10)),
    ("Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 3))", (1, 4, 12, 13)),
    ("Conv2d(6, 6, 3, padding=1, groups=3)", (2, 6, 7, 7)),
    ("Conv2d(4, 8, 3, padding=1, groups=4)", (1, 4, 8, 9)),
    ("Conv2d(4, 4, 4, padding='same')", (1, 4, 7, 6)),
    ("Conv2d(4, 4, 3, padding='valid', bias=False)", (1, 4, 7, 6)),
    ("Conv2d(3, 5, 3, padding=2, padding_mode='reflect')", (2, 3, 7, 8)),
    ("Conv2d(3, 5, 3, stride=2, padding=(1, 2), padding_mode='replicate')", (1, 3, 9, 7)),
    ("Conv2d(3, 5, (2, 3), padding=(1, 3), padding_mode='circular')", (1, 3, 6, 5)),
    ("Conv2d(3, 4, 3, padding=1)", (3, 8, 8)),                       # unbatched
    ("Conv2d(3, 4, 3, padding=1)", (0, 3, 8, 8)),                    # empty batch
]
TRANSPOSED_GRID = [
    ("ConvTranspose2d(4, 3, 3)", (2, 4, 5, 6)),
    ("ConvTranspose2d(4, 6, 4, stride=2, padding=1)", (1, 4, 5, 5)),
    ("ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)", (2, 4, 4, 5)),
    ("ConvTranspose2d(6, 4, 3, stride=(2, 3), padding=(0, 1), groups=2, dilation=(1, 2))", (1, 6, 4, 4)),
    ("ConvTranspose2d(4, 4, 3, stride=3, output_padding=(2, 1), dilation=3, bias=False)", (1, 4, 3, 4)),
    ("ConvTranspose2d(4, 2, 3, stride=2, padding=1)", (4, 5, 5)),    # unbatched
    ("ConvTranspose2d(4, 2, 3, stride=2, padding=1)", (0, 4, 5, 5)),  # empty batch
]


def _layer(text):
    from compiler.layers import parse_layer
    return parse_layer(text)


@pytest.mark.parametrize("text,shape", CONV_GRID + TRANSPOSED_GRID, ids=str)
def test_gradients_match_torch(text, shape):
    torch.manual_seed(0)
    assert_grads_match(_layer(text), torch.randn(*shape))


@pytest.mark.parametrize("size", [[9, 10], [1, 2, 10, 9]], ids=str)
def test_output_size_gradients(size):
    torch.manual_seed(1)
    m = compiler.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    assert_grads_match(m, torch.randn(1, 2, 5, 5), output_size=size)


def _random_layer(rng: random.Random):
    transposed = rng.random() < 0.4
    groups = rng.choice([1, 1, 2, 3])
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    k = (rng.randint(1, 4), rng.randint(1, 4))
    s, d = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 2), rng.randint(1, 2))
    p = (rng.randint(0, k[0] - 1), rng.randint(0, k[1] - 1))
    n, h, w = rng.randint(0, 2), rng.randint(4, 9), rng.randint(4, 9)
    bias = rng.random() < 0.7
    if transposed:
        op = tuple(rng.randint(0, max(s[i], d[i]) - 1) for i in range(2))
        return compiler.ConvTranspose2d(cin, cout, k, s, p, op, groups, bias, d), (n, cin, h, w)
    mode = rng.choice(["zeros", "reflect", "replicate", "circular"])
    p = tuple(min(pi, min(h, w) - 1) for pi in p)
    return compiler.Conv2d(cin, cout, k, s, p, d, groups, bias, mode), (n, cin, h + 4, w + 4)


@pytest.mark.parametrize("seed", range(16))
def test_random_configurations(seed):
    rng = random.Random(1000 + seed)
    torch.manual_seed(seed)
    layer, shape = _random_layer(rng)
    assert_grads_match(layer, torch.randn(*shape))


@pytest.mark.parametrize("layer,shape", [
    (lambda: compiler.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect"), (1, 2, 5, 6)),
    (lambda: compiler.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1, groups=2), (1, 2, 3, 3)),
], ids=["conv-reflect", "transposed-grouped"])
def test_gradcheck(layer, shape):
    torch.manual_seed(2)
    m = layer().double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.ops.tvm_conv.conv2d(
        x, w, b, None, list(m.stride), list(m.padding), None, list(m.dilation), m.groups, m.padding_mode, "", None,
        None) if not m.transposed else torch.ops.tvm_conv.conv_transpose2d(
        x, w, b, None, list(m.stride), list(m.padding), list(m.output_padding), None, list(m.kernel_size),
        m.groups, list(m.dilation), "", None, None), (x, m.weight, m.bias))


def test_the_issue_model_trains_every_parameter():
    """nn.Conv2d -> compiler.Conv2d -> nn.Linear: one SGD step changes every parameter as torch's."""
    def model(cls):
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(3, 4, 3), cls(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).double()

    ours, theirs = model(compiler.Conv2d), model(nn.Conv2d)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = [p.detach().clone() for p in ours.parameters()]
    for m in (ours, theirs):
        torch.optim.SGD(m.parameters(), lr=0.1).zero_grad()
        m(x).square().sum().backward()
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    for p, q, b in zip(ours.parameters(), theirs.parameters(), before):
        assert p.grad is not None and not torch.equal(p, b)
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


class SmallCNN(nn.Module):
    def __init__(self, conv, transposed):
        super().__init__()
        self.stem = conv(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
        self.body = conv(8, 8, 3, padding=1, groups=2)
        self.up = transposed(8, 4, 4, stride=2, padding=1)
        self.head = conv(4, 1, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.body(h)) + h
        return self.head(torch.relu(self.up(h)))


def test_training_tracks_torch():
    """A few SGD steps of a small CNN beside torch's, same seeds: losses and parameters agree.

    float64: each gradient is within ``K * u`` (K <= 2 * 16 * 16 = 512 terms) of torch's relative to
    its magnitude, ~6e-14; three steps at lr 0.05 on this well-scaled network stay far below 1e-10."""
    def model(conv, transposed):
        torch.manual_seed(4)
        return SmallCNN(conv, transposed).double()

    ours, theirs = model(compiler.Conv2d, compiler.ConvTranspose2d), model(nn.Conv2d, nn.ConvTranspose2d)
    torch.manual_seed(5)
    data = [(torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randn(2, 1, 16, 16, dtype=torch.float64))
            for _ in range(3)]
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (ours, theirs)]
    for x, target in data:
        losses = []
        for m, opt in zip((ours, theirs), optimisers):
            opt.zero_grad()
            loss = nn.functional.mse_loss(m(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-10)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)


def test_double_backward_is_refused_clearly():
    m = compiler.Conv2d(2, 2, 3).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_fused_modules_differentiate_their_epilogue_in_torch():
    """A converted (BN-folded, ReLU/add-fused) eval model: input gradients through it are torch's."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    torch.manual_seed(6)
    model = Block().double().eval()
    fast = compiler.convert(model, torch.randn(1, 4, 6, 6, dtype=torch.float64))
    assert "epilogue=add+relu" in repr(fast.conv)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    (mine,) = torch.autograd.grad(fast(x).sum(), x)
    (theirs,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-12, atol=1e-12)


def test_operator_backward_refuses_fused_activations():
    w = torch.randn(2, 2, 3, 3, requires_grad=True)
    y = torch.ops.tvm_conv.conv2d(torch.randn(1, 2, 5, 5), w, None, None, [1, 1], [0, 0], None, [1, 1], 1, "zeros",
                                  "relu", None, None)
    with pytest.raises(RuntimeError, match="fused epilogue 'relu'"):
        y.sum().backward()


def test_bad_inputs_raise_torch_errors_before_any_kernel():
    m = compiler.Conv2d(3, 4, 3)
    with pytest.raises(RuntimeError, match="expected input"):
        m(torch.randn(1, 5, 8, 8, requires_grad=True))
    with pytest.raises(RuntimeError, match="Expected 3D"):
        m(torch.randn(8, 8, requires_grad=True))
    with pytest.raises(RuntimeError, match="Input type"):
        m(torch.randn(1, 3, 8, 8, dtype=torch.float64, requires_grad=True))
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        m(torch.randn(1, 3, 2, 2, requires_grad=True))
    t = compiler.ConvTranspose2d(3, 4, 3, stride=2)
    with pytest.raises(ValueError, match="requested an output size"):
        t(torch.randn(1, 3, 4, 4, requires_grad=True), output_size=[20, 20])
    assert m.kernel is None and t.kernel is None


@pytest.mark.parametrize("cls", [compiler.Conv2d, compiler.ConvTranspose2d])
def test_eager_autograd_skips_the_dispatcher(cls, monkeypatch):
    """An eager training call records the operator's formula as a plain autograd Function (no
    ``tvm_conv`` operator dispatched, forward or backward); its gradients are torch's."""
    from compiler import ops
    m = cls(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    dispatched = []
    real = torch.ops.tvm_conv
    monkeypatch.setattr(torch.ops, "tvm_conv", type("Spy", (), {
        "__getattr__": lambda self, name: dispatched.append(name) or getattr(real, name)})())
    y = m(x)
    assert type(y.grad_fn).__name__ == f"tvm_conv_{m._op_name}Backward"
    g = torch.randn_like(y)
    y.backward(g)
    assert dispatched == [] and x.grad is not None and m.weight.grad is not None and m.bias.grad is not None
    monkeypatch.undo()
    assert_grads_match(m, x)

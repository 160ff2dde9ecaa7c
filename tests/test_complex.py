"""complex32/64/128 layers: three of our real convolutions, combined as torch's aten does.

Reference: the exact (float64) value of torch's formula on the same rounded parts, ``a = conv(xr, wr,
br)``, ``b = conv(xi, wi)``, ``c = conv(xr + xi, wr + wi, br + bi)`` (the sums rounded in the layer's
dtype, as both torch and we compute them), result ``a - b + i (c - a - b)``.  Each real convolution
errs by at most the forward's bound (tests/reference.py: ``K u_acc sum|x w| + u_out |y|``); the
real part adds one rounding of ``a - b``, the imaginary part two (``c - a``, then ``- b``).
"""
import pytest
import torch

import compiler
from reference import ACCUMULATE, UNIT_ROUNDOFF, torch_twin

PARTS = {torch.complex32: torch.float16, torch.complex64: torch.float32, torch.complex128: torch.float64}


def _real_twin(layer, bias: bool):
    """torch's real float64 layer with ``layer``'s hyper-parameters (weights to be set)."""
    args = dict(in_channels=layer.in_channels, out_channels=layer.out_channels, kernel_size=layer.kernel_size,
                stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                bias=bias, padding_mode=layer.padding_mode, dtype=torch.float64)
    if layer.transposed:
        args["output_padding"] = layer.output_padding
    return getattr(torch.nn, type(layer).__name__)(**args)


def _real_conv(layer, x, w, b, **kwargs):
    """torch's real convolution of ``layer``'s kind in float64 (the exact value for our inputs)."""
    ref = _real_twin(layer, b is not None)
    with torch.no_grad():
        ref.weight.copy_(w)
        if b is not None:
            ref.bias.copy_(b)
        return ref(x.double(), **kwargs)


def _parts(t):
    return t.real, t.imag


def assert_complex_matches(layer, x, **kwargs):
    real = PARTS[x.dtype]
    with torch.no_grad():
        y = layer(x, **kwargs)
        theirs = torch_twin(layer)(x, **kwargs)
    assert y.dtype == theirs.dtype and y.shape == theirs.shape
    xr, xi = _parts(x)
    wr, wi = _parts(layer.weight.detach())
    br, bi = _parts(layer.bias.detach()) if layer.bias is not None else (None, None)
    xs, ws = xr + xi, wr + wi                            # rounded in the part dtype, as both compute them
    bs = br + bi if br is not None else None
    terms = [(xr, wr, br), (xi, wi, None), (xs, ws, bs)]
    exact = [_real_conv(layer, a, w, b, **kwargs) for a, w, b in terms]
    mags = [_real_conv(layer, a.abs(), w.abs(), None if b is None else b.abs(), **kwargs) for a, w, b in terms]
    k = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1] + 1
    u_acc, u = UNIT_ROUNDOFF[ACCUMULATE[real]], UNIT_ROUNDOFF[real]
    tiny = k * torch.finfo(ACCUMULATE[real]).smallest_normal * u_acc + 3 * torch.finfo(real).smallest_normal * u
    errs = [k * u_acc * m + u * e.abs() + tiny for m, e in zip(mags, exact)]
    a, b, c = exact
    ea, eb, ec = errs
    re_exact, im_exact = a - b, c - a - b
    re_bound = ea + eb + u * (re_exact.abs() + ea + eb)
    im_bound = ea + eb + ec + u * ((c - a).abs() + ec + ea) + u * (im_exact.abs() + ea + eb + ec)
    for got, want, bound, name in ((y.real, re_exact, re_bound, "real"), (y.imag, im_exact, im_bound, "imag")):
        err = (got.double() - want).abs()
        assert bool((err <= bound).all()), f"{name} part: error {err.max().item():.3e} over the bound"


LAYERS = [
    ("Conv2d(3, 4, 3, padding=1)", (2, 3, 7, 6)),
    ("Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode='reflect')", (1, 4, 9, 8)),
    ("Conv2d(3, 3, 3, padding='same', dilation=2, bias=False, padding_mode='circular')", (3, 7, 7)),
    ("ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)", (1, 4, 5, 4)),
    ("ConvTranspose2d(4, 4, 2, stride=2, groups=2, bias=False)", (0, 4, 5, 4)),
]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.complex32], ids=str)
@pytest.mark.parametrize("text,shape", LAYERS, ids=str)
def test_forward_matches_torch(text, shape, dtype):
    from compiler.layers import parse_layer
    torch.manual_seed(0)
    layer = parse_layer(text).to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    if dtype == torch.complex32 and layer.padding_mode in ("reflect", "replicate"):
        for m in (layer, torch_twin(layer)):                  # torch has no ComplexHalf pad of these modes
            with pytest.raises(NotImplementedError, match="pad2d\" not implemented for 'ComplexHalf'"):
                m(x)
        return
    assert_complex_matches(layer, x)


def test_conjugated_input_and_output_size():
    torch.manual_seed(1)
    m = compiler.ConvTranspose2d(2, 3, 3, stride=2, dtype=torch.complex64)
    x = torch.randn(1, 2, 4, 4, dtype=torch.complex64).conj()        # a conj-bit view, resolved as torch does
    assert_complex_matches(m, x, output_size=[10, 10])


@pytest.mark.parametrize("text,shape", LAYERS[:4], ids=str)
def test_backward_matches_torch(text, shape):
    """complex128 gradients (torch's conjugate convention) against torch.autograd.grad of torch's
    layer: both differentiate the same real decomposition, so each real part is a few real
    gradients, each within ``K u`` of its magnitude (bounded here by the gradient of the layer on
    ``|xr| + |xi|`` and ``|wr| + |wi|`` with ``|g_r| + |g_i|``, times the 3 convolutions)."""
    from compiler.layers import parse_layer
    torch.manual_seed(2)
    ours = parse_layer(text).to(torch.complex128)
    ref = torch_twin(ours)
    x = torch.randn(*shape, dtype=torch.complex128, requires_grad=True)
    with torch.no_grad():
        g = torch.randn_like(ref(x))
    params = lambda m: [m.weight] + ([m.bias] if m.bias is not None else [])  # noqa: E731
    got = torch.autograd.grad(ours(x), [x] + params(ours), g)
    want = torch.autograd.grad(ref(x), [x] + params(ref), g)
    absolute = _real_twin(ours, ours.bias is not None)
    with torch.no_grad():
        absolute.weight.copy_(ours.weight.real.abs() + ours.weight.imag.abs())
        if absolute.bias is not None:
            absolute.bias.copy_(ours.bias.real.abs() + ours.bias.imag.abs())
    xa = (x.real.abs() + x.imag.abs()).detach().requires_grad_()
    mags = torch.autograd.grad(absolute(xa), [xa] + params(absolute), g.real.abs() + g.imag.abs())
    u = UNIT_ROUNDOFF[torch.float64]
    n = shape[0] if len(shape) == 4 else 1
    terms = max(ours.out_channels // ours.groups * ours.kernel_size[0] * ours.kernel_size[1] * 9,
                n * g.shape[-1] * g.shape[-2] * 4)
    for a, b, m in zip(got, want, mags):
        assert a.dtype == b.dtype and a.shape == b.shape
        bound = 3 * 2 * terms * u * m + 2 * u * b.abs()
        assert bool(((a - b).abs() <= bound).all()), (a - b).abs().max()


def test_half_complex_backward_runs_on_our_half_kernels():
    torch.manual_seed(3)
    m = compiler.Conv2d(2, 2, 3, dtype=torch.complex32)
    x = torch.randn(1, 2, 5, 5, dtype=torch.complex32, requires_grad=True)
    m(x).real.float().sum().backward()
    assert x.grad.dtype == torch.complex32 and m.weight.grad.dtype == torch.complex32


def test_dtypes_torch_refuses_are_refused():
    with pytest.raises(RuntimeError):
        torch.nn.Conv2d(2, 2, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="complex128; its parameters are torch.int64"):
        compiler.Conv2d(2, 2, 3, dtype=torch.int64)
    m = compiler.Conv2d(2, 2, 3, dtype=torch.complex64)
    for x in (torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5, dtype=torch.complex128)):
        with pytest.raises(RuntimeError, match="Input type"):
            torch_twin(m)(x)
        with pytest.raises(RuntimeError, match="Input type"):
            m(x)

"""The output's memory format is torch's: channels_last inputs or weights give channels_last outputs
(``spec.output_channels_last``), checked against torch itself on every layout of input and weight."""

import pytest
import torch

import compiler
from compiler.spec import strides_like_channels_last

LAYERS = [
    (compiler.Conv2d, (4, 6, 3)),
    (compiler.Conv2d, (1, 3, 1)),                       # one input channel: ambiguous input layouts
    (compiler.Conv2d, (4, 1, 3), {"padding": 1}),       # one output channel
    (compiler.Conv2d, (4, 4, 3), {"padding": 1, "groups": 4}),
    (compiler.ConvTranspose2d, (4, 6, 3), {"stride": 2}),
    (compiler.ConvTranspose2d, (1, 1, 2), {"stride": 2}),
]
SHAPES = [(2, 5, 6), (1, 5, 6), (2, 1, 1), (1, 1, 7), None]       # (N, H, W); None: unbatched C x 5 x 6
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def layouts(x: torch.Tensor):
    """The input as NCHW, channels_last, and a permuted-then-permuted-back (non-dense-order) view."""
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "transposed", x.transpose(-1, -2).contiguous().transpose(-1, -2)


def assert_same_layout(y: torch.Tensor, expected: torch.Tensor) -> None:
    """Same memory format (both contiguity checks) and the same strides wherever a size is not 1
    (a size-1 dimension's stride is arbitrary: torch itself writes either)."""
    formats = [torch.contiguous_format] + ([torch.channels_last] if y.dim() == 4 else [])
    assert [y.is_contiguous(memory_format=f) for f in formats] == \
        [expected.is_contiguous(memory_format=f) for f in formats]
    assert [s for s, n in zip(y.stride(), y.shape) if n > 1] == \
        [s for s, n in zip(expected.stride(), expected.shape) if n > 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_format", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_output_layout_is_torchs(layer, weight_format, dtype, device):
    cls, args, *kw = LAYERS[layer]
    kw = kw[0] if kw else {}
    torch.manual_seed(layer)
    ours = cls(*args, **kw, dtype=dtype, device=device)
    theirs = getattr(torch.nn, cls.__name__)(*args, **kw, dtype=dtype, device=device)
    theirs.load_state_dict(ours.state_dict())
    if weight_format == "channels_last":
        ours, theirs = (m.to(memory_format=torch.channels_last) for m in (ours, theirs))
    for shape in SHAPES:
        full = (args[0], 5, 6) if shape is None else (shape[0], args[0]) + shape[1:]
        for name, x in layouts(torch.randn(*full, dtype=dtype, device=device)):
            try:
                expected = theirs(x)
            except RuntimeError:
                with pytest.raises(RuntimeError):
                    ours(x)
                continue
            y = ours(x)
            assert_same_layout(y, expected)
            torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_channels_last_output_through_the_operator_and_autograd():
    """The operator path (autograd) gives the same layout, and its fake kernel the same strides."""
    m = compiler.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y.sum().backward()
    assert x.grad is not None and m.weight.grad is not None
    from torch._subclasses.fake_tensor import FakeTensorMode
    real = x.detach(), m.weight.detach(), m.bias.detach()
    with FakeTensorMode() as mode:
        fake_x, fake_w, fake_b = (mode.from_tensor(t) for t in real)
        out = torch.ops.tvm_conv.conv2d(fake_x, fake_w, fake_b, *m._operator_args(None, ""))
    assert out.stride() == y.stride()


@pytest.mark.parametrize("sizes,strides,expected", [
    ((2, 3, 4, 5), (60, 20, 5, 1), False), ((2, 3, 4, 5), (60, 1, 15, 3), True),
    ((2, 1, 4, 5), (20, 20, 5, 1), False), ((2, 1, 4, 5), (20, 1, 5, 1), True),   # N1HW: as torch reads them
    ((2, 3, 1, 1), (3, 1, 1, 1), False), ((2, 3, 1, 1), (3, 1, 3, 3), True),
    ((2, 3, 4, 5), (60, 0, 5, 1), False), ((0, 3, 4, 5), (60, 1, 15, 3), False),
])
def test_strides_like_channels_last_is_c10s(sizes, strides, expected):
    """c10's reading, ambiguous cases included (the grid above checks it through torch's outputs)."""
    assert strides_like_channels_last(sizes, strides) == expected

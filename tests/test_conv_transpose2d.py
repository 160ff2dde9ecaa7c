"""ConvTranspose2d against torch.nn.ConvTranspose2d: every argument, output_padding and output_size."""
import itertools

import pytest
import torch

import compiler
from reference import assert_matches_torch


def _valid_output_paddings(stride, dilation):
    s, d = (stride, stride) if isinstance(stride, int) else stride
    dd = (dilation, dilation) if isinstance(dilation, int) else dilation
    return [op for op in [0, 1, (1, 0), (2, 1)]
            if all(o < max(a, b) for o, a, b in zip((op, op) if isinstance(op, int) else op, (s, d), dd))]


GRID = [(k, s, p, d, op)
        for k, s, p, d in itertools.product([1, 3, 4, (3, 2)], [1, 2, (3, 2)], [0, 1, (2, 1)], [1, 2, (1, 3)])
        for op in _valid_output_paddings(s, d)]


@pytest.mark.parametrize("kernel,stride,padding,dilation,output_padding", GRID, ids=str)
def test_grid(kernel, stride, padding, dilation, output_padding):
    m = compiler.ConvTranspose2d(3, 5, kernel, stride=stride, padding=padding, dilation=dilation,
                                 output_padding=output_padding)
    x = torch.randn(2, 3, 5, 6)
    try:
        expected = torch.nn.ConvTranspose2d(3, 5, kernel, stride=stride, padding=padding, dilation=dilation,
                                            output_padding=output_padding)(x)
    except RuntimeError:
        with pytest.raises(RuntimeError):      # e.g. an output too small: we refuse it too
            m(x)
        return
    assert expected.numel() > 0
    assert_matches_torch(m, x)


@pytest.mark.parametrize("channels,kernel,stride,bias", list(itertools.product(
    [(4, 6, 2), (6, 6, 3), (8, 8, 8), (8, 16, 8), (1, 4, 1)], [2, 3], [1, 2], [True, False])), ids=str)
def test_groups(channels, kernel, stride, bias):
    in_ch, out_ch, groups = channels
    m = compiler.ConvTranspose2d(in_ch, out_ch, kernel, stride=stride, padding=1, groups=groups, bias=bias)
    assert_matches_torch(m, torch.randn(2, in_ch, 7, 6))


@pytest.mark.parametrize("stride,dilation,kernel", [(2, 1, 3), (3, 1, 4), (2, 3, 3), ((2, 3), (3, 2), (3, 4))],
                         ids=str)
def test_output_size_covers_whole_range(stride, dilation, kernel):
    m = compiler.ConvTranspose2d(4, 3, kernel, stride=stride, padding=1, dilation=dilation)
    x = torch.randn(1, 4, 6, 5)
    ref = torch.nn.ConvTranspose2d(4, 3, kernel, stride=stride, padding=1, dilation=dilation)
    base = ref(x).shape[-2:]
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    for eh, ew in itertools.product(range(sh), range(sw)):
        size = (base[0] + eh, base[1] + ew)
        y = assert_matches_torch(m, x, output_size=size)
        assert tuple(y.shape[-2:]) == size


def test_output_size_forms():
    m = compiler.ConvTranspose2d(16, 16, 3, stride=2, padding=1)
    x = torch.randn(1, 16, 6, 6)
    for size in ([12, 12], (1, 16, 12, 12), torch.Size([1, 16, 12, 12])):
        assert_matches_torch(m, x, output_size=size)
    y = assert_matches_torch(m, torch.randn(16, 6, 6), output_size=(16, 12, 12))   # unbatched
    assert y.shape == (16, 12, 12)


def test_readme_example():
    x = torch.randn(1, 16, 12, 12)
    down = compiler.Conv2d(16, 16, 3, stride=2, padding=1)
    up = compiler.ConvTranspose2d(16, 16, 3, stride=2, padding=1)
    h = down(x)
    z = assert_matches_torch(up, h, output_size=x.size())
    assert z.shape == x.shape


def test_empty_batch_and_unbatched():
    m = compiler.ConvTranspose2d(3, 4, 3, stride=2)
    assert assert_matches_torch(m, torch.randn(0, 3, 5, 5)).shape == (0, 4, 11, 11)
    assert assert_matches_torch(m, torch.randn(3, 5, 5)).shape == (4, 11, 11)


def test_decoder_layer():
    m = compiler.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
    assert_matches_torch(m, torch.randn(2, 64, 9, 8))

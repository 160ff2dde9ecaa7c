"""Conv2d against torch.nn.Conv2d over grids that cross every constructor argument."""
import itertools

import pytest
import torch

import compiler
from reference import assert_matches_torch

MODES = ["zeros", "reflect", "replicate", "circular"]


def _case(in_ch, out_ch, kernel, input_hw=(11, 13), batch=2, **kw):
    m = compiler.Conv2d(in_ch, out_ch, kernel, **kw)
    x = torch.randn(batch, in_ch, *input_hw)
    y = assert_matches_torch(m, x)
    assert m.schedule is not None
    return y


# padding_mode x stride x dilation x padding, kernel 3x3
@pytest.mark.parametrize("mode,stride,dilation,padding", [
    c for c in itertools.product(MODES, [1, 2, (2, 1)], [1, 2, (3, 1)], [1, (2, 1), "valid", (0, 3)])
], ids=str)
def test_modes_strides_dilations(mode, stride, dilation, padding):
    _case(3, 5, 3, stride=stride, dilation=dilation, padding=padding, padding_mode=mode)


# 'same', including even kernels (asymmetric split) and dilation, in every padding mode
@pytest.mark.parametrize("mode,kernel,dilation", list(itertools.product(
    MODES, [1, 2, 3, 4, (2, 5), (4, 3)], [1, 2, (3, 1)])), ids=str)
def test_same_padding(mode, kernel, dilation):
    y = _case(4, 3, kernel, padding="same", dilation=dilation, padding_mode=mode, input_hw=(9, 10))
    assert y.shape[-2:] == (9, 10)


# groups: grouped, depthwise, depthwise with multiplier K; bias on/off; 1x1 and 3x3
@pytest.mark.parametrize("channels,kernel,stride,bias", list(itertools.product(
    [(4, 6, 2), (6, 6, 3), (8, 8, 8), (8, 16, 8), (8, 24, 8), (1, 4, 1), (32, 32, 1)],
    [1, 3], [1, 2], [True, False])), ids=str)
def test_groups(channels, kernel, stride, bias):
    in_ch, out_ch, groups = channels
    _case(in_ch, out_ch, kernel, stride=stride, padding=1, groups=groups, bias=bias)


@pytest.mark.parametrize("kernel,stride,padding,dilation,input_hw", [
    ((3, 5), (2, 1), (4, 2), (3, 1), (50, 100)),      # the README example
    (7, 2, 3, 1, (33, 31)),                             # a stem
    (5, 3, 0, 2, (17, 23)),
    ((1, 7), 1, (0, 3), 1, (12, 14)),
    ((7, 1), 1, (3, 0), 1, (12, 14)),
    (3, 1, 1, 1, (1, 1)),                                # 1x1 input, padded
    (4, 4, 0, 1, (16, 16)),                              # patchify
    (3, 1, 5, 3, (4, 5)),                                # padding larger than the input
], ids=str)
def test_shapes(kernel, stride, padding, dilation, input_hw):
    _case(5, 7, kernel, stride=stride, padding=padding, dilation=dilation, input_hw=input_hw)


@pytest.mark.parametrize("mode", MODES[1:])
def test_padding_at_the_limit(mode):
    # reflect allows pad = size - 1, circular pad = size, replicate any pad
    pad = {"reflect": 3, "circular": 4, "replicate": 6}[mode]
    _case(2, 3, 3, padding=pad, padding_mode=mode, input_hw=(4, 4))


@pytest.mark.parametrize("mode", MODES[1:])
def test_negative_padding_crops_in_padding_modes(mode):
    # torch pads with F.pad before the convolution: a negative pad crops the input
    _case(2, 3, 3, padding=(-1, 1), padding_mode=mode, input_hw=(8, 9))


def test_unbatched_input():
    m = compiler.Conv2d(3, 4, 3, padding=1)
    y = assert_matches_torch(m, torch.randn(3, 10, 12))
    assert y.shape == (4, 10, 12)


def test_empty_batch():
    m = compiler.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    y = assert_matches_torch(m, torch.randn(0, 3, 10, 12))
    assert y.shape == (0, 4, 10, 12)


def test_zero_in_channels():
    # torch returns an output with no channels (not the bias): behaviour wins
    m = compiler.Conv2d(0, 4, 3)
    assert_matches_torch(m, torch.randn(2, 0, 6, 6))


def test_larger_batch_and_layer():
    _case(64, 64, 3, padding=1, input_hw=(28, 28), batch=3)


def test_weight_updates_are_seen():
    m = compiler.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    first = m(x)
    with torch.no_grad():
        m.weight.mul_(2)
        m.bias.zero_()
    assert_matches_torch(m, x)
    assert not torch.allclose(first, m(x))


def test_attribute_changes_are_seen():
    # torch reads stride/padding at every call; so do we
    m = compiler.Conv2d(3, 4, 3)
    m.stride, m.padding = (2, 2), (1, 1)
    assert_matches_torch(m, torch.randn(1, 3, 9, 9))

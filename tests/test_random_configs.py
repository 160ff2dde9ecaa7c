"""Property-based differential tests: random layers and inputs (hypothesis) against torch."""
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import compiler
from compiler.spec import ConvSpec
from reference import assert_matches_torch

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
small = st.integers(1, 3)


def _assume_valid(spec, shape):
    """Discard draws torch refuses (those are covered by test_errors.py)."""
    try:
        spec.output_shape(shape)
    except RuntimeError:
        assume(False)


@st.composite
def conv2d_cases(draw):
    groups = draw(st.integers(1, 3))
    in_ch, out_ch = groups * draw(small), groups * draw(small)
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    dilation = (draw(small), draw(small))
    if draw(st.booleans()):
        stride, padding = (1, 1), draw(st.sampled_from(["same", "valid"]))
    else:
        stride, padding = (draw(small), draw(small)), (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    shape = (draw(st.integers(1, 2)), in_ch, draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()),
              padding_mode=mode)
    _assume_valid(ConvSpec.conv2d(in_ch, out_ch, kernel, **kw), shape)
    return (in_ch, out_ch, kernel), kw, shape


@st.composite
def conv_transpose2d_cases(draw):
    groups = draw(st.integers(1, 3))
    in_ch, out_ch = groups * draw(small), groups * draw(small)
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride, dilation = (draw(small), draw(small)), (draw(small), draw(small))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    kw = dict(stride=stride, padding=(draw(st.integers(0, 3)), draw(st.integers(0, 3))),
              output_padding=output_padding, groups=groups, bias=draw(st.booleans()), dilation=dilation)
    shape = (draw(st.integers(1, 2)), in_ch, draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    _assume_valid(ConvSpec.conv_transpose2d(in_ch, out_ch, kernel, **kw), shape)
    return (in_ch, out_ch, kernel), kw, shape


@SETTINGS
@given(conv2d_cases())
def test_random_conv2d(case):
    args, kw, shape = case
    assert_matches_torch(compiler.Conv2d(*args, **kw), torch.randn(*shape))


@SETTINGS
@given(conv_transpose2d_cases())
def test_random_conv_transpose2d(case):
    args, kw, shape = case
    assert_matches_torch(compiler.ConvTranspose2d(*args, **kw), torch.randn(*shape))

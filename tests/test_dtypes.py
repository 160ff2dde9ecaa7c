"""Every supported dtype; half types accumulate in float32 (the tolerance table says how much that buys)."""
import itertools

import pytest
import torch

import compiler
from reference import assert_matches_torch

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype,config", list(itertools.product(DTYPES, [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=2, dilation=(1, 2), padding="valid", groups=2),
    dict(kernel_size=3, padding="same", padding_mode="reflect"),
    dict(kernel_size=1, bias=False),
])), ids=str)
def test_conv2d_dtypes(dtype, config):
    m = compiler.Conv2d(8, 12, dtype=dtype, **config)
    assert_matches_torch(m, torch.randn(2, 8, 10, 9, dtype=dtype))


@pytest.mark.parametrize("dtype,config", list(itertools.product(DTYPES, [
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, stride=(2, 3), dilation=2, output_padding=1, groups=4, bias=False),
])), ids=str)
def test_conv_transpose2d_dtypes(dtype, config):
    m = compiler.ConvTranspose2d(8, 12, dtype=dtype, **config)
    assert_matches_torch(m, torch.randn(2, 8, 6, 7, dtype=dtype))


def test_half_accumulates_in_float32():
    # 4096 products of 1.0 + 2**-11 sum to a value fp16 accumulation cannot hold exactly; with float32
    # accumulation the only error is the final rounding to float16.
    m = compiler.Conv2d(1024, 1, 2, bias=False, dtype=torch.float16)
    with torch.no_grad():
        m.weight.fill_(1.0)
    x = torch.full((1, 1024, 2, 2), 1.0 + 2 ** -10, dtype=torch.float16)
    exact = 4096 * (1.0 + 2 ** -10)
    assert m(x).item() == torch.tensor(exact, dtype=torch.float16).item()

"""Bad configurations and inputs: the exception type torch raises, a message naming the value, no kernel run."""
import pytest
import torch

import compiler
from compiler import build

CONSTRUCTION = [  # (class, args, kwargs, substring the message must contain)
    ("Conv2d", (4, 4, 3), dict(groups=0), "groups"),
    ("Conv2d", (4, 4, 3), dict(groups=3), "in_channels"),
    ("Conv2d", (4, 3, 3), dict(groups=2), "out_channels"),
    ("Conv2d", (4, 4, 3), dict(padding="foo"), "'foo'"),
    ("Conv2d", (4, 4, 3), dict(padding="same", stride=2), "same"),
    ("Conv2d", (4, 4, 3), dict(padding_mode="foo"), "'foo'"),
    ("ConvTranspose2d", (4, 4, 3), dict(padding_mode="reflect"), "zeros"),
    ("ConvTranspose2d", (4, 4, 3), dict(groups=3), "in_channels"),
    ("Conv2d", (4, 4, 3.0), {}, "3.0"),
    ("Conv2d", (4, 4, -1), {}, "-1"),
]


@pytest.mark.parametrize("cls,args,kwargs,needle", CONSTRUCTION, ids=str)
def test_construction_errors(cls, args, kwargs, needle):
    with pytest.raises(Exception) as theirs:
        getattr(torch.nn, cls)(*args, **kwargs)
    with pytest.raises(theirs.type) as ours:
        getattr(compiler, cls)(*args, **kwargs)
    assert needle in str(ours.value)


FORWARD = [  # (class, args, kwargs, input shape, forward kwargs, needle)
    ("Conv2d", (4, 4, 3), {}, (4, 8), {}, "[4, 8]"),
    ("Conv2d", (4, 4, 3), {}, (1, 1, 4, 8, 8), {}, "[1, 1, 4, 8, 8]"),
    ("Conv2d", (4, 4, 3), {}, (1, 3, 8, 8), {}, "3 channels"),
    ("Conv2d", (4, 4, 3), {}, (3, 8, 8), {}, "3 channels"),
    ("Conv2d", (4, 4, 3), {}, (0, 3, 8, 8), {}, "3 channels"),
    ("Conv2d", (4, 4, 3), {}, (1, 4, 2, 8), {}, "(2 x 8)"),
    ("Conv2d", (4, 4, 3), dict(dilation=2), (1, 4, 4, 8), {}, "(5 x 5)"),
    ("Conv2d", (4, 4, 1), {}, (1, 4, 0, 8), {}, "(0 x 8)"),
    ("Conv2d", (4, 4, 3), dict(padding=3, padding_mode="reflect"), (1, 4, 3, 8), {}, "(3, 3)"),
    ("Conv2d", (4, 4, 3), dict(padding=5, padding_mode="circular"), (1, 4, 4, 8), {}, "(5, 5)"),
    ("Conv2d", (4, 4, 1), dict(padding=1, padding_mode="replicate"), (1, 4, 0, 3), {}, "[1, 4, 0, 3]"),
    ("Conv2d", (4, 4, 3), dict(stride=0), (1, 4, 8, 8), {}, "0"),
    ("Conv2d", (4, 4, 3), dict(stride=-1), (1, 4, 8, 8), {}, "-1"),
    ("Conv2d", (4, 4, 3), dict(padding=-1), (1, 4, 8, 8), {}, "-1"),
    ("Conv2d", (4, 4, 3), dict(padding=(1, -1)), (1, 4, 8, 8), {}, "-1"),
    ("Conv2d", (4, 4, 3), dict(dilation=0), (1, 4, 8, 8), {}, "0"),
    ("Conv2d", (4, 4, 0), {}, (1, 4, 8, 8), {}, "0"),
    ("Conv2d", (4, 4, (3, 3, 3)), {}, (1, 4, 8, 8), {}, "a list of 3 values to match the convolution dimensions"),  # torch words it by stride
    ("Conv2d", (4, 4, 3), dict(padding=(1, 1, 1)), (1, 4, 8, 8), {}, "[1, 1, 1]"),
    ("Conv2d", (4, 0, 3), {}, (1, 4, 8, 8), {}, "[0, 4, 3, 3]"),
    ("ConvTranspose2d", (4, 4, 3), dict(stride=2, output_padding=2), (1, 4, 8, 8), {}, "output_padding_height: 2"),
    ("ConvTranspose2d", (4, 4, 3), dict(output_padding=1), (1, 4, 8, 8), {}, "output_padding_height: 1"),
    ("ConvTranspose2d", (4, 4, 3), dict(output_padding=-1), (1, 4, 8, 8), {}, "-1"),
    ("ConvTranspose2d", (4, 4, 3), {}, (1, 3, 8, 8), {}, "3 channels"),
    ("ConvTranspose2d", (4, 4, 3), {}, (4, 8), {}, "[4, 8]"),
    ("ConvTranspose2d", (4, 4, 1), dict(padding=2), (1, 4, 2, 2), {}, "(-2 x -2)"),
    ("ConvTranspose2d", (4, 4, 3), {}, (1, 4, 0, 8), {}, "[1, 4, 0, 8]"),
    ("ConvTranspose2d", (4, 4, 3), dict(stride=0), (1, 4, 8, 8), {}, "0"),
    ("ConvTranspose2d", (4, 4, 3), dict(padding=-1), (1, 4, 8, 8), {}, "-1"),
    ("ConvTranspose2d", (4, 4, 3), dict(dilation=0), (1, 4, 8, 8), {}, "0"),
    ("ConvTranspose2d", (4, 0, 3), {}, (1, 4, 8, 8), {}, "[4, 0, 3, 3]"),
    ("ConvTranspose2d", (4, 4, 3), dict(stride=2), (1, 4, 8, 8), dict(output_size=(30, 30)), "[17, 17]"),
    ("ConvTranspose2d", (4, 4, 3), dict(stride=2), (1, 4, 8, 8), dict(output_size=(16, 17)), "[16, 17]"),
    ("ConvTranspose2d", (4, 4, 3), dict(stride=2), (1, 4, 8, 8), dict(output_size=(17, 17, 1)), "(got 3)"),
    ("ConvTranspose2d", (4, 4, 3), {}, (1, 4, 8, 8), dict(output_size=(11,)), "(got 1)"),
]


@pytest.mark.parametrize("cls,args,kwargs,shape,fkw,needle", FORWARD, ids=str)
def test_forward_errors(cls, args, kwargs, shape, fkw, needle):
    x = torch.randn(*shape)
    theirs_mod = getattr(torch.nn, cls)(*args, **kwargs)
    with pytest.raises(Exception) as theirs:
        theirs_mod(x, **fkw)
    ours_mod = getattr(compiler, cls)(*args, **kwargs)
    compiled_before = len(build._CACHE)
    with pytest.raises(theirs.type) as ours:
        ours_mod(x, **fkw)
    assert needle in str(ours.value), str(ours.value)
    assert ours_mod.kernel is None and len(build._CACHE) == compiled_before, "a kernel was built for bad input"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int32])
def test_dtype_mismatch(dtype):
    x = torch.ones(1, 4, 8, 8, dtype=dtype)
    with pytest.raises(RuntimeError):
        torch.nn.Conv2d(4, 4, 3)(x)
    with pytest.raises(RuntimeError, match=str(dtype)):
        compiler.Conv2d(4, 4, 3)(x)


def test_not_a_tensor():
    with pytest.raises(TypeError):
        torch.nn.Conv2d(4, 4, 3)([1, 2])
    with pytest.raises(TypeError, match="list"):
        compiler.Conv2d(4, 4, 3)([1, 2])


def test_transposed_padding_mode_changed_after_construction():
    m, r = compiler.ConvTranspose2d(4, 4, 3), torch.nn.ConvTranspose2d(4, 4, 3)
    m.padding_mode = r.padding_mode = "reflect"
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError):
        r(x)
    with pytest.raises(ValueError, match="zeros"):
        m(x)


def test_integer_dtype_rejected_at_construction():
    with pytest.raises(RuntimeError):
        torch.nn.Conv2d(4, 4, 3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="int32"):
        compiler.Conv2d(4, 4, 3, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float8_e4m3fn], ids=str)
def test_module_moved_to_an_unsupported_dtype(dtype):
    """Parameters swapped to a dtype we do not compute in: the call refuses before any kernel is
    built, naming the dtypes it computes in."""
    m = compiler.Conv2d(4, 4, 3)
    # Module.to converts only to floating/complex dtypes (complex ones compute: tests/test_complex.py)
    m.weight = torch.nn.Parameter(m.weight.detach().to(dtype), requires_grad=False)
    m.bias = torch.nn.Parameter(m.bias.detach().to(dtype), requires_grad=False)
    x = torch.zeros(1, 4, 8, 8, dtype=dtype)
    with pytest.raises(RuntimeError, match=r"computes in torch.float32, torch.float64, torch.float16, "
                                           r"torch.bfloat16, torch.complex32, torch.complex64, torch.complex128; "
                                           r"its parameters are "
                                           + str(dtype)):
        m(x)
    assert m.kernel is None

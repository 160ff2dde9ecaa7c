"""The torch.nn surface: signatures, defaults, attributes, init, repr, state_dict, kernel cache."""
import inspect

import pytest
import torch

import compiler
from compiler import build
from reference import assert_matches_torch, assert_output_matches, torch_twin

CLASSES = ["Conv2d", "ConvTranspose2d"]


@pytest.mark.parametrize("name", CLASSES)
def test_constructor_signature_matches_torch(name):
    ours = inspect.signature(getattr(compiler, name).__init__)
    theirs = inspect.signature(getattr(torch.nn, name).__init__)
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]


def test_forward_signature_matches_torch():
    assert list(inspect.signature(compiler.ConvTranspose2d.forward).parameters) == \
        list(inspect.signature(torch.nn.ConvTranspose2d.forward).parameters)


CONFIGS = [
    ("Conv2d", (16, 33, (3, 5)), dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1))),
    ("Conv2d", (4, 8, 3), dict(padding="same", padding_mode="reflect", groups=2, bias=False)),
    ("Conv2d", (4, 8, 4), dict(padding="same", dilation=2)),
    ("Conv2d", (4, 8, 3), dict(padding="valid", padding_mode="circular")),
    ("Conv2d", (4, 8, 1), {}),
    ("ConvTranspose2d", (16, 16, 3), dict(stride=2, padding=1, output_padding=1)),
    ("ConvTranspose2d", (4, 6, (2, 3)), dict(groups=2, bias=False, dilation=(2, 1))),
]


@pytest.mark.parametrize("name,args,kwargs", CONFIGS, ids=str)
def test_attributes_repr_and_init_match_torch(name, args, kwargs):
    torch.manual_seed(1)
    ours = getattr(compiler, name)(*args, **kwargs)
    torch.manual_seed(1)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                 "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    # same initialisation, call for call
    assert torch.equal(ours.weight, theirs.weight)
    assert (ours.bias is None) == (theirs.bias is None)
    if ours.bias is not None:
        assert torch.equal(ours.bias, theirs.bias)
    assert ours.weight.requires_grad and isinstance(ours.weight, torch.nn.Parameter)


@pytest.mark.parametrize("name,args,kwargs", CONFIGS, ids=str)
def test_state_dict_moves_both_ways(name, args, kwargs):
    ours = getattr(compiler, name)(*args, **kwargs)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    theirs.load_state_dict(getattr(compiler, name)(*args, **kwargs).state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_factory_kwargs(dtype):
    m = compiler.Conv2d(3, 4, 3, device="cpu", dtype=dtype)
    assert m.weight.dtype == dtype and m.bias.dtype == dtype and m.weight.device.type == "cpu"
    m = m.to(torch.float64)
    assert m(torch.randn(1, 3, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_kernel_is_compiled_once_per_shape_and_reported():
    build.clear_cache()
    m = compiler.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 9, 9)
    m(x)
    first = m.kernel
    assert first is not None and first.schedule == m.schedule == "cpu-direct"
    assert "llvm" in str(first.target) and first.compile_seconds > 0
    m(torch.randn(1, 3, 9, 9))
    assert m.kernel is first and len(build._CACHE) == 1
    compiler.Conv2d(3, 4, 3)(x)                  # same layer, another instance: shared kernel
    assert len(build._CACHE) == 1
    m(torch.randn(2, 3, 9, 9))                   # another shape: another kernel
    assert m.kernel is not first and len(build._CACHE) == 2


def test_output_is_written_in_place_without_copies():
    # the kernel reads the caller's tensors through DLPack and writes the tensor returned
    m = compiler.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 9, 9)
    m(x)
    y = torch.empty(1, 4, 7, 7)
    m.kernel(x, m.weight.detach(), m.bias.detach(), y)
    assert torch.equal(y, m(x))


def test_non_contiguous_input():
    m = compiler.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 9, 11).transpose(2, 3)
    theirs = torch.nn.Conv2d(3, 4, 3)
    theirs.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), theirs(x))


def test_outputs_track_gradients_as_torch():
    # tests/test_autograd.py checks the gradients themselves
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    assert compiler.Conv2d(3, 4, 3)(x).requires_grad
    with torch.no_grad():
        assert not compiler.Conv2d(3, 4, 3)(x).requires_grad


def test_attribute_changes_after_a_call_are_seen():
    # the per-module dispatch memo is keyed by the layer as its attributes say at each call
    m = compiler.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 9, 9)
    assert m(x).shape == (1, 4, 7, 7)
    m.stride, m.padding = (2, 2), (1, 1)
    theirs = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    theirs.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), theirs(x))
    m.groups = 2                                  # now inconsistent with the weight: torch's error
    with pytest.raises(RuntimeError, match="to have 6 channels, but got 3"):
        m(x)


def test_a_bias_replaced_after_a_call_is_checked():
    m = compiler.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 9, 9)
    m(x)                                          # the dispatch for this shape is memoised now
    m.bias = torch.nn.Parameter(torch.randn(5))
    theirs = torch.nn.Conv2d(3, 4, 3)
    theirs.bias = torch.nn.Parameter(torch.randn(5))
    with pytest.raises(RuntimeError) as expected:
        theirs(x)
    with pytest.raises(RuntimeError) as ours:
        m(x)
    assert str(ours.value) == str(expected.value).splitlines()[0]


def _replace_weight(module, shape):
    module.weight = torch.nn.Parameter(torch.randn(*shape))
    return module


@pytest.mark.parametrize("make,shape,forward_kwargs", [
    # torch's forward takes channels and kernel size from the weight, not from the attributes
    (lambda nn: _replace_weight(nn.Conv2d(3, 4, 3), (4, 3, 5, 5)), (1, 3, 9, 9), {}),
    (lambda nn: _replace_weight(nn.Conv2d(3, 4, 3, bias=False), (6, 1, 3, 3)), (1, 3, 9, 9), {}),
    (lambda nn: _replace_weight(nn.Conv2d(3, 4, 3), (6, 3, 5, 5)), (1, 3, 9, 9), {}),        # bias of 4
    (lambda nn: _replace_weight(nn.Conv2d(3, 4, 3), (4, 3, 5)), (1, 3, 9, 9), {}),           # 3-D weight
    (lambda nn: _replace_weight(nn.ConvTranspose2d(3, 4, 3), (3, 4, 5, 5)), (1, 3, 9, 9), {}),
    (lambda nn: _replace_weight(nn.ConvTranspose2d(3, 4, 3), (3, 2, 3, 3)), (1, 3, 9, 9), {}),  # bias
    (lambda nn: _replace_weight(nn.ConvTranspose2d(3, 4, 3, stride=2), (3, 4, 5, 5)), (1, 3, 9, 9),
     {"output_size": [19, 19]}),                  # sized with the kernel_size attribute (3)...
    (lambda nn: _replace_weight(nn.ConvTranspose2d(3, 4, 3, stride=2), (3, 4, 5, 5)), (1, 3, 9, 9),
     {"output_size": [21, 21]}),                  # ...so 21 is out of range, though the weight is 5x5
    (lambda nn: setattr(m := nn.Conv2d(4, 3, 3), "groups", 2) or m, (1, 4, 9, 9), {}),       # 3 % 2
])
def test_forward_follows_the_weight_tensor(make, shape, forward_kwargs):
    torch.manual_seed(0)
    theirs = make(torch.nn)
    torch.manual_seed(0)
    ours = make(compiler)
    x = torch.randn(*shape)
    try:
        expected = theirs(x, **forward_kwargs)
    except Exception as err:                      # noqa: BLE001 - whatever torch raises, we raise
        with pytest.raises(type(err)) as ours_err:
            ours(x, **forward_kwargs)
        assert str(ours_err.value).splitlines()[0] == str(err).splitlines()[0]
        return
    torch.testing.assert_close(ours(x, **forward_kwargs), expected, rtol=1e-4, atol=1e-4)


def test_a_called_module_pickles_and_deepcopies(tmp_path):
    import copy
    m = compiler.ConvTranspose2d(4, 6, 3, stride=2)
    x = torch.randn(1, 4, 5, 5)
    y = m(x)
    torch.save(m, tmp_path / "m.pt")              # the whole module, not just its state_dict
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert loaded.kernel is None                  # compiled kernels stay with the process
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    twin = copy.deepcopy(m)
    torch.testing.assert_close(twin(x), y, rtol=0, atol=0)
    assert m.kernel is not None                   # the original keeps its own


# Every fan-in torch's rule distinguishes: 0 (no input channels: bias from U(0, 0)), 1, and the usual.
RESET_CONFIGS = [
    ("Conv2d", (0, 4, 3), {}),
    ("Conv2d", (1, 4, 1), {}),
    ("Conv2d", (6, 4, 3), dict(groups=2)),
    ("ConvTranspose2d", (4, 0, 3), {}),          # fan_in = out_channels/groups * k*k = 0
    ("ConvTranspose2d", (0, 4, 3), {}),
    ("ConvTranspose2d", (4, 6, (2, 3)), dict(groups=2)),
]


@pytest.mark.parametrize("name,args,kwargs", RESET_CONFIGS, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_reset_parameters_draws_what_torch_draws(name, args, kwargs, channels_last):
    """Construction and a later reset_parameters (also on a channels_last weight) consume torch's random
    stream exactly as torch does: same parameters, and the same next draw afterwards."""
    modules = []
    for make in (getattr(compiler, name), getattr(torch.nn, name)):
        torch.manual_seed(3)
        m = make(*args, **kwargs)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        m.reset_parameters()
        modules.append((m, torch.rand(4)))
    (ours, after_ours), (theirs, after_theirs) = modules
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.weight.stride() == theirs.weight.stride()
    if theirs.bias is not None:
        assert torch.equal(ours.bias, theirs.bias)        # U(0, 0) is zeros for fan_in 0, never garbage
    assert torch.equal(after_ours, after_theirs)


# A repeated plain inference call (compiler/modules.py ``_repeat``): the same kernel on new values,
# without the checks and memo keys, exactly while nothing it relies on changed.

@pytest.mark.parametrize("cls", [compiler.Conv2d, compiler.ConvTranspose2d])
def test_repeated_inference_calls_skip_the_dispatch(cls, monkeypatch):
    m = cls(6, 8, 3, padding=1)
    calls = []
    real = type(m)._dispatch
    monkeypatch.setattr(type(m), "_dispatch", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    with torch.no_grad():
        for _ in range(3):
            assert_matches_torch(m, torch.randn(2, 6, 9, 7))
    assert len(calls) == 1


@pytest.mark.parametrize("change", [
    lambda m: setattr(m, "padding", (2, 0)), lambda m: setattr(m, "stride", (2, 1)),
    lambda m: setattr(m, "dilation", (1, 2)), lambda m: setattr(m, "stride", [1, 1]),
    lambda m: (m.weight.data.copy_(torch.randn_like(m.weight)), m.drop_packed_weights()),
    lambda m: torch.nn.init.normal_(m.weight), lambda m: setattr(m, "bias", None),
    lambda m: m.double(),
], ids=["padding", "stride", "dilation", "stride-list", "data-write", "in-place", "no-bias", "double"])
def test_repeated_calls_follow_every_change(change):
    m = compiler.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(1, 8, 10, 12)
    with torch.no_grad():
        m(x)
        change(m)
        x = x.to(m.weight.dtype)
        m(x)
        if isinstance(m.stride, list):
            m.stride[0] = 2                 # mutated in place: a list attribute is never repeated
        for _ in range(2):
            assert_matches_torch(m, x)


def test_repeated_calls_follow_the_input():
    m = compiler.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        m(x)
        for other in (torch.randn(1, 8, 7, 5), x.contiguous(memory_format=torch.channels_last), x[:, :, :, ::2],
                      x[0]):
            y = assert_output_matches(m, other, m(other))
            assert y.stride() == torch_twin(m)(other).stride()
    y = m(x.requires_grad_())                # grad mode with an input that requires grad: autograd
    assert y.grad_fn is not None

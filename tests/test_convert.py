"""``compiler.convert``: whole models, fused and unfused, against torch.

Whole-model numbers are compared with the float64 run of the same torch model.  Our float32 result
may differ from it by more than torch's float32 result does (the kernels sum in another order, and
folding a BatchNorm rounds each folded weight once more), but by the same kind of error: each layer
contributes a few float32 roundings either way.  So the check is ``|ours - exact| <= 4 * |torch32 -
exact|_max + 8 u |exact|_max``: at most twice as many roundings as torch's own, doubled again for
where torch happens to be luckier, plus a few units of the output's last place.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import compiler
from compiler import zoo
from compiler.conversion import CPU_TORCH_ACTIVATIONS, ConversionWarning, convert, converted_layers
from compiler.fusion import FusedConv2d, FusedConvTranspose2d

U32 = 2.0 ** -24


def assert_model_matches(model, converted, *inputs):
    with torch.no_grad():
        ours = converted(*inputs)
        theirs = model(*inputs)
        exact = copy.deepcopy(model).double()(*(x.double() for x in inputs))
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch_error = (theirs.double() - exact).abs().max()
    error = (ours.double() - exact).abs().max()
    assert error <= 4 * torch_error + 8 * U32 * exact.abs().max(), (error.item(), torch_error.item())


def _randomise_batch_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


class Bottleneck(nn.Module):
    """ResNet's block: the last conv's BN, the residual add and the ReLU fuse into one kernel."""

    def __init__(self, channels=16, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(channels, 32, 1, stride=stride, bias=False), nn.BatchNorm2d(32))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class InvertedResidual(nn.Module):
    """MobileNet's block: depthwise + BN + ReLU6, squeeze-excitation, projection + residual add."""

    def __init__(self, channels=16):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False),
                                       nn.BatchNorm2d(48), nn.ReLU6(inplace=True))
        self.fc1, self.fc2 = nn.Conv2d(48, 12, 1), nn.Conv2d(12, 48, 1)
        self.project = nn.Sequential(nn.Conv2d(48, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        out = self.depthwise(self.expand(x))
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(out, 1)))))
        result = self.project(out * scale)
        result += x
        return result


class Decoder(nn.Module):
    """U-Net's up path: transposed conv + BN + ReLU, concatenation with the skip, conv + SiLU."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fuse = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        skip = x
        y = F.relu(self.bn(self.up(F.gelu(self.down(x)))))
        return F.silu(self.fuse(torch.cat([y, skip], dim=1)))


class Reused(nn.Module):
    """One conv module called twice (shared weights): never folded into either call's BN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.conv(torch.relu(self.bn(self.conv(x))))


class MyConv(nn.Conv2d):
    """A subclass that only adds a method: converted."""

    def describe(self):
        return "mine"


class StandardisedConv(nn.Conv2d):
    """A subclass with its own forward (weight standardisation): kept as it is."""

    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (self.weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Subclasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = MyConv(4, 8, 3, padding=1)
        self.b = StandardisedConv(8, 8, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = torch.relu(y)
        return y


def _fused(model):
    return {name: str(m.epilogue) for name, m in model.named_modules() if isinstance(m, (FusedConv2d, FusedConvTranspose2d))}


def test_residual_block_fuses_bn_add_and_relu():
    model = _randomise_batch_norms(Bottleneck().eval())
    converted = convert(model)
    assert _fused(converted) == {"conv1": "relu", "conv2": "relu", "conv3": "add+relu", "downsample.0": "none"}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert_model_matches(model, converted, torch.randn(2, 16, 10, 10))
    assert all(isinstance(m, nn.Conv2d) for m in model.modules() if "conv" in type(m).__name__.lower()), \
        "the original keeps torch's layers"


def test_inverted_residual_with_squeeze_excitation():
    model = _randomise_batch_norms(InvertedResidual().eval())
    converted = convert(model)
    assert _fused(converted) == {"expand.0": "hardswish", "depthwise.0": "relu6", "fc1": "relu",
                                 "fc2": "hardsigmoid", "project.0": "add"}
    assert_model_matches(model, converted, torch.randn(1, 16, 12, 12))


def test_transposed_decoder_with_concatenation():
    model = _randomise_batch_norms(Decoder().eval())
    converted = convert(model)
    # on the CPU, GELU and SiLU stay torch's (vectorised) ops: see CPU_TORCH_ACTIVATIONS
    assert _fused(converted) == {"up": "relu"}
    assert isinstance(converted.up, FusedConvTranspose2d)
    assert type(converted.down) is compiler.Conv2d and type(converted.fuse) is compiler.Conv2d
    assert_model_matches(model, converted, torch.randn(2, 8, 12, 12))


@pytest.mark.parametrize("target,fused", [
    ({"kind": "cuda", "arch": "sm_80"}, {"down": "gelu", "up": "relu", "fuse": "silu"}),
    ("llvm", {"up": "relu"}),
])
def test_transcendental_activations_fuse_on_gpus_only(target, fused):
    assert CPU_TORCH_ACTIVATIONS >= {"silu", "gelu", "sigmoid", "tanh"}
    converted = convert(_randomise_batch_norms(Decoder().eval()), target=target)
    assert _fused(converted) == fused


def test_a_conv_used_twice_is_converted_once_and_not_folded():
    model = _randomise_batch_norms(Reused().eval())
    converted = convert(model)
    assert type(converted.conv) is compiler.Conv2d and isinstance(converted.bn, nn.BatchNorm2d)
    assert_model_matches(model, converted, torch.randn(1, 8, 9, 9))


def test_conv_subclasses():
    model = Subclasses().eval()
    with pytest.warns(ConversionWarning, match="overrides torch's forward"):
        converted = convert(model)
    assert isinstance(converted.a, FusedConv2d) and str(converted.a.epilogue) == "relu"
    assert type(converted.b) is StandardisedConv
    assert_model_matches(model, converted, torch.randn(1, 4, 8, 8))


def test_a_model_fx_cannot_trace_converts_unfused():
    model = _randomise_batch_norms(Untraceable().eval())
    with pytest.warns(ConversionWarning, match="does not trace"):
        converted = convert(model)
    assert type(converted.conv) is compiler.Conv2d and isinstance(converted.bn, nn.BatchNorm2d)
    assert_model_matches(model, converted, torch.randn(1, 4, 8, 8))


def test_training_mode_and_fuse_false_convert_unfused():
    for model, kwargs in ((Bottleneck().train(), {}), (Bottleneck().eval(), {"fuse": False})):
        converted = convert(model, **kwargs)
        assert not _fused(converted) and type(converted).__name__ == "Bottleneck"
        assert len(converted_layers(converted)) == 4
        assert sum(isinstance(m, nn.BatchNorm2d) for m in converted.modules()) == 4


def test_a_single_layer_and_the_options_reach_every_layer(tmp_path):
    layer = nn.ConvTranspose2d(4, 4, 3, stride=2)
    converted = convert(layer, torch.randn(1, 4, 5, 5), tuning_database=False)
    assert type(converted) is compiler.ConvTranspose2d and converted.kernel is not None   # compiled
    assert converted.tuning_database is False
    model = convert(Bottleneck().eval(), target="llvm", tuning_database=tmp_path)
    assert {(m.target, m.tuning_database) for m in converted_layers(model)} == {("llvm", tmp_path)}


def test_converted_model_pickles_without_kernels():
    converted = convert(_randomise_batch_norms(Bottleneck().eval()))
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        y = converted(x)
        again = copy.deepcopy(converted)(x)
    torch.testing.assert_close(again, y, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "dcgan_generator"])
def test_zoo_networks(name):
    """Real networks: every conv converted, the expected fusions, torch's numbers."""
    model = zoo.make(name)
    shape = zoo.MODELS[name][1]
    x = torch.randn(shape)
    converted = convert(model)
    assert not any(type(m) in (nn.Conv2d, nn.ConvTranspose2d) for m in converted.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert_model_matches(model, converted, x)

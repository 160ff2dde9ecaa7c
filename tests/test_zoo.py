"""compiler.zoo: torchvision's architectures re-implemented (parameter counts are torchvision's),
eval forwards well-scaled and finite, torch.fx traces that compute the same."""
import pytest
import torch
import torch.fx

from compiler import zoo

# name: (parameters in torchvision's model / the DCGAN tutorial's Generator, output shape)
EXPECTED = {
    "resnet50": (25_557_032, (1, 1000)),
    "mobilenet_v3_large": (5_483_032, (1, 1000)),
    "efficientnet_b0": (5_288_548, (1, 1000)),
    "regnet_y_400mf": (4_344_144, (1, 1000)),
    "convnext_tiny": (28_589_128, (1, 1000)),
    # deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False): 42,004,074 with the
    # FCNHead auxiliary classifier (2,365,205), which is left out
    "deeplabv3_resnet50": (39_638_869, (1, 21, 256, 256)),
    "dcgan_generator": (3_576_704, (8, 3, 64, 64)),
}


def test_registry():
    assert list(zoo.MODELS) == list(EXPECTED)
    assert {name: shape for name, (_, shape) in zoo.MODELS.items()} == {
        "resnet50": (1, 3, 224, 224), "mobilenet_v3_large": (1, 3, 224, 224), "efficientnet_b0": (1, 3, 224, 224),
        "regnet_y_400mf": (1, 3, 224, 224), "convnext_tiny": (1, 3, 224, 224),
        "deeplabv3_resnet50": (1, 3, 256, 256), "dcgan_generator": (8, 100, 1, 1)}


@pytest.mark.parametrize("name", EXPECTED)
def test_parameter_count_is_torchvisions(name):
    with torch.device("meta"):  # no memory, no initialisation work
        model = zoo.MODELS[name][0]()
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name][0]


@pytest.mark.parametrize("name", EXPECTED)
def test_eval_forward_and_fx_trace(name):
    model = zoo.make(name)
    assert not any(m.training for m in model.modules())
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
    x = torch.randn(zoo.MODELS[name][1])
    with torch.no_grad():
        y = model(x)
    assert y.shape == EXPECTED[name][1]
    assert torch.isfinite(y).all()
    assert 1e-3 < y.std().item() < 1e3
    # the traced module computes exactly what the model does (on a smaller input: faster)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 100, 1, 1) if name == "dcgan_generator" else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    # stochastic depth stays one leaf call in the graph, as torchvision fx.wraps it
    calls = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert (zoo.stochastic_depth in calls) == (name in ("efficientnet_b0", "convnext_tiny"))


def test_make_is_deterministic_per_seed_and_keeps_the_global_generator():
    state = torch.get_rng_state()
    a, b, c = zoo.make("dcgan_generator"), zoo.make("dcgan_generator"), zoo.make("dcgan_generator", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["main.0.weight"], sc["main.0.weight"])
    assert not torch.equal(sa["main.1.running_var"], sc["main.1.running_var"])

"""Tests for gp_activations.models: parameter counts, shapes, per-site activation modules."""

import functools

import pytest
import torch
import torch.nn as nn

from gp_activations.errors import UserError
from gp_activations.models import (
    CHANNELS_ATTR,
    MODELS,
    activation_sites,
    build_model,
    call_factory,
    count_parameters,
    model_names,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

# One thread while these run: two OpenMP threads on a shared, busy CPU spin-wait for each other
# (MobileNetV2's grouped convolutions, one parallel region per group, took 40 s instead of 1 s
# under bf16 autocast); results are the same within the tests' tolerances.
pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_MODELS = [n for n in MODELS if MODELS[n].input_kind == "image"]

# Derived from the definitions (see the module docstring / reference/architectures.md).
EXPECTED_SITES = {
    "cnn1d": 3,
    "resnet1d": 7,  # stem + 2 x 3 blocks
    "mlp": 2,
    "cnn_digits": 3,
    "allcnnc": 9,
    "wrn10_4": 7,  # 2 per block, 3 blocks, + final BN-act
    "resnet20": 19,  # stem + 2 x 9 blocks
    "resnet56_v1": 55,  # stem + 2 x 27 blocks
    "resnet56_v2": 55,  # stem + 3 x 18 units - 1 (first unit) + final BN-act
    "mobilenetv2": 35,  # stem + 1 (t=1 block) + 2 x 16 blocks + final 1x1
}


def _input(name, batch=2):
    return torch.randn(batch, *MODELS[name].input_shape)


def _resnet_v1_params(depth, num_classes):
    """Closed-form parameter count of a CIFAR ResNet v1 with option-A shortcuts."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += cin * width * 9 + width * width * 9 + 4 * width  # 2 convs + 2 BNs
            cin = width
    return total + 64 * num_classes + num_classes


class PerChannelPReLU(nn.Module):
    """A fresh module with a learnable per-channel slope; records the channel count."""

    def __init__(self, num_channels):
        super().__init__()
        self.slope = nn.Parameter(torch.full((num_channels,), 0.25))

    def forward(self, x):
        shape = [1] * x.dim()
        shape[1] = -1  # channel axis for (N, C, ...) and (N, F)
        return torch.where(x >= 0, x, self.slope.view(shape) * x)


class RecordingFactory:
    def __init__(self):
        self.calls = []

    def __call__(self, num_channels):
        self.calls.append(num_channels)
        return PerChannelPReLU(num_channels)


# ----------------------------------------------------------------------------------------
# parameter counts


@pytest.mark.parametrize(
    "name, num_classes, expected",
    [
        ("resnet56_v1", 10, 853_018),
        ("allcnnc", 10, 1_369_738),
        ("allcnnc", 100, 1_387_108),
        ("wrn10_4", 10, 1_198_810),
        ("wrn10_4", 100, 1_221_940),
        ("resnet56_v2", 10, 1_663_338),
        ("resnet20", 10, 269_722),
        ("cnn1d", 10, 5_210),
        # stem 1*32*5 + BN 64; block 1: 2 convs 32*32*3 + 2 BN; blocks 2-3 also a 1x1 shortcut
        # conv 32*32 + BN; linear 32*10 + 10
        ("resnet1d", 10, 224 + 6_272 + 2 * (6_272 + 1_088) + 330),
        ("resnet1d", 100, 224 + 6_272 + 2 * (6_272 + 1_088) + 3_300),
        ("mlp", 10, (40 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)),
        ("mlp", 100, (40 * 256 + 256) + (256 * 256 + 256) + (256 * 100 + 100)),
        ("cnn_digits", 10, 85_066),
    ],
)
def test_parameter_counts_match_reference(name, num_classes, expected):
    model = build_model(name, nn.ReLU, num_classes=num_classes)
    assert count_parameters(model) == expected


def test_mobilenetv2_parameter_count_about_2_24m():
    n = count_parameters(build_model("mobilenetv2", nn.ReLU))
    assert abs(n - 2.24e6) / 2.24e6 < 0.02
    assert n == 2_236_682  # torchvision's 3,504,872 minus the 1000-class head plus a 10-class one


@pytest.mark.parametrize("depth", [20, 56])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet_v1_counts_match_formula(depth, num_classes):
    name = "resnet20" if depth == 20 else "resnet56_v1"
    model = build_model(name, nn.ReLU, num_classes=num_classes)
    assert count_parameters(model) == _resnet_v1_params(depth, num_classes)


def test_cnn_digits_is_small():
    assert count_parameters(build_model("cnn_digits", nn.ReLU)) < 100_000


# ----------------------------------------------------------------------------------------
# shapes, memory format, autocast, backward


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    for num_classes in (10, 100):
        model = build_model(name, nn.ReLU, num_classes=num_classes)
        out = model(_input(name))
        assert out.shape == (2, num_classes)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["cnn_digits"] + IMAGE_MODELS)
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    model = build_model(name, nn.GELU).eval()
    x = _input(name)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.sum().backward()


@pytest.mark.parametrize("name", ["cnn1d", "allcnnc", "resnet20", "resnet56_v2", "mobilenetv2",
                                  "wrn10_4"])
def test_autocast_bf16(name):
    model = build_model(name, nn.SiLU)
    x = _input(name)
    if MODELS[name].input_kind == "image":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10)
    out.float().sum().backward()


def test_flat_inputs_accepted_by_small_models():
    assert build_model("cnn1d", nn.ReLU)(torch.randn(3, 40)).shape == (3, 10)
    assert build_model("cnn_digits", nn.ReLU)(torch.randn(3, 64)).shape == (3, 10)


def test_in_channels_override():
    model = build_model("resnet20", nn.ReLU, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# ----------------------------------------------------------------------------------------
# activation sites


@pytest.mark.parametrize("name", list(MODELS))
def test_each_site_gets_its_own_per_channel_module(name):
    factory = RecordingFactory()
    model = build_model(name, factory)
    sites = activation_sites(model)
    assert len(sites) == EXPECTED_SITES[name]
    assert len(factory.calls) == EXPECTED_SITES[name]
    modules = [m for _, m in sites]
    assert len({id(m) for m in modules}) == len(modules)
    assert all(isinstance(m, PerChannelPReLU) for m in modules)
    assert len({id(m.slope) for m in modules}) == len(modules)
    # every site's parameter is registered in the model
    model_params = {id(p) for p in model.parameters()}
    assert all(id(m.slope) in model_params for m in modules)

    # Forward order: hooks fire in the order activation_sites lists, and each site sees a
    # tensor whose channel axis matches the channel count it was built for.
    seen = []

    def hook(module, inputs, output):
        seen.append(id(module))
        assert inputs[0].shape[1] == module.slope.numel() == getattr(module, CHANNELS_ATTR)

    handles = [m.register_forward_hook(hook) for m in modules]
    out = model(_input(name))
    for h in handles:
        h.remove()
    assert seen == [id(m) for m in modules]
    assert factory.calls == [m.slope.numel() for m in modules]
    out.sum().backward()
    assert all(m.slope.grad is not None for m in modules)


def test_site_names_are_qualified_and_depth_ordered():
    sites = activation_sites(build_model("resnet20", nn.ReLU))
    names = [n for n, _ in sites]
    assert names[0] == "stem.2"
    assert names[1:3] == ["blocks.0.act1", "blocks.0.act2"]
    assert names[-1] == "blocks.8.act2"


def test_relu_class_and_other_factories_work():
    x = _input("resnet20")
    for factory in (
        nn.ReLU,
        nn.GELU,
        lambda: nn.Tanh(),
        lambda num_channels: nn.PReLU(num_channels),
        lambda **kwargs: nn.PReLU(kwargs["num_channels"]),
        functools.partial(nn.PReLU, init=0.1),  # no num_channels keyword: PReLU()
        lambda: torch.tanh,  # plain callable gets wrapped in a module
    ):
        model = build_model("resnet20", factory)
        assert model(x).shape == (2, 10)
        assert len(activation_sites(model)) == 19


def test_call_factory_dispatch():
    assert isinstance(call_factory(nn.ReLU, 7), nn.ReLU)
    m = call_factory(lambda num_channels: nn.PReLU(num_channels), 7)
    assert m.weight.shape == (7,)
    m = call_factory(lambda **kw: nn.PReLU(kw["num_channels"]), 5)
    assert m.weight.shape == (5,)
    m = call_factory(nn.PReLU, 5)  # PReLU has no num_channels keyword
    assert m.weight.shape == (1,)
    assert getattr(m, CHANNELS_ATTR) == 5


def test_shared_instance_from_factory_is_copied_per_site():
    shared = nn.PReLU()
    model = build_model("cnn1d", lambda: shared)
    modules = [m for _, m in activation_sites(model)]
    assert len(modules) == 3
    assert len({id(m) for m in modules}) == 3
    assert len({id(m.weight) for m in modules}) == 3
    assert count_parameters(model) == 5_210 + 3


# ----------------------------------------------------------------------------------------
# registry


def test_registry():
    assert set(model_names()) == set(EXPECTED_SITES)
    for name, info in MODELS.items():
        assert info.input_kind in ("1d", "digits", "image")
        assert info.description and "\n" not in info.description
        assert callable(info.builder)


def test_unknown_model_raises_user_error():
    with pytest.raises(UserError) as excinfo:
        build_model("resnet1000", nn.ReLU)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "resnet1000" in message
    for name in model_names():
        assert name in message


@pytest.mark.parametrize("name, floor", [("resnet1d", 0.5), ("mlp", 0.2)])
def test_mnist1d_models_learn_in_one_epoch(name, floor):
    from gp_activations.train import train

    rec = train("relu", "mnist1d", name, epochs=1, seed=0, threads=1)
    assert rec.status == "ok" and rec.accuracy > floor, (rec.status, rec.accuracy)
    silu = train("silu", "mnist1d", name, epochs=1, seed=0, threads=1)
    assert silu.status == "ok" and silu.accuracy != rec.accuracy  # the activation is used


def test_resnet1d_is_normalised_and_residual():
    model = build_model("resnet1d", nn.ReLU)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 1 + 2 * 3 + 2
    blocks = [m for m in model.modules() if type(m).__name__ == "_BasicBlock1d"]
    assert len(blocks) == 3
    x = torch.randn(5, 32, 40)
    block = blocks[0].eval()
    with torch.no_grad():  # the identity shortcut: zeroing the residual branch returns act(x)
        block.bn2.weight.zero_()
        assert torch.allclose(block(x), torch.relu(x))

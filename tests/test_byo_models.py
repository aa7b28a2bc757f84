"""A search on the models people have (issue 20, item 3): a timm or torchvision network and the
user's own tensors, in a few lines -- and every way of getting it wrong is one line saying what
to change (docs/byo.md, "A search on the models you have").

Tiny on purpose: 200 images of 3x16x16, one epoch, two candidates.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gp_activations import Activation, replace_activations
from gp_activations.activation import ActivationModule
from gp_activations.adapt import factory_signature
from gp_activations.cli import main
from gp_activations.data import as_dataset
from gp_activations.errors import UserError
from gp_activations.evaluate import evaluate_run
from gp_activations.report import export_from_run
from gp_activations.search import SearchConfig, run_search
from gp_activations.train import build_network, check_model, train

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="redder", population=2, generations=1, init_zoo=False, param_variants=0,
            init_expressions=["mul(x, sigmoid(x))", "tanh(x)"], epochs=1, threads=1)


def images(n=200, size=16, classes=2, seed=0):
    """The user's tensors: N×3×size×size images whose class shows in the red channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g)
    x[:, 0] += y.view(-1, 1, 1).float()
    return x, y


def resnet10t(num_classes=2, **kwargs):
    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes, **kwargs)


def n_sites(net: nn.Module) -> int:
    return sum(isinstance(m, ActivationModule) for m in net.modules())


# ---------------------------------------------------------------------------------------------
# The few lines, end to end
# ---------------------------------------------------------------------------------------------
def test_timm_model_search_evaluate_export(tmp_path):
    X, y = images()
    model = lambda act: replace_activations(resnet10t(num_classes=2), act)  # noqa: E731
    result = run_search(SearchConfig(**TINY), out=tmp_path / "run", model=model, data=(X, y),
                        progress=False)
    assert result.counts["done"] >= 2 and result.counts["failed"] == 0, result.counts
    rows = evaluate_run(tmp_path / "run", top=1, seeds=1, epochs=1, baselines=["relu"],
                        model=model, data=(X, y), progress=False)
    assert {r.label for r in rows} >= {"relu"} and len(rows) == 2
    act = Activation.from_run(tmp_path / "run")
    net = replace_activations(resnet10t(num_classes=2), act)
    assert n_sites(net) == 11 and net(X[:2]).shape == (2, 2)
    assert "class EvolvedActivation" in export_from_run(tmp_path / "run", fmt="torch")


def test_a_factory_without_activation_argument_gets_its_activations_replaced(tmp_path):
    """``model=lambda num_classes: create(...)``: the library calls replace_activations."""
    X, y = images()
    ds = as_dataset((X, y))
    for model, sites in ((lambda num_classes: resnet10t(num_classes), 11),
                         (lambda: tv.models.resnet18(num_classes=2), 17),  # 9 modules, 17 calls
                         (functools.partial(resnet10t, num_classes=2), 11)):  # only defaults
        assert not factory_signature(model)[0]
        net = build_network(model, Activation.from_string("tanh(x)").factory(), ds)
        assert n_sites(net) == sites and net(X[:2]).shape == (2, 2)
    rec = train("swish_beta", ds, lambda: tv.models.resnet18(num_classes=2), epochs=1,
                batch_size=64, device="cpu")
    assert rec.status == "ok", rec.reason
    assert len(rec.param_trajectory[-1]) == 17  # every site's own learned scalar, tracked


def test_factory_signatures():
    def keyword(act, num_classes=2): ...
    def bare(act_factory, num_classes): ...
    def defaulted(act=None, num_classes=2): ...
    def only_classes(num_classes): ...
    assert factory_signature(keyword) == (True, True)
    assert factory_signature(bare) == (True, True)
    assert factory_signature(defaulted) == (True, True)  # named like an activation
    assert factory_signature(only_classes) == (False, True)
    assert factory_signature(lambda: None) == (False, False)


# ---------------------------------------------------------------------------------------------
# Each mistake: one line saying what to change, before any candidate trains
# ---------------------------------------------------------------------------------------------
def _one_line_error(model, data) -> str:
    with pytest.raises(UserError) as info:
        check_model(model, data)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_head_of_the_wrong_width_says_num_classes(tmp_path):
    X, y = images(n=60, classes=10)
    text = _one_line_error(lambda act: replace_activations(resnet10t(num_classes=1000), act),
                           (X, y))
    assert ("the model outputs 1000 logits but the data has 10 classes: build it with "
            "num_classes=10 (timm: create_model(..., num_classes=10); torchvision: "
            "resnet18(num_classes=10))") in text
    # a factory that takes num_classes but does not pass it on
    text = _one_line_error(lambda num_classes: tv.models.resnet18(), (X, y))
    assert "outputs 1000 logits" in text and "pass it on to the model" in text
    # and the search stops there, before training anything
    with pytest.raises(UserError, match="outputs 1000 logits"):
        run_search(SearchConfig(**TINY), out=tmp_path / "run", progress=False, data=(X, y),
                   model=lambda: resnet10t(num_classes=1000))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.sqlite"))


def test_grayscale_inputs_into_a_three_channel_model():
    X, y = images(n=60)
    model = lambda act: replace_activations(resnet10t(), act)  # noqa: E731
    text = _one_line_error(model, (X[:, 0], y))  # N×H×W: no channel dimension
    assert ("the inputs have shape (16, 16), no channel dimension, but its first layer conv1.0 "
            "(Conv2d) takes 3 channels: give x.unsqueeze(1).expand(-1, 3, -1, -1)") in text
    assert "in_chans=1" in text
    text = _one_line_error(model, (X[:, :1], y))  # N×1×H×W
    assert "the inputs have 1 channel (shape (1, 16, 16))" in text
    assert "create_model(..., in_chans=1)" in text and "x.expand(-1, 3, -1, -1)" in text
    text = _one_line_error(lambda: tv.models.resnet18(num_classes=2), (X[:, :1], y))
    assert "its first layer conv1 (Conv2d) takes 3" in text
    text = _one_line_error(model, (X.permute(0, 2, 3, 1), y))  # N×H×W×C
    assert "channels-last" in text and "x.permute(0, 3, 1, 2)" in text
    # what the messages say to do works
    check_model(model, (X[:, :1].expand(-1, 3, -1, -1), y))
    check_model(lambda act: replace_activations(resnet10t(in_chans=1), act), (X[:, :1], y))
    check_model(model, (X.permute(0, 2, 3, 1).permute(0, 3, 1, 2), y))


def test_flat_inputs_into_an_mlp_say_flatten():
    X, y = images(n=60, size=4)
    mlp = lambda act: nn.Sequential(nn.Linear(48, 16), act(), nn.Linear(16, 2))  # noqa: E731
    assert "flatten them (x.flatten(1)" in _one_line_error(mlp, (X, y))


def test_a_factory_that_ignores_the_activation():
    X, y = images(n=60)
    text = _one_line_error(lambda act: resnet10t(), (X, y))
    assert text.startswith("the model factory ignores its activation argument")
    assert "replace_activations(<build it>, act)" in text


def test_a_built_model_instead_of_a_factory():
    X, y = images(n=60)
    text = _one_line_error(resnet10t(), (X, y))
    assert text.startswith("model is a built ResNet (an nn.Module)")
    assert "model=lambda: ResNet(...)" in text


def test_a_network_without_activations():
    X, y = images(n=60, size=4)
    text = _one_line_error(lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), (X, y))
    assert "no activation site to replace in Sequential" in text


def test_a_model_returning_something_else_than_logits():
    X, y = images(n=60, size=4)

    class Pair(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), act(), nn.Linear(8, 2))

        def forward(self, x):
            return self.net(x), x

    assert "returns a tuple, not a tensor of logits" in _one_line_error(Pair, (X, y))


def test_the_cli_exits_2_with_the_line(tmp_path, capsys):
    (tmp_path / "task.py").write_text(
        "import timm, torch\n"
        "from gp_activations import replace_activations\n"
        "def make_model(act):\n"
        "    return replace_activations(timm.create_model('resnet10t', num_classes=1000), act)\n"
        "def load_data():\n"
        "    return torch.randn(40, 3, 16, 16), torch.randint(0, 10, (40,))\n")
    (tmp_path / "task.toml").write_text(
        'dataset = "mine"\nmodel = "task.py:make_model"\ndata = "task.py:load_data"\n'
        "population = 2\ngenerations = 1\n")
    code = main(["search", "--config", str(tmp_path / "task.toml"), "--out",
                 str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "build it with num_classes=10" in err

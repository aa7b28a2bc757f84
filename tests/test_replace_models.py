"""replace_activations on the models people have (torchvision, timm, Hugging Face transformers,
a plain model with functional calls), offline (no weights downloaded), and its errors.

For every model the number of replaced sites is checked against an oracle computed another
way: a TorchFunctionMode counting the hidden-activation calls (F.relu, F.gelu, torch.tanh,
x.relu(), ...) that one forward of the *original* model makes -- after replacement the same
forward makes none.  Forward and backward run, every site's learnable scalar gets a gradient
and moves with an optimizer step, and the state_dict saves and loads into a freshly replaced
copy with identical outputs.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gp_activations import Activation, UserError, replace_activations
from gp_activations.activation import ActivationModule

pytestmark = pytest.mark.usefixtures("one_thread")

# The oracle's own list (not replace.py's table): the functions that compute a hidden activation.
HIDDEN_CALLS = {
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
    F.leaky_relu, F.leaky_relu_, F.prelu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardtanh, torch.tanh, torch.Tensor.tanh, F.softplus,
}


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HIDDEN_CALLS:
            name = getattr(func, "__name__", str(func))
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def hidden_calls(model, inputs) -> dict:
    """{function name: calls} of hidden activations in one forward of ``model``."""
    counter = _CountCalls()
    with torch.no_grad(), counter:
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return counter.calls


def swish_beta() -> Activation:
    return Activation.from_string("mul(x, sigmoid(x))", "pangaea", params=[3])  # x·σ(p0·x)


def _tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _run(model, inputs):
    return _tensor(model(**inputs) if isinstance(inputs, dict) else model(inputs))


def _gammas_to_one(model):
    """Normalisation scales set to one: timm zero-initialises the last one of each residual
    branch, which at init gives the branch's activations exactly zero gradient."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
    return model


def check_model(build, inputs, *, expect_warning: bool = False) -> dict:
    """Replace every hidden activation of ``build()`` and check it end to end; returns the
    oracle's counts and the summary."""
    torch.manual_seed(0)
    original = _gammas_to_one(build()).eval()
    oracle = hidden_calls(original, inputs)
    n_calls = sum(oracle.values())
    assert n_calls > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = replace_activations(copy.deepcopy(original), swish_beta()).eval()
    messages = [str(w.message) for w in caught if "replace_activations" in str(w.message)]
    assert bool(messages) == expect_warning, messages
    summary = net.replaced_activations
    sites = [m for _, m in net.named_modules() if isinstance(m, ActivationModule)]
    # every hidden activation the original calls is a site of its own, and none is left
    assert len(summary) == len(sites) == len({id(m) for m in sites}) == n_calls, (oracle, summary)
    assert hidden_calls(net, inputs) == {}
    assert str(summary).startswith(f"{n_calls} activation sites replaced")
    # at init (p0 = 1) each site is SiLU: the output is finite and the right shape
    with torch.no_grad():
        assert _run(net, inputs).shape == _run(original, inputs).shape
    # forward, backward; every site's scalar gets a gradient and moves with a step
    opt = torch.optim.Rprop([m.p0 for m in sites], lr=0.01)  # moves each by lr·sign(grad)
    # the loss also reads each site's output directly: deep squeeze-excitation sites see
    # inputs of ~1e-9 at init, so through the network their gradient underflows to zero
    outputs = []
    hooks = [m.register_forward_hook(lambda mod, args, out: outputs.append(out)) for m in sites]
    loss = _run(net, inputs).float().pow(2).mean()
    for hook in hooks:
        hook.remove()
    assert len(outputs) == len(sites)  # each site called exactly once
    (loss + sum(out.sum() for out in outputs)).backward()
    assert all(m.p0.grad is not None and torch.isfinite(m.p0.grad).all() for m in sites)
    zero = [n for n, m in net.named_modules()
            if isinstance(m, ActivationModule) and not m.p0.grad.abs().sum() > 0]
    assert not zero, f"no gradient at {zero}"
    before = [m.p0.detach().clone() for m in sites]
    opt.step()
    assert all(not torch.equal(b, m.p0) for b, m in zip(before, sites))
    # the state_dict saves and loads into a freshly replaced copy: identical outputs
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = replace_activations(_gammas_to_one(build()), swish_beta()).eval()
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        torch.testing.assert_close(_run(fresh, inputs), _run(net, inputs), rtol=0, atol=0)
    return {"oracle": oracle, "summary": summary, "net": net, "original": original}


IMAGE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------
def test_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    got = check_model(lambda: tv.models.resnet18(weights=None, num_classes=10), IMAGE)
    assert got["oracle"] == {"relu": 17}
    assert got["summary"].counts() == {"module nn.ReLU": 9, "call of module nn.ReLU": 8}


def test_torchvision_mobilenet_v3_small_keeps_its_gates():
    tv = pytest.importorskip("torchvision")
    got = check_model(lambda: tv.models.mobilenet_v3_small(weights=None, num_classes=10), IMAGE)
    assert got["oracle"] == {"hardswish": 19, "relu": 14}
    assert got["summary"].counts() == {"module nn.Hardswish": 19, "module nn.ReLU": 14}
    gates = [n for n, m in got["original"].named_modules() if isinstance(m, nn.Hardsigmoid)]
    assert len(gates) == 9  # the squeeze-excitation gates, untouched
    assert all(isinstance(got["net"].get_submodule(n), nn.Hardsigmoid) for n in gates)


def test_torchvision_efficientnet_b0():
    tv = pytest.importorskip("torchvision")
    got = check_model(lambda: tv.models.efficientnet_b0(weights=None, num_classes=10), IMAGE)
    assert got["oracle"] == {"silu": 49}
    assert sum(isinstance(m, nn.Sigmoid) for m in got["net"].modules()) == 16  # SE gates


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------
def test_timm_resnet():
    timm = pytest.importorskip("timm")
    got = check_model(lambda: timm.create_model("resnet10t", pretrained=False, num_classes=10),
                      IMAGE)
    assert got["oracle"] == {"relu": 11}


def test_timm_convnext_uses_timms_own_gelu_class():
    timm = pytest.importorskip("timm")
    got = check_model(lambda: timm.create_model("convnext_atto", pretrained=False,
                                                num_classes=10), IMAGE)
    assert got["oracle"] == {"gelu": 12}
    assert got["summary"].counts() == {"module GELU": 12}  # timm.layers.activations.GELU


def test_timm_vit():
    timm = pytest.importorskip("timm")
    got = check_model(lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                img_size=32, depth=2, num_classes=10), IMAGE)
    assert got["oracle"] == {"gelu": 2}


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers, from a tiny config (nothing downloaded)
# ---------------------------------------------------------------------------------------------
def test_transformers_bert_from_a_tiny_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=100,
                                     max_position_embeddings=16)
    inputs = {"input_ids": torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
    # BertModel's own forward does not trace (it builds masks by item assignment): its
    # submodules are traced one by one, and a warning says so
    got = check_model(lambda: transformers.BertModel(config), inputs, expect_warning=True)
    assert got["oracle"] == {"gelu": 2, "tanh": 1}  # GELUActivation x 2 + the pooler's Tanh
    assert got["summary"].counts() == {"module GELUActivation": 2, "module nn.Tanh": 1}
    assert type(got["net"]) is transformers.BertModel  # still itself: its API is intact


# ---------------------------------------------------------------------------------------------
# a plain model with functional calls
# ---------------------------------------------------------------------------------------------
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.leaky = nn.LeakyReLU(0.1)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU(approximate="tanh"))

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.gelu(self.fc2(x))
        x = self.fc2(x).relu()
        x = torch.tanh(x)
        x = self.leaky(self.block(x))
        F.relu(x, inplace=True)          # in place: x is the activation's output afterwards
        x = torch.sigmoid(x) * x         # a gate: not replaced
        return self.fc3(x.relu_())


def test_plain_model_with_functional_calls():
    got = check_model(Functional, torch.randn(2, 6))
    assert got["oracle"] == {"relu": 3, "relu_": 1, "gelu": 2, "tanh": 1, "leaky_relu": 1}
    net = got["net"]
    assert isinstance(net, torch.fx.GraphModule) and type(net).__name__ == "Functional"
    assert [(n, k) for n, k in got["summary"]] == [
        ("leaky", "module nn.LeakyReLU"), ("block.1", "module nn.GELU"),
        ("relu_fx", "call F.relu"), ("gelu_fx", "call F.gelu"), ("relu_fx_1", "call Tensor.relu"),
        ("tanh_fx", "call torch.tanh"), ("relu_fx_2", "call F.relu"),
        ("relu_fx_3", "call Tensor.relu_")]
    assert "  relu_fx: call F.relu" in str(got["summary"])
    # untouched parameters keep their state_dict keys
    original_keys = set(got["original"].state_dict())
    assert original_keys <= set(net.state_dict())
    assert set(net.state_dict()) - original_keys == {f"{n}.p0" for n, _ in got["summary"]}


def test_inplace_call_semantics_are_kept():
    """With the identity-like factory nn.ReLU, the replaced model computes what the original
    does -- including a call whose result is dropped (F.relu(x, inplace=True))."""
    torch.manual_seed(0)
    model = Functional().eval()
    net = replace_activations(copy.deepcopy(model), lambda: nn.ReLU())
    x = torch.randn(4, 6)

    def by_hand(m, x):  # Functional.forward with every activation a ReLU
        x = torch.relu(m.fc1(x))
        x = torch.relu(m.fc2(x))
        x = torch.relu(m.fc2(x))
        x = torch.relu(x)
        x = torch.relu(torch.relu(m.block[0](x)))
        x = torch.relu(x)
        x = torch.sigmoid(x) * x
        return m.fc3(torch.relu(x))

    with torch.no_grad():
        torch.testing.assert_close(net(x), by_hand(model, x))


def test_where_and_types_choose_and_calls_false_skips_calls():
    model = Functional()
    net = replace_activations(copy.deepcopy(model), "silu", types=(nn.GELU,))
    assert net.replaced_activations.names() == ["block.1", "gelu_fx"]  # nn.GELU means F.gelu too
    net = replace_activations(copy.deepcopy(model), "silu",
                              where=lambda name, what: what is not F.relu and name != "leaky")
    kinds = dict(net.replaced_activations)
    assert "leaky" not in kinds and "call F.relu" not in kinds.values()
    assert kinds["relu_fx"] == "call Tensor.relu"
    net = replace_activations(copy.deepcopy(model), "silu", calls=False)
    assert net.replaced_activations.names() == ["leaky", "block.1"]
    # Sigmoid is not a default site, but types= can choose it
    seq = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid())
    with pytest.raises(UserError, match="no activation site"):
        replace_activations(seq, "silu")
    assert replace_activations(seq, "silu", allow_none=True).replaced_activations == []
    assert replace_activations(seq, "silu", types=(nn.Sigmoid,)).replaced_activations.names() == ["1"]


# ---------------------------------------------------------------------------------------------
# bad input: one clear UserError, model left as it was
# ---------------------------------------------------------------------------------------------
def _snapshot(model):
    return [(n, m) for n, m in model.named_modules(remove_duplicate=False)]


def test_bad_input_is_a_user_error_and_leaves_the_model_alone():
    model = Functional()
    before = _snapshot(model)
    with pytest.raises(UserError, match=r"types: 'relu' is not a module class"):
        replace_activations(model, "silu", types=("relu",))

    def boom(name, what):
        if name == "relu_fx_1":  # raised while calls are replaced: modules were already swapped
            raise KeyError("nope")
        return True

    with pytest.raises(UserError, match=r"where\('relu_fx_1', .*\) raised KeyError"):
        replace_activations(model, "silu", where=boom)
    with pytest.raises(UserError, match="no activation site to replace in Linear"):
        replace_activations(nn.Linear(2, 2), "silu")

    made = iter(range(100))

    def factory():  # fails at the 4th site, a call site: after two modules were swapped
        if next(made) == 3:
            raise RuntimeError("factory failed")
        return nn.ReLU()

    with pytest.raises(RuntimeError, match="factory failed"):
        replace_activations(model, factory)
    assert _snapshot(model) == before  # same modules, same objects, everywhere


# ---------------------------------------------------------------------------------------------
# the exported class: apply_to reaches every site too
# ---------------------------------------------------------------------------------------------
def test_exported_apply_to_reaches_calls(tmp_path):
    from conftest import imported_modules, load_exported

    act = swish_beta()
    learned = {f"s{i}": {"p0": 1.0 + 0.25 * i} for i in range(8)}
    source = act.torch_source(values=learned)
    assert imported_modules(source) == {"torch"}  # still standalone
    exported = load_exported(source, tmp_path / "evolved_calls.py", "evolved_calls")
    cls = exported.EvolvedActivation
    torch.manual_seed(0)
    model = Functional().eval()
    x = torch.randn(2, 6)
    net = cls.apply_to(copy.deepcopy(model), by="order")
    sites = [(n, m) for n, m in net.named_modules() if isinstance(m, cls)]
    assert len(sites) == 8 and hidden_calls(net, x) == {}
    assert [m.p0.item() for _, m in sites] == [1.0 + 0.25 * i for i in range(8)]
    # the same sites, the same order as replace_activations: by="name" after renaming
    names = replace_activations(copy.deepcopy(model), act).replaced_activations.names()
    assert [n for n, _ in sites] == names
    mean = cls.apply_to(copy.deepcopy(model), by="mean")
    assert sum(isinstance(m, cls) for m in mean.modules()) == 8
    with pytest.raises(ValueError, match="model has 9 activation modules and calls"):
        cls.apply_to(nn.Sequential(copy.deepcopy(model), nn.ReLU()), by="order")

"""Activation sites: the torch export's per-site learned values (SITES / LEARNED, ``site=`` by
index or name, ``apply_to``) and ``replace_activations`` giving every *call* its own module
(torch.fx) on torchvision's resnet18, whose BasicBlock calls ``self.relu`` twice."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from conftest import load_exported, imported_modules
from torch import nn

from gp_activations import Activation, UserError, replace_activations
from gp_activations.activation import ActivationModule
from gp_activations.models import activation_sites, cnn_digits
from gp_activations.train import site_parameters

SWISH_BETA = ("mul(x, sigmoid(x))", "pangaea", [3])  # x·σ(p0·x); p0 = 1 is SiLU

pytestmark = pytest.mark.usefixtures("one_thread")




def swish_beta() -> Activation:
    return Activation.from_string(*SWISH_BETA)


def _trained_digits_net(act: Activation, per_channel: bool = False) -> nn.Module:
    """cnn_digits whose three sites hold different scalars (as after training)."""
    torch.manual_seed(0)
    net = cnn_digits(act.factory(per_channel=per_channel))
    with torch.no_grad():
        for i, (_, site) in enumerate(activation_sites(net)):
            for j, name in enumerate(site.param_names):
                p = getattr(site, name)
                p.copy_(0.5 + 0.75 * i + 0.1 * j + 0.01 * torch.arange(p.numel()).view(p.shape))
    return net.eval()


# ---------------------------------------------------------------------------------------------
# export: SITES / LEARNED, site= by index or name
# ---------------------------------------------------------------------------------------------
def test_exported_sites_by_index_and_name(tmp_path):
    act = Activation.from_string("mul(x, sigmoid(x))", "pangaea", params=[0, 3])
    net = _trained_digits_net(act)
    learned = site_parameters(net)  # what the run store records: {site name: {param: value}}
    names = ["features.1", "features.3", "classifier.1"]
    assert list(learned) == names
    source = act.torch_source(values=learned)
    assert imported_modules(source) == {"torch"}
    assert "site=None, the default, takes LEARNED_MEAN" in source  # documented in the file
    exported = load_exported(source, tmp_path / "evolved.py", "evolved_sites")
    assert exported.SITES == names and list(exported.LEARNED) == names
    assert exported.LEARNED == learned  # floats round-trip exactly
    x = torch.linspace(-4, 4, 33)
    modules = dict(activation_sites(net))
    for i, name in enumerate(names):
        by_index = exported.EvolvedActivation(site=i)
        by_name = exported.EvolvedActivation(site=name)
        assert by_index.site == by_name.site == name
        assert by_index.p0.item() == pytest.approx(learned[name]["p0"])
        assert by_index.p1.item() == pytest.approx(learned[name]["p1"])
        torch.testing.assert_close(by_index(x), modules[name](x))
        torch.testing.assert_close(by_name(x), modules[name](x))
        assert f"site={name!r}" in repr(by_name)
    assert exported.EvolvedActivation(site=-1).site == "classifier.1"
    # site=None: the mean over sites, the function --format latex --with-learned-params prints
    mean = exported.EvolvedActivation()
    assert mean.site is None and "mean over sites" in repr(mean)
    for p in ("p0", "p1"):
        want = sum(learned[n][p] for n in names) / 3
        assert getattr(mean, p).item() == pytest.approx(want)
        assert exported.LEARNED_MEAN[p] == pytest.approx(want)
    assert not torch.allclose(mean(x), exported.EvolvedActivation(site=0)(x))
    # num_channels repeats a learned scalar per channel
    per_channel = exported.EvolvedActivation(num_channels=4, site="features.3")
    assert per_channel.p0.tolist() == pytest.approx([learned["features.3"]["p0"]] * 4)


def test_exported_site_that_does_not_exist_is_a_clear_error(tmp_path):
    act = swish_beta()
    learned = site_parameters(_trained_digits_net(act))
    exported = load_exported(act.torch_source(values=learned), tmp_path / "e.py", "evolved_err")
    sites = "['features.1', 'features.3', 'classifier.1']"
    with pytest.raises(ValueError, match=r"site 3 is out of range: 3 sites .*index 0\.\.2") as e:
        exported.EvolvedActivation(site=3)
    assert sites in str(e.value)
    with pytest.raises(ValueError, match="site -4 is out of range"):
        exported.EvolvedActivation(site=-4)
    with pytest.raises(KeyError, match="unknown site 'layer1.0.act1'") as e:
        exported.EvolvedActivation(site="layer1.0.act1")
    assert sites in str(e.value)
    for bad in (True, 1.0):
        with pytest.raises(TypeError, match="site must be an index"):
            exported.EvolvedActivation(site=bad)


def test_exported_per_channel_values(tmp_path):
    act = swish_beta()
    net = _trained_digits_net(act, per_channel=True)
    learned = site_parameters(net)
    widths = [len(v["p0"]) for v in learned.values()]
    assert widths == [32, 64, 64]
    exported = load_exported(act.torch_source(values=learned), tmp_path / "pc.py", "evolved_pc")
    x = torch.randn(2, 64, 3, 3)
    site = exported.EvolvedActivation(site="features.3")
    assert site.p0.shape == (64,)
    torch.testing.assert_close(site(x), dict(activation_sites(net))["features.3"](x))
    assert exported.EvolvedActivation(num_channels=64, site=1).p0.shape == (64,)
    with pytest.raises(ValueError, match=r"LEARNED\['features.3'\]\['p0'\] has 64 per-channel "
                                         r"values; num_channels=16 does not fit"):
        exported.EvolvedActivation(num_channels=16, site=1)
    # channel counts differ between sites: the mean is over sites and channels, one number
    flat = [v for s in learned.values() for v in s["p0"]]
    assert exported.EvolvedActivation().p0.item() == pytest.approx(sum(flat) / len(flat))


def test_export_value_forms(tmp_path):
    act = swish_beta()
    x = torch.linspace(-3, 3, 13)
    # a list of dicts: sites named site0, site1, ...; a missing parameter takes its init
    listed = load_exported(act.torch_source(values=[{"p0": 2.0}, {}]), tmp_path / "l.py", "ev_l")
    assert listed.SITES == ["site0", "site1"]
    assert listed.LEARNED == {"site0": {"p0": 2.0}, "site1": {"p0": 1.0}}
    torch.testing.assert_close(listed.EvolvedActivation(site="site0")(x), x * torch.sigmoid(2 * x))
    torch.testing.assert_close(listed.EvolvedActivation(site=1)(x), x * torch.sigmoid(x))
    # one dict: every instance's values, no sites
    one = load_exported(act.torch_source(values={"p0": 3.0}), tmp_path / "o.py", "ev_o")
    assert one.VALUES == {"p0": 3.0} and not hasattr(one, "SITES")
    torch.testing.assert_close(one.EvolvedActivation()(x), x * torch.sigmoid(3 * x))
    with pytest.raises(TypeError):
        one.EvolvedActivation(site=0)
    with pytest.raises(UserError, match="keyed by site name"):
        act.torch_source(values={0: {"p0": 1.0}})
    with pytest.raises(UserError, match="of site 'a' name unknown parameters"):
        act.torch_source(values={"a": {"p7": 1.0}})
    with pytest.raises(UserError, match="of site 1 must be a dict"):
        act.torch_source(values=[{"p0": 1.0}, 2.0])


# ---------------------------------------------------------------------------------------------
# export: apply_to another network
# ---------------------------------------------------------------------------------------------
def test_apply_to_the_same_network_by_name(tmp_path):
    act = swish_beta()
    trained = _trained_digits_net(act)
    exported = load_exported(act.torch_source(values=site_parameters(trained)),
                             tmp_path / "a.py", "evolved_apply")
    fresh = cnn_digits(nn.ReLU).eval()  # the same network built with plain ReLUs
    assert exported.EvolvedActivation.apply_to(fresh) is fresh
    for name, module in fresh.named_modules():
        if name in exported.SITES:
            assert isinstance(module, exported.EvolvedActivation) and module.site == name
    assert not any(isinstance(m, nn.ReLU) for m in fresh.modules())
    fresh.load_state_dict(trained.state_dict())  # same keys: features.1.p0, ...
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))
    # applying again (to its own modules) maps the same way
    exported.EvolvedActivation.apply_to(fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))


def test_apply_to_another_network(tmp_path):
    act = swish_beta()
    learned = site_parameters(_trained_digits_net(act))
    exported = load_exported(act.torch_source(values=learned), tmp_path / "o.py", "evolved_other")
    cls = exported.EvolvedActivation
    other = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"missing \['features.1', 'features.3', "
                                         r"'classifier.1'\], not learned \['1', '3', '5'\]"):
        cls.apply_to(copy.deepcopy(other))
    ordered = cls.apply_to(copy.deepcopy(other), by="order")
    assert [ordered[i].site for i in (1, 3, 5)] == ["features.1", "features.3", "classifier.1"]
    assert [ordered[i].p0.item() for i in (1, 3, 5)] == pytest.approx(
        [v["p0"] for v in learned.values()])
    deeper = nn.Sequential(*other, nn.ReLU())
    with pytest.raises(ValueError, match=r"model has 4 activation modules .* but 3 sites were "
                                         r"learned"):
        cls.apply_to(deeper, by="order")
    assert isinstance(deeper[7], nn.ReLU)  # nothing replaced on error
    cls.apply_to(deeper, by="mean")
    assert all(deeper[i].site is None for i in (1, 3, 5, 7))
    assert deeper[7].p0.item() == pytest.approx(exported.LEARNED_MEAN["p0"])
    with pytest.raises(ValueError, match="by must be"):
        cls.apply_to(other, by="index")
    with pytest.raises(ValueError, match="itself an activation"):
        cls.apply_to(nn.ReLU())


# ---------------------------------------------------------------------------------------------
# replace_activations: every call its own module
# ---------------------------------------------------------------------------------------------
def _relu_calls(model: nn.Module) -> int:
    gm = torch.fx.symbolic_trace(model)
    return sum(n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU)
               for n in gm.graph.nodes)


def _silu_reference(model: nn.Module) -> nn.Module:
    """model with every ReLU module swapped for nn.SiLU by hand (stateless, sharing is fine)."""
    ref = copy.deepcopy(model)
    for module in list(ref.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
    return ref


@pytest.fixture
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def test_resnet18_every_call_gets_its_own_module(resnet18):
    assert sum(isinstance(m, nn.ReLU) for m in resnet18.modules()) == 9  # one per block + stem
    assert _relu_calls(resnet18) == 17  # stem + 2 per BasicBlock x 8
    reference = _silu_reference(resnet18).eval()
    act = swish_beta()
    net = replace_activations(resnet18, act)
    assert isinstance(net, torch.fx.GraphModule) and type(net).__name__ == "ResNet"
    sites = [(n, m) for n, m in net.named_modules() if isinstance(m, ActivationModule)]
    assert len(sites) == 17 == len({id(m) for _, m in sites})
    assert len({m.p0.data_ptr() for _, m in sites}) == 17  # each call owns its scalar
    names = [n for n, _ in sites]
    assert names[:3] == ["relu", "layer1.0.relu", "layer1.0.relu_1"] and "layer4.1.relu_1" in names
    calls = [n.target for n in net.graph.nodes if n.op == "call_module"
             and isinstance(net.get_submodule(n.target), ActivationModule)]
    assert sorted(calls) == sorted(names)  # one call each
    assert isinstance(net.layer1, nn.Sequential) and isinstance(net.layer1[0].relu_1, ActivationModule)
    # at init (p0 = 1) the network is the SiLU network
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-5)
    # the original model's structure is untouched by the split (still 9 modules, 9 replaced)
    assert sum(isinstance(m, ActivationModule) for m in resnet18.modules()) == 9
    assert not hasattr(resnet18.layer1[0], "relu_1")


def test_resnet18_scalars_train_independently(resnet18):
    net = replace_activations(resnet18, swish_beta()).train()
    sites = {n: m for n, m in net.named_modules() if isinstance(m, ActivationModule)}
    before = {n: m.p0.item() for n, m in sites.items()}
    assert set(before.values()) == {1.0}
    opt = torch.optim.SGD([m.p0 for m in sites.values()], lr=1.0)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(net(x), y).backward()
    grads = {n: m.p0.grad.item() for n, m in sites.items()}
    assert all(g != 0.0 for g in grads.values())
    opt.step()
    after = {n: m.p0.item() for n, m in sites.items()}
    assert all(after[n] == pytest.approx(1.0 - grads[n]) for n in sites)
    assert len(set(after.values())) == 17  # independent: no two calls share a value
    assert after["layer1.0.relu"] != after["layer1.0.relu_1"]
    # state_dict semantics: the keys name every call; a second split model loads them
    state = net.state_dict()
    assert "layer1.0.relu_1.p0" in state and "layer1.0.relu.p0" in state
    torch.manual_seed(2)
    import torchvision

    other = replace_activations(torchvision.models.resnet18(num_classes=10), swish_beta())
    other.load_state_dict(state)
    net.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), net(x))
        torch.testing.assert_close(copy.deepcopy(net)(x), net(x))
        buffer = io.BytesIO()
        torch.save(net, buffer)
        buffer.seek(0)
        torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), net(x))


def test_resnet18_share_keeps_one_module_per_instance(resnet18):
    net = replace_activations(resnet18, swish_beta(), share=True)
    assert net is resnet18 and not isinstance(net, torch.fx.GraphModule)
    sites = [m for m in net.modules() if isinstance(m, ActivationModule)]
    assert len(sites) == 9
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    block = net.layer1[0]
    # the block's one module serves both of its calls: its p0 sums the gradients of both
    assert block.relu.p0.grad is not None and not hasattr(block, "relu_1")
    relu = nn.ReLU()
    seq = nn.Sequential(nn.Linear(2, 2), relu, nn.Linear(2, 2), relu)
    replace_activations(seq, "silu", share=True)
    assert isinstance(seq[1], ActivationModule) and seq[1] is seq[3]
    replace_activations(seq, "silu", types=(ActivationModule,))
    assert seq[1] is not seq[3]


class _Loop(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        for _ in range(3):
            x = self.act(self.lin(x))
        return x


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            return self.act(self.lin(x))
        return self.act(x)


def test_a_module_called_in_a_loop_gets_one_module_per_iteration():
    net = replace_activations(_Loop(), swish_beta())
    sites = [n for n, m in net.named_modules() if isinstance(m, ActivationModule)]
    assert sites == ["act", "act_1", "act_2"]
    x = torch.randn(5, 3)
    reference = torch.nn.functional.silu
    want = x
    for _ in range(3):
        want = reference(net.lin(want))
    torch.testing.assert_close(net(x), want)


def test_untraceable_model_warns_and_replaces_each_registered_module():
    model = _DataDependent()
    with pytest.warns(UserWarning, match=r"torch.fx cannot trace _DataDependent .*share=True"):
        net = replace_activations(model, swish_beta())
    assert net is model and isinstance(model.act, ActivationModule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replace_activations(_DataDependent(), swish_beta(), share=True)  # no tracing, no warning


def test_readme_resnet18_example_runs(capsys):
    """The README's "The library" snippet (replace_activations on resnet18) runs as written."""
    pytest.importorskip("torchvision")
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The library", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    assert "resnet18" in snippet and "== 17" in snippet and "share=True" in snippet
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert isinstance(namespace["net"], torch.fx.GraphModule)
    assert sum(isinstance(m, ActivationModule) for m in namespace["net"].modules()) == 17


def test_split_calls_then_apply_exported_sites(resnet18, tmp_path):
    """The documented route for a network that reuses a module: split its calls with
    replace_activations(model, nn.ReLU), then map learned sites onto it by name."""
    split = replace_activations(resnet18, nn.ReLU)
    relus = [n for n, m in split.named_modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 17 == len({id(m) for m in split.modules() if isinstance(m, nn.ReLU)})
    act = swish_beta()
    learned = {name: {"p0": 1.0 + 0.125 * i} for i, name in enumerate(relus)}
    exported = load_exported(act.torch_source(values=learned), tmp_path / "r.py", "evolved_r18")
    assert exported.EvolvedActivation.apply_to(split) is split
    applied = {n: m for n, m in split.named_modules() if isinstance(m, exported.EvolvedActivation)}
    assert list(applied) == relus
    assert [m.p0.item() for m in applied.values()] == [v["p0"] for v in learned.values()]
    calls = [n.target for n in split.graph.nodes if n.op == "call_module"
             and isinstance(split.get_submodule(n.target), exported.EvolvedActivation)]
    assert sorted(calls) == sorted(relus)
    assert split(torch.randn(2, 3, 32, 32)).shape == (2, 10)

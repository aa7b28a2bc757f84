"""The trainer (the search's fitness function) and ``gp-activations train``.

Covers: fake CIFAR-10/100 loading and a short run on them; one training step of every
registered model with an evolved parametric activation; the bad-candidate outcomes
(diverged, chance, timeout, failed) as records rather than exceptions; bad input as one-line
UserErrors; determinism; learned-scalar trajectories (per layer and per channel); user
models; the learning-rate schedule; weight decay groups; and the ``train`` CLI.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import write_fake_cifar
from gp_activations import train as train_mod
from gp_activations.activation import Activation, ActivationModule
from gp_activations.cli import main
from gp_activations.data import ChecksumNotVerifiedWarning, as_dataset, load_dataset
from gp_activations.errors import UserError
from gp_activations.models import MODELS, activation_sites, build_model
from gp_activations.train import TrainConfig, TrainResult, default_config, train


# A 4-operator evolved function with two learnable scalars (on the mul and the sin edges).
EVOLVED = "add(mul(x, sigmoid(x)), sin(x))"
EVOLVED_PARAMS = [1, 5]

# Short digits runs: Adam as in the digits presets, a few steps per epoch.
QUICK = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    warmup=0.05, max_steps_per_epoch=10)


pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_user_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture
def spy_network(monkeypatch):
    """Capture every network train() builds, with a copy of its initial state."""
    built = []
    original = train_mod.build_network

    def spy(*args, **kwargs):
        net = original(*args, **kwargs)
        built.append((net, {k: v.detach().clone() for k, v in net.state_dict().items()}))
        return net

    monkeypatch.setattr(train_mod, "build_network", spy)
    return built


# ---------------------------------------------------------------------------------------------
# CIFAR (fake files in torchvision's layout)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, n_train, n_test, classes", [("cifar10", 200, 50, 10),
                                                            ("cifar100", 300, 100, 100)])
def test_fake_cifar_loads_splits_and_trains(tmp_path, kind, n_train, n_test, classes):
    root = write_fake_cifar(tmp_path / "data", kind, n_train=n_train, n_test=n_test)
    with pytest.warns(ChecksumNotVerifiedWarning):
        ds = load_dataset(kind, data_dir=root, verify=False)
    n_val = round(0.1 * n_train)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (n_train - n_val, n_val, n_test)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == classes and ds.augment
    assert int(ds.y_train.max()) < classes

    cfg = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2, lr=0.05)
    with pytest.warns(ChecksumNotVerifiedWarning):
        record = train("relu", kind, config=cfg, data_dir=root, verify=False, device="cpu")
    assert record.status == "ok", record.reason
    assert record.ok and record.reason == ""
    assert (record.dataset, record.model, record.split) == (kind, "resnet20", "val")
    assert 0.0 <= record.accuracy <= 1.0 and record.best_accuracy == record.accuracy
    assert len(record.loss_curve) == 1 and math.isfinite(record.loss_curve[0])
    assert record.epochs_done == 1
    assert record.samples_per_sec > 0 and record.wall_time >= record.train_time > 0


def test_dataset_alias_gets_its_own_preset_and_default_model(tmp_path):
    root = write_fake_cifar(tmp_path / "data", "cifar10", n_train=100, n_test=20)
    assert default_config("CIFAR-10").optimizer == "sgd"  # not the mnist1d fallback (adam)
    assert default_config("cifar_100", "fitness").label_smoothing == 0.1
    with pytest.warns(ChecksumNotVerifiedWarning):
        record = train("relu", "CIFAR-10", data_dir=root, verify=False, device="cpu", epochs=1,
                       batch_size=16, max_steps_per_epoch=1)
    assert record.status == "ok", record.reason
    assert (record.dataset, record.model) == ("cifar10", "resnet20")
    assert record.config["optimizer"] == "sgd" and record.config["epochs"] == 1


def test_missing_cifar_directory_is_a_one_line_user_error(tmp_path):
    missing = tmp_path / "nonexistent"
    with pytest.raises(UserError) as excinfo:
        train("relu", "cifar10", data_dir=missing, device="cpu", epochs=1)
    msg = _one_line_user_error(excinfo)
    assert str(missing) in msg and "--download" in msg


# ---------------------------------------------------------------------------------------------
# Every model, one step, with an evolved parametric activation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_one_step_of_every_model_with_an_evolved_activation(name, spy_network):
    act = Activation.from_string(EVOLVED, params=EVOLVED_PARAMS)
    assert act.operator_count == 4 and act.slot_names == ["p0", "p1"]
    shape = MODELS[name].input_shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, *shape, generator=gen)
    y = torch.tensor([0, 1, 2, 3])
    ds = as_dataset((x, y, x[:2], y[:2]), name="random", num_classes=10)
    cfg = TrainConfig(epochs=1, max_steps_per_epoch=1, batch_size=2, amp=False, chance_check=False)
    record = train(act, ds, name, cfg, device="cpu")

    assert record.status == "ok", record.reason
    assert record.model == name and record.activation == str(act)
    assert len(record.loss_curve) == 1 and math.isfinite(record.loss_curve[0])
    (net, before), = spy_network
    sites = activation_sites(net)
    assert sites and all(isinstance(m, ActivationModule) for _, m in sites)
    params = dict(net.named_parameters())
    changed = [k for k, p in params.items() if not torch.equal(p.detach(), before[k])]
    assert any(not k.endswith((".p0", ".p1")) for k in changed), "no weight moved"
    assert any(k.endswith((".p0", ".p1")) for k in changed), "no activation scalar moved"
    assert all(torch.isfinite(p).all() for p in params.values())
    # the trajectory: before training and after the epoch, one entry per site
    assert len(record.param_trajectory) == 2
    assert list(record.param_trajectory[0]) == [n for n, _ in sites]
    assert record.param_trajectory[0] != record.param_trajectory[1]


# ---------------------------------------------------------------------------------------------
# Bad candidates: records, not exceptions
# ---------------------------------------------------------------------------------------------
NAN_SPACE = '''\
from gp_activations import SearchSpace

space = SearchSpace("nanny", "operators that misbehave")
space.use("add", "mul", "relu", "sigmoid")


@space.unary
def nanify(x):
    return x * float("nan")


@space.unary
def explode(x):
    raise RuntimeError("operator exploded")
'''


@pytest.fixture
def nan_space(tmp_path):
    path = tmp_path / "nan_space.py"
    path.write_text(NAN_SPACE)
    return str(path)


def test_nan_from_a_user_operator_is_diverged(nan_space):
    act = Activation.from_string("nanify(x)", nan_space)
    record = train(act, "digits", config=QUICK, device="cpu")
    assert record.status == "diverged" and not record.ok
    assert "non-finite" in record.reason and "epoch 1" in record.reason
    assert len(record.loss_curve) == 1 and math.isnan(record.loss_curve[0])
    assert record.accuracy_curve == [] and math.isnan(record.accuracy)


class NaNActivation(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return x * float("inf") - x * float("inf")


class NaNAfter(nn.Module):
    """ReLU for the first ``steps`` training forwards, then NaN."""

    steps = QUICK.max_steps_per_epoch

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        return torch.relu(x) if self.calls <= self.steps else x * float("nan")


def test_nan_from_an_activation_factory_is_diverged():
    record = train(NaNActivation, "digits", config=QUICK, device="cpu")
    assert record.status == "diverged", record.reason
    assert record.activation == "NaNActivation"


def test_divergence_in_a_later_epoch_keeps_the_earlier_results():
    record = train(NaNAfter, "digits", config=QUICK, device="cpu")
    assert record.status == "diverged", record.reason
    assert "epoch 2" in record.reason
    assert len(record.accuracy_curve) == 1 and record.accuracy == record.accuracy_curve[0] > 0.3
    assert math.isfinite(record.loss_curve[0]) and math.isnan(record.loss_curve[1])


def test_exception_in_an_operator_is_failed_with_its_location(nan_space):
    act = Activation.from_string("add(relu(x), explode(x))", nan_space)
    record = train(act, "digits", config=QUICK, device="cpu")
    assert record.status == "failed"
    assert record.reason.startswith("RuntimeError: operator exploded")
    assert "nan_space.py:" in record.reason


def test_constant_activation_stops_at_chance_after_the_first_epoch():
    record = train("mul(zero, x)", "digits", config=QUICK, device="cpu")
    assert record.status == "chance" and not record.ok
    assert "chance" in record.reason and "first epoch" in record.reason
    assert len(record.accuracy_curve) == 1 and record.epochs_done == 1
    # the check can be switched off, and a working activation passes it
    assert train("mul(zero, x)", "digits", config=QUICK.replace(chance_check=False),
                 device="cpu").status == "ok"
    good = train("relu", "digits", config=QUICK, device="cpu")
    assert good.status == "ok" and len(good.accuracy_curve) == 2


def test_time_limit_ends_the_run_as_timeout():
    record = train("relu", "digits", config=QUICK.replace(time_limit=1e-6), device="cpu")
    assert record.status == "timeout"
    assert "time limit" in record.reason
    assert 0 < record.epochs_done < 1 and len(record.accuracy_curve) == 1


# ---------------------------------------------------------------------------------------------
# Bad input: UserError
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [0, -1, -0.5, float("nan")])
def test_non_positive_epochs_are_user_errors(epochs):
    with pytest.raises(UserError) as excinfo:
        train("relu", "digits", device="cpu", epochs=epochs)
    assert "epochs" in _one_line_user_error(excinfo)
    with pytest.raises(UserError):
        TrainConfig(epochs=epochs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(dataset="digits", model="resnet9000"), "unknown model"),
    (dict(dataset="digits", split="train"), "split"),
    (dict(dataset="digits", device="tpu"), "device"),
    (dict(dataset="digits", config=QUICK, bogus_option=1), "unknown training option"),
])
def test_bad_input_is_a_one_line_user_error(kwargs, words):
    kwargs.setdefault("device", "cpu")
    with pytest.raises(UserError) as excinfo:
        train("relu", **kwargs)
    assert words in _one_line_user_error(excinfo)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError) as excinfo:
        train("relu", "digits", config=QUICK, device="cuda")
    assert "cuda" in _one_line_user_error(excinfo).lower()


# ---------------------------------------------------------------------------------------------
# Determinism, trajectories, records, user models
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_run_other_seed_other_run():
    cfg = QUICK.replace(max_steps_per_epoch=5)
    a = train("swish_beta", "digits", config=cfg, seed=3, device="cpu")
    b = train("swish_beta", "digits", config=cfg, seed=3, device="cpu")
    c = train("swish_beta", "digits", config=cfg, seed=4, device="cpu")
    assert a.status == b.status == c.status == "ok"
    assert a.loss_curve == b.loss_curve and a.accuracy_curve == b.accuracy_curve
    assert a.param_trajectory == b.param_trajectory and a.accuracy == b.accuracy
    assert a.loss_curve != c.loss_curve
    assert a.param_trajectory[-1] != c.param_trajectory[-1]


def test_parameter_trajectory_per_layer(spy_network):
    record = train("swish_beta", "digits", config=QUICK, device="cpu")
    traj = record.param_trajectory
    assert len(traj) == QUICK.epochs + 1
    (net, _), = spy_network
    names = [n for n, _ in activation_sites(net)]
    assert len(names) == 3 and all(list(epoch) == names for epoch in traj)
    assert all(traj[0][n] == {"p0": 1.0} for n in names)  # initialised at 1
    assert all(isinstance(traj[-1][n]["p0"], float) for n in names)
    assert all(traj[-1][n]["p0"] != 1.0 for n in names)  # ... and learned
    assert traj[-1] == {n: m.parameter_values() for n, m in activation_sites(net)}


def test_parameter_trajectory_per_channel(spy_network):
    record = train("swish_beta", "digits", config=QUICK.replace(per_channel=True), device="cpu")
    assert record.status == "ok"
    (net, _), = spy_network
    sites = activation_sites(net)
    for epoch in record.param_trajectory:
        for name, module in sites:
            values = epoch[name]["p0"]
            assert isinstance(values, list) and len(values) == module.num_channels > 1
    first, last = record.param_trajectory[0], record.param_trajectory[-1]
    assert all(v == 1.0 for n, _ in sites for v in first[n]["p0"])
    assert any(len(set(last[n]["p0"])) > 1 for n, _ in sites)  # channels learn differently


def test_non_parametric_activation_records_no_trajectory():
    assert train("relu", "digits", config=QUICK, device="cpu").param_trajectory == []


def test_result_is_json_serialisable():
    record = train("swish_beta", "digits", config=QUICK, device="cpu", progress=None)
    data = record.to_dict()
    text = json.dumps(data, allow_nan=False)
    again = json.loads(text)
    assert again == data
    assert TrainResult(**again).to_dict() == data
    assert again["status"] == "ok" and again["config"] == QUICK.to_dict()
    assert set(again) >= {"status", "reason", "accuracy", "loss_curve", "accuracy_curve",
                          "param_trajectory", "seed", "device", "activation", "model", "dataset"}


def test_progress_callback_sees_every_epoch():
    seen = []
    record = train("relu", "digits", config=QUICK, device="cpu",
                   progress=lambda epoch, loss, acc: seen.append((epoch, loss, acc)))
    assert seen == [(i + 1, record.loss_curve[i], record.accuracy_curve[i]) for i in range(2)]


def digits_mlp(act_factory, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), act_factory(), nn.Linear(32, 32),
                         act_factory(), nn.Linear(32, num_classes))


def test_user_model_callable():
    record = train("swish_beta", "digits", digits_mlp, QUICK.replace(lr=1e-2), device="cpu")
    assert record.status == "ok", record.reason
    assert record.model == "digits_mlp" and record.accuracy > 0.5
    # its activation scalars are tracked even though the model never tagged its sites
    assert len(record.param_trajectory) == 3 and len(record.param_trajectory[0]) == 2
    assert record.param_trajectory[0] != record.param_trajectory[-1]
    # a callable without num_classes works too (the dataset has 10 classes)
    plain = train("relu", "digits", lambda f: digits_mlp(f, 10), QUICK, device="cpu")
    assert plain.status == "ok" and plain.model == "<lambda>"


# ---------------------------------------------------------------------------------------------
# Schedule and optimiser
# ---------------------------------------------------------------------------------------------
def test_lr_schedule_warms_up_then_decays():
    total = 100
    cos = train_mod._lr_lambda(TrainConfig(warmup=0.1, schedule="cosine"), total)
    warm = [cos(s) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5)
    assert cos(total) == pytest.approx(0.0, abs=1e-12)
    decay = [cos(s) for s in range(10, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert all(0 < cos(s) <= 1 for s in range(total))  # every step trains

    lin = train_mod._lr_lambda(TrainConfig(warmup=0.1, schedule="linear"), total)
    assert lin(10) == pytest.approx(1.0) and lin(55) == pytest.approx(0.5)
    assert lin(total) == pytest.approx(0.0)
    const = train_mod._lr_lambda(TrainConfig(warmup=0.1, schedule="constant"), total)
    assert const(0) == pytest.approx(0.1) and const(10) == const(99) == 1.0
    none = train_mod._lr_lambda(TrainConfig(warmup=0.0, schedule="cosine"), total)
    assert none(0) == 1.0 and none(50) == pytest.approx(0.5)
    tiny = train_mod._lr_lambda(TrainConfig(warmup=0.01, schedule="linear"), 10)
    assert tiny(0) == 1.0  # warm-up rounds to at least one step, which is already at full lr


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_activation_scalars_get_no_weight_decay(optimizer):
    cfg = TrainConfig(optimizer=optimizer, weight_decay=5e-4)
    net = build_model("cnn_digits", Activation.from_string(EVOLVED, params=EVOLVED_PARAMS).factory())
    opt = train_mod._optimizer(net, cfg)
    scalars = {id(p) for m in net.modules() if isinstance(m, ActivationModule)
               for p in m.parameters(recurse=False)}
    assert len(scalars) == 3 * 2
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == scalars
    assert not scalars & {id(p) for p in decay["params"]}
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in net.parameters())
    # without learnable scalars there is a single group
    plain = train_mod._optimizer(build_model("cnn_digits", nn.ReLU), cfg)
    assert len(plain.param_groups) == 1


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------
def test_cli_train_json(capsys):
    rc = main(["train", "--act", "relu", "--dataset", "digits", "--epochs", "1", "--seeds", "2",
               "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    data = json.loads(out)  # stdout is exactly one JSON object
    assert data["activation"] == "relu(x)" and data["dataset"] == "digits"
    assert data["model"] == "cnn_digits" and data["split"] == "test"
    records = data["records"]
    assert [r["seed"] for r in records] == [0, 1]
    assert all(r["status"] == "ok" and r["epochs_done"] == 1 and r["split"] == "test"
               for r in records)
    accs = [r["accuracy"] for r in records]
    assert data["mean_accuracy"] == pytest.approx(sum(accs) / 2)
    assert data["std_accuracy"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    assert records[0]["loss_curve"] != records[1]["loss_curve"]


def test_cli_train_text(capsys):
    rc = main(["train", "--act", "mul(x, sigmoid(x))", "--params", "3", "--dataset", "digits",
               "--epochs", "1", "--device", "cpu", "--split", "val"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "seed 0: val accuracy" in out and "mean val accuracy" in out


@pytest.mark.parametrize("args, words", [
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--epochs", "0"], "epochs"),
    (["--epochs", "-2"], "epochs"),
    (["--seeds", "0"], "--seeds"),
    (["--act", "mul(x"], ""),
    (["--act", "nosuchop(x)"], ""),
    (["--model", "resnet9000"], "unknown model"),
    (["--split", "train"], "invalid choice"),
])
def test_cli_train_bad_input(capsys, args, words):
    argv = ["train", "--act", "relu", "--dataset", "digits", "--epochs", "1", "--device", "cpu"]
    rc = main(argv + args)  # later flags override earlier ones
    _, err = capsys.readouterr()
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("gp-activations: error:"), err
    assert words in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_train_cuda_without_gpu(capsys):
    rc = main(["train", "--act", "relu", "--dataset", "digits", "--epochs", "1", "--device", "cuda"])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "cuda" in err.lower()


def test_cli_train_missing_cifar_directory(capsys, tmp_path):
    missing = tmp_path / "nonexistent"
    rc = main(["train", "--act", "relu", "--dataset", "cifar10", "--data-dir", str(missing),
               "--epochs", "1", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1, err
    assert "CIFAR-10 files not found" in err and "Traceback" not in err


def test_only_the_fitness_schedule_gives_up_at_chance():
    """A full schedule must measure a slow starter, not cut it off after one epoch."""
    from gp_activations.train import default_config

    for dataset in ("mnist1d", "digits", "cifar10"):
        assert default_config(dataset, "fitness").chance_check is True
        assert default_config(dataset, "train").chance_check is False
        assert default_config(dataset, "train", chance_check=True).chance_check is True


@pytest.mark.parametrize("model, expr", [("resnet1d", "cube(x)"), ("resnet1d", "exp(x)"),
                                         ("cnn1d", "cube(x)")])
def test_functions_that_blow_up_through_the_network_end_before_training(model, expr):
    fitness = default_config("mnist1d", "fitness", epochs=3, threads=1)
    assert fitness.blowup_limit == 1e4
    rec = train(expr, "mnist1d", model, fitness, seed=0)
    assert rec.status == "diverged" and rec.epochs_done == 0 and rec.loss_curve == []
    assert rec.reason.startswith("activations blow up at initialisation: output RMS ")
    assert "limit 10000" in rec.reason and " of " in rec.reason
    assert rec.wall_time < 5  # one forward pass, not a training
    relu = train("relu", "mnist1d", model, fitness.replace(epochs=1), seed=0)
    assert relu.status == "ok"  # ReLU's activations stay near 1


def test_the_full_schedule_has_no_blowup_check():
    full = default_config("mnist1d", "train", epochs=0.1, threads=1)
    assert full.blowup_limit is None
    rec = train("cube(x)", "mnist1d", "resnet1d", full, seed=0)
    assert rec.status != "diverged" or "initialisation" not in rec.reason


@pytest.mark.parametrize("model, expr, stops", [
    ("resnet1d", "square(x)", True), ("resnet1d", "add(square(x), abs(x))", True),
    # a slow starter that recovers, and an unnormalised net learning with large logits
    ("resnet1d", "mul(x, add(one, min(x, 0.71)))", False), ("mlp", "add(square(x), abs(x))", False)])
def test_functions_that_do_not_learn_in_a_deep_net_stop_after_one_epoch(model, expr, stops):
    """x² passes the blow-up check in a BatchNorm ResNet (BN rescales each block's input) but
    its residual stream grows: the fitness schedule ends it after epoch 1, saying why."""
    fitness = default_config("mnist1d", "fitness", epochs=3, threads=1)
    rec = train(expr, "mnist1d", model, fitness, seed=0)
    if not stops:
        assert rec.status == "ok" and rec.epochs_done == 3, rec.reason
        return
    assert rec.epochs_done == 1 and rec.status in ("chance", "diverged"), rec.reason
    if rec.status == "diverged":
        assert rec.reason.startswith("not learning: mean training loss ") and "ln(10) = 2.303" in rec.reason
    full = default_config("mnist1d", "train", epochs=1.5, threads=1)
    assert train(expr, "mnist1d", model, full, seed=0).epochs_done == 1.5  # full runs to the end

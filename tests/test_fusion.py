"""Fused activations (gp_activations.fusion): equal to eager inside a training step, layouts
kept, the fuse/no-fuse decision, the kernel cache across processes, and the fallbacks."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from deap import gp
from torch import nn

from gp_activations import Activation, fusion
from gp_activations.activation import fused_function_of
from gp_activations.errors import UserError
from gp_activations.primitive_sets import builtin_names, load_primitive_set
from gp_activations.search import SearchConfig
from gp_activations.train import FusionDecision, FusionWhy, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """One kernel cache for the module's compiles (a fresh directory: nothing of the user's)."""
    cache = tmp_path_factory.mktemp("inductor")
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def fusable_trees(space: str, n: int, seed: int = 11):
    """``n`` random trees of ``space`` with two or more operators, each with learnable scalars
    on two random nodes, that are well-conditioned: finite with slopes below 100 on a wide grid
    and near 0.  (An ill-conditioned one such as asinh(sinc(1/x)), slope ~1/x² near 0, turns
    the last-ulp differences of any two correct fp32 implementations into large gradient
    differences: eager vs eager with another operation order would differ as much.)"""
    pset = load_primitive_set(space)
    rng = random.Random(seed)
    random.seed(seed)  # deap's generators draw from the global random module
    grid = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([1e-6, -1e-6, 1e-4, -1e-4])])
    out = []
    while len(out) < n:
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, min_=2, max_=3))
        act = Activation(tree, space, sorted(rng.sample(range(len(tree)), min(2, len(tree)))))
        if act.program.kernel_count < 2 or not act.program.depends_on_x:
            continue
        x = grid.clone().requires_grad_()
        y = act.module()(x)
        y.sum().backward()
        if torch.isfinite(y).all() and torch.isfinite(x.grad).all() and x.grad.abs().max() < 100:
            out.append(act)
    return out


def small_net(act: Activation, fused: bool, per_channel: bool) -> nn.Module:
    torch.manual_seed(0)
    make = act.factory(per_channel=per_channel, fused=fused)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), make(num_channels=6),
                         nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), make(num_channels=6),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
                         ).to(memory_format=torch.channels_last)


def training_step(net: nn.Module):
    """Loss, every parameter's gradient and the parameters after one SGD step."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 3, 10, 10, generator=g) * 2).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (8,), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    return loss.detach(), grads, [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("space", builtin_names())
def test_fused_equals_eager_in_a_training_step(space):
    """Random trees of every built-in set, per-layer and per-channel scalars: fused and eager
    give the same loss, gradients and updated parameters; and the same values and gradients
    on extreme inputs (0, ±1e4, huge, tiny)."""
    extremes = torch.tensor([0.0, 1e-30, -1e-30, 1e-3, -1e-3, 1.0, -1.0, 30.0, -30.0, 1e4, -1e4,
                             3e38, -3e38])
    for i, act in enumerate(fusable_trees(space, 2)):
        per_channel = i % 2 == 1
        (loss_e, grads_e, params_e), (loss_f, grads_f, params_f) = (
            training_step(small_net(act, fused, per_channel)) for fused in (False, True))
        assert small_net(act, True, per_channel)[2].fused, act.expression
        torch.testing.assert_close(loss_f, loss_e, rtol=1e-5, atol=1e-6, msg=act.expression)
        for a, b in zip(grads_f + params_f, grads_e + params_e):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()),
                                       equal_nan=True, msg=act.expression)
        eager, fused = act.module(), act.module(fused=True)
        values = []
        for module in (eager, fused):
            x = extremes.clone().requires_grad_()
            y = module(x)
            y.backward(torch.ones_like(y))
            values.append((y.detach(), x.grad, [p.grad for p in module.parameters()]))
        (y_e, gx_e, gp_e), (y_f, gx_f, gp_f) = values
        assert torch.isfinite(y_f).all() == torch.isfinite(y_e).all()
        torch.testing.assert_close(y_f, y_e, rtol=1e-4, atol=1e-5, equal_nan=True, msg=act.expression)
        torch.testing.assert_close(gx_f, gx_e, rtol=1e-4, atol=1e-4, equal_nan=True, msg=act.expression)
        for a, b in zip(gp_f, gp_e):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * max(1.0, b.abs().max().item()),
                                       equal_nan=True, msg=act.expression)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_gradient_keeps_the_channels_last_layout(per_channel):
    """The regression behind 3.6 ReLU steps: the compiled backward gave BatchNorm an NCHW
    gradient for a channels_last input.  Now the gradient reaching BatchNorm has the input's
    layout, and values match eager."""
    act = Activation.from_string("max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))", params=[0])
    bn = nn.BatchNorm2d(5)
    seen = {}
    for fused in (False, True):
        module = act.module(num_channels=5 if per_channel else None, fused=fused)
        assert module.fused is fused
        x0 = torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(0))
        x0 = x0.contiguous(memory_format=torch.channels_last).requires_grad_()
        x = bn(x0)
        x.register_hook(lambda g, fused=fused: seen.__setitem__(fused, g))
        y = module(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        y.backward(torch.ones_like(y))
        assert seen[fused].is_contiguous(memory_format=torch.channels_last), seen[fused].stride()
        seen[("y", fused)] = y.detach()
    torch.testing.assert_close(seen[True], seen[False])
    torch.testing.assert_close(seen[("y", True)], seen[("y", False)])
    # a strided slice (no dense layout) takes the direct call, same values
    module = act.module(fused=True)
    x = torch.randn(6, 8, 5)[:, ::2]
    torch.testing.assert_close(module(x), act.module()(x))


SHARED_EXP = ["max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))", "mul(x, tanh(softplus(x)))",
              "add(softplus(x), sigmul(x, x))", "sub(sigmoid(x), tanh(softplus(x)))",
              "mul(tanh(softplus(mul(x, 2.0))), sigmoid(mul(x, 2.0)))"]


@pytest.mark.parametrize("expression", SHARED_EXP)
def test_the_compiled_source_shares_one_exponential(expression):
    """The source torch.compile traces computes tanh(softplus(u)) as n/(n+2), n = e(e+2), and
    sigmoid / sigmul / softplus of the same u from the same e = exp(min(u, 30)): one exp per
    operand instead of up to four transcendentals.  Values and gradients (per channel too)
    equal eager's to float32 rounding on a grid up to ±1e4 with the edges, in fp32 and under
    bf16 autocast; the export and the eager function keep the operators' own forms."""
    act = Activation.from_string(expression, params=[0])
    traced = act.fused_program.source
    assert traced.count("torch.exp(") == 1, traced
    assert "torch.tanh(" not in traced and "torch.sigmoid(" not in traced, traced
    assert "torch.tanh(" in act.program.source or "torch.sigmoid(" in act.program.source
    grid = torch.cat([torch.linspace(-60, 60, 4001), torch.tensor(
        [0.0, -0.0, 1e-30, -1e-30, 19.99, 20.0, 20.01, 30.0, 1e4, -1e4, 3e38, -3e38])])
    for num_channels in (None, 3):
        x0 = grid[: grid.numel() // 3 * 3].view(-1, 3, 1) if num_channels else grid
        outs = []
        for fused in (False, True):
            module = act.module(num_channels=num_channels, fused=fused)
            with torch.no_grad():
                module.p0.fill_(0.7)
            x = x0.clone().requires_grad_()
            y = module(x)
            y.backward(torch.ones_like(y))
            outs.append((y.detach(), x.grad, module.p0.grad))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, msg=expression)
    outs = []
    for fused in (False, True):
        x = grid.clamp(-1e4, 1e4).to(torch.bfloat16).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = act.module(fused=fused)(x)
        y.float().sum().backward()
        outs.append((y.detach().float(), x.grad.float()))
    assert outs[1][0].dtype == outs[0][0].dtype
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-2, msg=expression)


def test_a_users_operator_with_a_builtin_name_is_not_rewritten(tmp_path):
    """Only the built-in softplus / sigmoid / tanh are rewritten: a search space's own
    ``softplus`` (here with β = 3) compiles as written, equal to eager."""
    path = tmp_path / "own_softplus.py"
    path.write_text("import torch\nfrom gp_activations import SearchSpace\n"
                    "space = SearchSpace('own', 'a softplus of its own')\n"
                    "space.use('tanh', 'mul', 'sigmoid')\n"
                    "@space.unary(sympy=lambda x: x)\n"
                    "def softplus(x):\n"
                    "    return torch.nn.functional.softplus(x, beta=3.0)\n")
    act = Activation.from_string("mul(tanh(softplus(x)), sigmoid(softplus(x)))", str(path))
    assert "torch.exp(" not in act.fused_program.source
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(act.module(fused=True)(x), act.module()(x))


# -- the decision -----------------------------------------------------------------------------
CNN1D_FITNESS = ([100 * 32 * 38] * 3, 480)  # site sizes per step, steps (12 epochs)
RESNET20_CIFAR = ([128 * 16 * 32 * 32] * 7 + [128 * 32 * 16 * 16] * 6 + [128 * 64 * 8 * 8] * 6,
                  200 * 390)


def test_decision_follows_the_cost_model(monkeypatch, tmp_path):
    mish = Activation.from_string("max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))")
    relu = Activation.from_string("relu(x)")
    model = fusion.COST_MODELS["cpu"]
    # a brief fitness training of a small network: the compile would cost more than it saves
    d = fusion.decide(mish, *CNN1D_FITNESS, "cpu")
    assert not d.fuse and d.compile == model.compile_cost
    assert d.saving == pytest.approx(model.saving(6, mish.estimated_cost, *CNN1D_FITNESS))
    # a full CIFAR schedule on ResNet-20: it pays many times over
    d = fusion.decide(mish, *RESNET20_CIFAR, "cpu")
    assert d.fuse and d.saving > 100 * d.compile
    # one built-in op is one kernel already
    assert not fusion.decide(relu, *RESNET20_CIFAR, "cpu").fuse
    # the saving grows with the steps: the same sites tip from eager to fused
    sizes = RESNET20_CIFAR[0]
    per_step = fusion.decide(mish, sizes, 1, "cpu").saving
    assert per_step > 0
    steps = model.compile_cost / per_step
    assert not fusion.decide(mish, sizes, 0.9 * steps, "cpu").fuse
    assert fusion.decide(mish, sizes, 1.1 * steps, "cpu").fuse
    # never dependent on what the process or the kernel cache has seen (same fitness on every
    # executor and resume): a compiled function and another cache change nothing
    before = fusion.decide(mish, sizes, steps, "cpu")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    act = Activation.from_string("add(mul(x, sigmoid(x)), mul(0.5, tanh(x)))", params=[0])
    act.module(fused=True)(torch.randn(8))
    assert fusion.decide(mish, sizes, steps, "cpu") == before


def test_train_records_the_decision_and_compile_time():
    act = Activation.from_string("add(mul(x, sigmoid(x)), mul(0.5, tanh(x)))", params=[0])
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=3e-3, chance_check=False,
                      threads=1)
    auto = train(act, "digits", None, cfg, seed=0)
    assert auto.fused is False and auto.fusion.why is FusionWhy.COST_MODEL and \
        "predicted saving" in auto.fusion.detail and not auto.fusion.fused
    on = train(act, "digits", None, cfg.replace(fused=True), seed=0)
    assert on.fused is True and on.fusion.why is FusionWhy.FORCED and \
        on.fusion.compile_seconds is not None and "compiled in" in str(on.fusion)
    off = train(act, "digits", None, cfg.replace(fused=False), seed=0)
    assert off.fused is False and off.fusion == FusionDecision() and str(off.fusion) == ""
    assert auto.accuracy == off.accuracy  # auto chose eager: the very same run
    assert abs(on.accuracy - off.accuracy) < 0.05
    with pytest.raises(UserError, match="fused must be true, false or"):
        TrainConfig(fused="sometimes")
    with pytest.raises(UserError, match="'fused' must be true, false or"):
        SearchConfig(fused="yes")


def test_each_training_counts_its_own_compile_time():
    """FusionDecision.compile_seconds is the compile time of *that* training, while another
    training in another thread of the process compiles graphs of the same shared function: the
    per-layer training, whose graphs an earlier training compiled, reports ~0; the per-channel
    one, in a thread started at the end of the other's first epoch, reports its compiles.
    Oracles: dynamo's graph counter (which training compiled graphs) and the function's
    process-wide count (how long the per-channel training compiled)."""
    from torch._dynamo.utils import counters

    act = Activation.from_string("add(mul(x, sigmoid(x)), mul(0.25, tanh(x)))", params=[0])
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=3e-3, chance_check=False,
                      threads=1, fused=True, max_steps_per_epoch=3)
    first = train(act, "digits", None, cfg, seed=0)  # compiles the per-layer graphs
    fn = fused_function_of(act)
    assert first.fusion.fused and first.fusion.compile_seconds > 0 and fn.fallback is None
    graphs = counters["stats"]
    seen = {}

    def per_channel():
        seen["channel"] = train(act, "digits", None, cfg.replace(per_channel=True), seed=0)

    def at_epoch(*_):  # inside the per-layer training, in its thread
        seen["graphs before"], count = graphs["unique_graphs"], fn.compile_seconds
        thread = threading.Thread(target=per_channel)
        thread.start()
        thread.join()
        seen["graphs after"], seen["grew"] = graphs["unique_graphs"], fn.compile_seconds - count

    start = graphs["unique_graphs"]
    layer = train(act, "digits", None, cfg, seed=0, progress=at_epoch)
    channel = seen["channel"]
    assert layer.ok and channel.ok and layer.fusion.fused and channel.fusion.fused
    # the per-layer training compiled no graph of its own; the per-channel one did
    assert seen["graphs before"] == start and graphs["unique_graphs"] == seen["graphs after"]
    assert seen["graphs after"] > seen["graphs before"]
    assert channel.fusion.compile_seconds == pytest.approx(seen["grew"], rel=1e-9)
    assert 0 < channel.fusion.compile_seconds < channel.wall_time
    # ~0: the probe pass before its first step, never the other training's compiles
    assert layer.fusion.compile_seconds < 0.1 * channel.fusion.compile_seconds


def test_cli_refuses_a_bad_fused_value(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('fused = "maybe"\n')
    proc = subprocess.run([sys.executable, "-m", "gp_activations.cli", "search", "--config",
                           str(config), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "'fused' must be true, false or" in proc.stderr
    assert not (tmp_path / "run").exists()


# -- fallbacks --------------------------------------------------------------------------------
SPACE = '''
import sympy, torch
from gp_activations import SearchSpace

space = SearchSpace("branchy", "an operator with a data-dependent branch")
space.use("mul", "add", "sigmoid")

@space.unary(sympy=lambda x: x)
def branchy(x):
    "x, with a Python branch on the data (dynamo cannot put it in one graph)"
    if bool((x.abs() > 1e30).any()):
        return torch.clamp(x, -1e30, 1e30)
    return x * 1.0
'''


def test_a_function_inductor_cannot_compile_runs_eager(tmp_path, caplog):
    path = tmp_path / "branchy.py"
    path.write_text(SPACE)
    act = Activation.from_string("mul(branchy(x), sigmoid(x))", primitives=str(path))
    x = torch.randn(3, 4, 5)
    with caplog.at_level(logging.WARNING, logger="gp_activations.fusion"):
        fused = act.module(fused=True)
        torch.testing.assert_close(fused(x), act.module()(x))
        fused(x)
    lines = [r.getMessage() for r in caplog.records if r.name == "gp_activations.fusion"]
    assert len(lines) == 1 and "could not be compiled, running eager" in lines[0]
    assert fused_function_of(act).fallback
    record = train(act, "digits", None, TrainConfig(epochs=1, fused=True, threads=1,
                                                     chance_check=False), seed=0)
    assert record.status == "ok" and record.fused is False
    assert record.fusion.why is FusionWhy.COMPILE_FAILED and not record.fusion.fused


def test_an_unwritable_kernel_cache_warns_and_uses_a_fresh_one(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="is not usable"):
        used = fusion.use_cache_dir(str(blocker / "cache"))
    assert used != str(blocker / "cache") and os.path.isdir(used)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == used


CHILD = '''
import json, sys, warnings
import torch
from torch._dynamo.utils import counters
from gp_activations import Activation
from gp_activations.activation import fused_function_of
act = Activation.from_string("add(mul(x, sigmoid(x)), mul(0.1, sin(x)))", params=[0])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    module = act.module(fused=True)
    x = torch.linspace(-5, 5, 64).reshape(4, 16).requires_grad_()
    y = module(x)
    y.sum().backward()
eager = act.module()(x.detach())
fn = fused_function_of(act)
print(json.dumps({"hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"],
                  "equal": bool(torch.allclose(y, eager, atol=1e-6)),
                  "fallback": fn.fallback, "compile_seconds": fn.compile_seconds,
                  "warnings": [str(w.message) for w in caught if "kernel cache" in str(w.message)]}))
'''


def test_kernels_are_reused_across_processes_and_a_corrupt_cache_is_replaced(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}

    def child():
        proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = child(), child()
    assert first["misses"] > 0 and first["hits"] == 0 and first["equal"] and not first["fallback"]
    assert second["hits"] > 0 and second["misses"] == 0  # every graph from the first's cache
    assert second["equal"] and not second["fallback"] and not second["warnings"]
    assert 0 < second["compile_seconds"] and 0 < first["compile_seconds"]
    # every cached artefact overwritten with garbage: one warning, a fresh cache, still fused
    for path in cache.rglob("*"):
        if path.is_file():
            path.write_text("garbage\n")
    third = child()
    assert third["equal"] and not third["fallback"]
    assert len(third["warnings"]) == 1 and "is unusable" in third["warnings"][0]

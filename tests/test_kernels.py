"""gp_activations.kernels: the eager path's clamp / nan_to_num / maximum / minimum give torch's
values and gradients exactly, alone and inside training steps of random activations."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from deap import gp
from torch import nn

from gp_activations import Activation, kernels
from gp_activations.compiled import COMPILED
from gp_activations.primitive_sets import builtin_names, load_primitive_set

INF = float("inf")


@pytest.fixture(autouse=True)
def kernels_on():
    """The kernels in use whatever the environment says (GP_ACTIVATIONS_PLAIN_KERNELS)."""
    before = COMPILED.kernels_enabled
    COMPILED.set_kernels(True)
    yield
    COMPILED.set_kernels(before)


def grads(fn, *inputs, seed=0, node=None):
    """fn's value and the gradients of a random-weighted sum w.r.t. every input needing one;
    ``node``: the autograd node the output must come from (the kernel, not torch's)."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    if node is not None:
        assert type(out.grad_fn).__name__ == node, out.grad_fn
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    out.backward(g)
    return [out.detach()] + [t.grad for t in leaves if t.requires_grad]


def assert_identical(ours, theirs):
    """Equal values, NaN where NaN (a masked gradient may be -0.0 where torch's is 0.0: the
    same number in every later sum and update)."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if a is None or b is None:  # a scalar the loss does not reach, in both
            assert a is None and b is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def sample(n=257, dtype=torch.float32, seed=0):
    """Normal values plus the edges: bounds, ±0, tiny, huge, ±inf."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 3
    edges = torch.tensor([0.0, -0.0, 1e-12, -1e-12, 1e-6, -1e-6, 80.0, -80.0, 1e15, -1e15, 1e18,
                          -1e18, 3e38, -3e38, INF, -INF])
    return torch.cat([x, edges]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("lo, hi", [(None, 0.0), (1e-12, None), (-1e18, 1e18), (-80.0, 80.0),
                                    (None, 80.0), (-1e-6, 1e-6)])
def test_clamp_is_torch_clamp(dtype, lo, hi):
    x = sample(dtype=dtype).requires_grad_()
    assert_identical(grads(lambda t: kernels.clamp(t, lo, hi), x, node="_ClampBackward"),
                     grads(lambda t: torch.clamp(t, lo, hi), x))
    inside = (torch.randn(100) * 0.5).to(dtype).requires_grad_()  # nothing clamped: the shortcut
    assert_identical(grads(lambda t: kernels.clamp(t, min=-1e18, max=1e18), inside),
                     grads(lambda t: torch.clamp(t, min=-1e18, max=1e18), inside))
    # an element exactly on a bound as x's dtype rounds it (1e15 is no float32), none beyond
    for bound in (b for b in (lo, hi) if b is not None):
        on = torch.tensor([bound, bound * 0.5 if bound else 0.5, -3.0 if bound > 0 else 3.0])
        on = on.to(dtype).requires_grad_()
        assert_identical(grads(lambda t: kernels.clamp(t, lo, hi), on),
                         grads(lambda t: torch.clamp(t, lo, hi), on))


def test_clamp_with_a_nan_input_takes_torchs_formula():
    x = torch.tensor([1.0, float("nan"), -3.0, 100.0], requires_grad=True)
    assert_identical(grads(lambda t: kernels.clamp(t, -2.0, 2.0), x),
                     grads(lambda t: torch.clamp(t, -2.0, 2.0), x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_to_num_is_torch_nan_to_num(dtype):
    for x in (sample(dtype=dtype), torch.randn(50).to(dtype),
              torch.tensor([1.0, float("nan"), INF, -INF, 2.0]).to(dtype)):
        x = x.requires_grad_()
        assert_identical(grads(kernels.nan_to_num, x, node="_NanToNumBackward"),
                         grads(torch.nan_to_num, x))


@pytest.mark.parametrize("ours, theirs", [(kernels.maximum, torch.maximum),
                                          (kernels.minimum, torch.minimum)])
def test_maximum_and_minimum_are_torchs_with_ties_and_broadcasting(ours, theirs):
    a = torch.tensor([1.0, 2.0, 0.0, -0.0, 0.0, 5.0, -1e38, 3e38, -3e38, 7.0])
    b = torch.tensor([1.0, 1.0, -0.0, 0.0, 0.0, 6.0, 1e38, -3e38, 3e38, 7.0])
    assert_identical(grads(ours, a.requires_grad_(), b.requires_grad_(), node="_MaximumBackward"),
                     grads(theirs, a, b))
    x = torch.randn(4, 3, 5, requires_grad=True)
    x.data[0, 0, :2] = 0.25  # ties against the per-channel operand below
    per_channel = torch.tensor([0.25, -0.5, 1.0]).view(3, 1).requires_grad_()
    scalar = torch.tensor(0.1, requires_grad=True)
    for other in (per_channel, scalar, torch.tensor(0.25)):
        assert_identical(grads(ours, x, other), grads(theirs, x, other))
        assert_identical(grads(ours, other, x), grads(theirs, other, x))
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    assert_identical(grads(ours, xb, scalar), grads(theirs, xb, scalar))


def test_where_is_torch_where_with_broadcasting_and_non_finite_gradients():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, generator=g)
    x[0, 0, :2] = 0.0
    a = x.clamp(max=-1e-6).requires_grad_()
    b = torch.randn(3, 1, generator=g).requires_grad_()
    for cond, other in ((x < 0, b), (x < 0, torch.tensor(0.5, requires_grad=True)),
                        (torch.tensor(True), b)):
        assert_identical(grads(kernels.where, cond, a, other, node="_WhereBackward"),
                         grads(torch.where, cond, a, other))
    # a uint8 condition (deprecated in torch, still accepted): nonzero is true, not a weight
    byte = torch.tensor([2, 0, 255, 1], dtype=torch.uint8)
    ones, zeros = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_identical(grads(kernels.where, byte, ones, zeros),
                         grads(torch.where, byte, ones, zeros))
    # a gradient with inf / NaN in it takes torch's formula (inf * 0 would be NaN)
    a2, b2 = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    cond = torch.tensor([True, False, True, False])
    upstream = torch.tensor([INF, -INF, float("nan"), 2.0])
    results = []
    for fn in (kernels.where, torch.where):
        a2.grad = b2.grad = None
        fn(cond, a2, b2).backward(upstream)
        results.append([a2.grad.clone(), b2.grad.clone()])
    assert_identical(*results)


def test_without_a_gradient_or_off_the_cpu_graph_they_are_torch():
    x = torch.randn(10)
    with torch.no_grad():
        assert kernels.maximum(x.requires_grad_(), x).grad_fn is None
    y = kernels.clamp(torch.randn(10), 0.0, 1.0)
    assert y.grad_fn is None and torch.equal(y, y.clamp(0.0, 1.0))
    assert kernels.TORCH.sin is torch.sin and kernels.TORCH.nn.functional is torch.nn.functional
    # torch.func transforms get torch itself (custom Functions would need a vmap rule)
    from torch.func import grad, vmap

    t = torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(grad(lambda v: kernels.clamp(v, -1.5, 2.0).sum())(t),
                               torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(vmap(lambda v: kernels.maximum(v, torch.tensor(0.0)))(t),
                               t.clamp(min=0.0))


def random_trees(space: str, n: int, seed: int = 5):
    """Random trees of ``space`` that use x, with learnable scalars on two random nodes."""
    pset = load_primitive_set(space)
    rng = random.Random(seed)
    random.seed(seed)  # deap's generators draw from the global random module
    out = []
    while len(out) < n:
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, min_=1, max_=4))
        act = Activation(tree, space, sorted(rng.sample(range(len(tree)), min(2, len(tree)))))
        if act.program.depends_on_x:
            out.append(act)
    return out


@pytest.mark.parametrize("space", builtin_names())
def test_a_training_step_is_exactly_the_plain_torch_one(space):
    """Loss and every gradient of a small conv net's training step, per-layer and per-channel
    scalars: the eager path with these kernels equals the same source run on plain torch,
    exactly."""
    for i, act in enumerate(random_trees(space, 6)):
        results = []
        for cheap in (True, False):
            torch.manual_seed(0)
            make = act.factory(per_channel=i % 2 == 1)
            COMPILED.set_kernels(cheap)  # the modules made now bind kernels, or plain torch
            net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), make(num_channels=4),
                                nn.Conv1d(4, 4, 3, padding=1), make(num_channels=4),
                                nn.Flatten(), nn.Linear(4 * 12, 3))
            COMPILED.set_kernels(True)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(16, 1, 12, generator=g) * 2
            x[:, :, :3] = 0.0  # exact zeros: ties and clamp bounds at 0
            loss = nn.functional.cross_entropy(net(x), torch.randint(0, 3, (16,), generator=g))
            loss.backward()
            results.append([loss.detach()] + [p.grad for p in net.parameters()])
        assert_identical(*results)


def test_the_switch_decides_what_eager_code_binds():
    """COMPILED's kernels switch: eager functions made while it is on call kernels' functions
    (their autograd nodes in the graph), made while it is off torch's own; a function keeps
    the binding it was made with; the environment variable sets it in a new process."""
    act = Activation.from_string("div(x, add(x, 1.0))", params=[0])
    x = torch.linspace(-3, 3, 13).requires_grad_()

    def made(enabled):
        COMPILED.set_kernels(enabled)
        try:
            module = act.module()
        finally:
            COMPILED.set_kernels(True)
        return module

    on, off = made(True), made(False)
    assert on.function.__globals__["torch"] is kernels.TORCH
    assert on.function.__globals__["torch"].where is kernels.where
    assert off.function.__globals__["torch"] is torch
    nodes = {}
    for name, module in (("on", on), ("off", off)):
        seen, stack = set(), [module(x).grad_fn]
        while stack:
            fn = stack.pop()
            if fn is not None and fn not in seen:
                seen.add(fn)
                stack += [f for f, _ in fn.next_functions]
        nodes[name] = {type(fn).__name__ for fn in seen}
    assert "_WhereBackward" in nodes["on"] and "WhereBackward0" not in nodes["on"]
    assert "_WhereBackward" not in nodes["off"] and "WhereBackward0" in nodes["off"]
    assert on.function is act.module().function  # shared while the switch is on
    torch.testing.assert_close(on(x), off(x), rtol=0, atol=0)

    import os
    import subprocess
    import sys

    probe = ("import torch; from gp_activations import Activation; "
             "m = Activation.from_string('div(x, add(x, 1.0))').module(); "
             "print(m.function.__globals__['torch'] is torch)")
    for value, plain in (("1", "True"), ("0", "False")):
        env = {**os.environ, kernels.PLAIN_ENV: value}
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=env, check=True, timeout=300).stdout.strip()
        assert out == plain


def test_the_benchmark_runs_and_lists_every_operator():
    import subprocess
    import sys
    from pathlib import Path

    from gp_activations.operators import REGISTRY

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "eager_kernels.py"
    out = subprocess.run([sys.executable, str(script), "--repeat", "1"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    rows = {line.split()[0] for line in out.splitlines()[3:] if line.strip()}
    assert {"max", "min", "add", "minzero", "sinh"} <= rows
    assert rows == {n for n, op in REGISTRY.items() if not op.params and not op.user_defined}

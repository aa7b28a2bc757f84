"""Every operator of every built-in search space: values against a sympy/scipy oracle, finite
values and gradients on extreme float32 (and bfloat16) operands, and fast forms that agree
with the protected forms wherever the compiler would use them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sympy
import torch

from gp_activations import UserError, load_primitive_set
from gp_activations import operators as ops

SETS = ["pangaea", "swish_search", "minimal"]
OP_NAMES = sorted({name for s in SETS for name in load_primitive_set(s).operators})
FAST_OPS = [n for n in OP_NAMES if ops.REGISTRY[n].fast]

F32_MAX = float(torch.finfo(torch.float32).max)
BF16_MAX = float(torch.finfo(torch.bfloat16).max)
#: The grid of the issue, plus each dtype's largest finite value.
GRID = [0.0, 1e-30, -1e-30, 1.0, -1.0, 1e4, -1e4, 1e20, -1e20, 3e38, -3e38]


def _op(name):
    return ops.REGISTRY[name]


def _fn(op, fast=False):
    """A callable of (operands..., params...) from op.render, protected or fast."""
    operands = [f"a{i}" for i in range(op.arity)]
    params = [f"p{i}" for i in range(len(op.params))]
    src = f"def f({', '.join(operands + params)}):\n    return {op.render(operands, params, fast=fast)}\n"
    namespace = ops.template_namespace()
    exec(compile(src, f"<{op.name} fast={fast}>", "exec"), namespace)  # our own test source
    return namespace["f"]


# ---------------------------------------------------------------------------------------------
# the search spaces themselves
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space, unary, binary, terminals", [
    ("pangaea", 24, 7, ["x", "zero", "one"]),
    ("swish_search", 25, 10, ["x"]),
    ("minimal", 8, 4, ["x", "one"]),
])
def test_builtin_spaces_are_registry_operators(space, unary, binary, terminals):
    pset = load_primitive_set(space)
    assert (len(pset.unary), len(pset.binary)) == (unary, binary)
    assert pset.terminal_names == terminals
    assert pset.arguments == ["x"]
    for name, op in pset.operators.items():
        assert op is ops.REGISTRY[name]
        assert pset.mapping[name].arity == op.arity


def test_operator_names_are_unique_and_unknown_name_is_a_user_error():
    with pytest.raises(ValueError, match="already registered"):
        ops.register(ops.Operator("relu", 1, "torch.relu({0})", lambda x: x, "dup"))
    with pytest.raises(UserError, match="unknown operator"):
        ops.get("no_such_operator")


# ---------------------------------------------------------------------------------------------
# values against the mathematical form (protections inactive)
# ---------------------------------------------------------------------------------------------
def _safe_operands(name, rng, n=400):
    """Random operands where the operator's protection is inactive (away from singularities)."""
    def away_from_zero(size, lo=0.5):
        return rng.choice([-1.0, 1.0], size) * rng.uniform(lo, 6.0, size)

    if name in ("logabs", "sqrt"):
        return [away_from_zero(n)]
    if name == "div":
        return [rng.normal(size=n) * 5, away_from_zero(n, lo=0.1)]
    return [rng.normal(size=n) * 3 for _ in range(_op(name).arity)]


@pytest.mark.parametrize("name, param_value", [(n, "init") for n in OP_NAMES] + [
    (n, 0.7) for n in OP_NAMES if ops.REGISTRY[n].params])
def test_values_match_sympy_oracle(name, param_value):
    op = _op(name)
    rng = np.random.default_rng(1234)
    operands = _safe_operands(name, rng)
    pvals = [init if param_value == "init" else param_value for _, init in op.params]
    syms = sympy.symbols(f"a0:{op.arity}", real=True)
    psyms = sympy.symbols(f"q0:{len(op.params)}", real=True)
    oracle = sympy.lambdify([*syms, *psyms], op.symbolic(*syms, params=psyms),
                            modules=[ops.numeric_namespace(), "scipy", "numpy"])
    want = np.broadcast_to(np.asarray(oracle(*operands, *pvals), dtype=float), operands[0].shape)
    # float64: the protected implementation is the mathematical function here
    got64 = op(*[torch.tensor(a) for a in operands],
               params=[torch.tensor(v, dtype=torch.float64) for v in pvals])
    np.testing.assert_allclose(got64.numpy(), want, rtol=1e-6, atol=1e-6 if name == "logabs" else 1e-12)
    # float32, as the networks use it
    got32 = op(*[torch.tensor(a, dtype=torch.float32) for a in operands],
               params=[torch.tensor(v, dtype=torch.float32) for v in pvals])
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), want, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# finite values and gradients on extreme operands
# ---------------------------------------------------------------------------------------------
def _grid(dtype):
    top = F32_MAX if dtype == torch.float32 else BF16_MAX
    values = torch.tensor(GRID + [top, -top], dtype=torch.float64).to(dtype)
    assert torch.isfinite(values).all()
    return values


def _operand_tensors(op, dtype):
    g = _grid(dtype)
    if op.arity == 1:
        cols = [g]
    else:  # all pairs of grid values
        idx = torch.tensor(list(itertools.product(range(len(g)), repeat=2)))
        cols = [g[idx[:, 0]], g[idx[:, 1]]]
    return [c.clone().requires_grad_(True) for c in cols]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_finite_values_and_gradients_on_extremes(name, dtype):
    op = _op(name)
    operands = _operand_tensors(op, dtype)
    n = operands[0].numel()
    # one learnable scalar per element, so that each gradient entry comes from one evaluation
    # (a single scalar's gradient is a sum over the batch, which can overflow by itself)
    params = [torch.full((n,), init, dtype=dtype, requires_grad=True) for _, init in op.params]
    y = op(*operands, params=params)
    assert y.shape == (n,) and y.dtype == dtype
    bad = ~torch.isfinite(y)
    assert not bad.any(), [tuple(float(o[i].detach()) for o in operands) for i in bad.nonzero().flatten()]
    y.sum().backward()
    for t in operands + params:
        if t.grad is None:  # only `const` ignores its operand
            assert name == "const" and t is operands[0]
            continue
        bad = ~torch.isfinite(t.grad)
        assert not bad.any(), [tuple(float(o[i].detach()) for o in operands) for i in bad.nonzero().flatten()]


def test_protections_at_their_critical_points():
    """Spot values: where each protection bites, the result is what its doc says."""
    x = torch.tensor([0.0, 1e-30, 1e20, -1e20, 3e38])
    assert torch.equal(_op("square")(torch.tensor([1e20])), torch.tensor([1e36]))
    assert _op("exp")(torch.tensor([1e4])).item() == pytest.approx(math.exp(80), rel=1e-6)
    assert _op("logabs")(torch.tensor([0.0])).item() == pytest.approx(math.log(1e-7), rel=1e-6)
    assert _op("sqrt")(torch.tensor([0.0])).item() == pytest.approx(1e-6, rel=1e-5)
    assert _op("div")(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(1e6, rel=1e-5)
    assert _op("div")(torch.tensor([1.0]), torch.tensor([-0.0])).item() > 0  # 0 -> +1e-6
    assert _op("div")(torch.tensor([1.0]), torch.tensor([-1e-30])).item() == pytest.approx(-1e6, rel=1e-5)
    # add/sub/mul: an overflow becomes the largest finite value of the dtype, nothing else changes
    assert _op("add")(torch.tensor([3e38]), torch.tensor([3e38])).item() == F32_MAX
    assert _op("mul")(torch.tensor([-3e38]), torch.tensor([2.0])).item() == -F32_MAX
    assert _op("add")(torch.tensor([3.3e38]), torch.tensor([0.0])).item() == torch.tensor(3.3e38).item()
    big = torch.tensor([3e38], dtype=torch.bfloat16)
    assert _op("add")(big, big).item() == BF16_MAX
    assert torch.isfinite(_op("gauss")(x)).all() and _op("sinc")(torch.tensor([0.0])).item() == 1.0


# ---------------------------------------------------------------------------------------------
# fast forms
# ---------------------------------------------------------------------------------------------
def _float32_at_most(b: float) -> float:
    """The largest float32 not above b (b itself may round up when converted)."""
    t = torch.tensor(b, dtype=torch.float32)
    if float(t) > b:
        t = torch.nextafter(t, torch.tensor(0.0))
    return float(t)


BOUNDS = [1.0, 10.0, 79.0, 80.0, 88.0, 1e4, 5e11, 1e12, 6e12, 5e17, 1e18, 1.8e19, 1e30, 1e38,
          1.7e38, 3e38, F32_MAX]


def _operands_within(bound, rng, n=300):
    b = _float32_at_most(bound)
    mags = np.exp(rng.uniform(math.log(1e-3), math.log(b), n))
    vals = np.concatenate([rng.choice([-1.0, 1.0], n) * mags, [0.0, b, -b, b / 2]])
    t = torch.tensor(vals, dtype=torch.float32)
    return torch.clamp(t, -b, b)


@pytest.mark.parametrize("name", FAST_OPS)
def test_fast_form_equals_protected_form_wherever_the_compiler_uses_it(name):
    op = _op(name)
    protected, fast = _fn(op), _fn(op, fast=True)
    rng = np.random.default_rng(7)
    used = 0
    for bounds in itertools.product(BOUNDS, repeat=op.arity):
        if not op.can_use_fast(list(bounds)):
            continue
        used += 1
        cols = [_operands_within(b, rng, n=300 if op.arity == 1 else 60) for b in bounds]
        if op.arity == 2:  # pair every value with every other
            cols = [cols[0].repeat_interleave(len(cols[1])), cols[1].repeat(len(cols[0]))]
        a1 = [c.clone().requires_grad_(True) for c in cols]
        a2 = [c.clone().requires_grad_(True) for c in cols]
        y1, y2 = protected(*a1), fast(*a2)
        assert torch.isfinite(y2).all(), (name, bounds)
        assert torch.equal(y1, y2), (name, bounds)
        y1.sum().backward()
        y2.sum().backward()
        for g1, g2 in zip(a1, a2):
            assert torch.equal(g1.grad, g2.grad), (name, bounds)
    assert used, f"{name}: the fast form is never used"
    # ... and an unbounded operand (x itself) keeps the protection where it matters
    if name in ("square", "cube", "exp", "sinh", "cosh"):
        assert not op.can_use_fast([F32_MAX])


def test_compiler_uses_fast_forms_only_where_proven():
    from gp_activations import Activation

    silu = Activation.from_string("mul(x, sigmoid(x))").program.source
    assert "x * v2" in silu and "nan_to_num" not in silu
    assert "clamp" in Activation.from_string("exp(x)").program.source
    assert "clamp" not in Activation.from_string("exp(sin(x))").program.source
    # log|x| of the largest float is 88.72...: the fast exp would overflow there
    act = Activation.from_string("exp(logabs(x))")
    assert "clamp" in act.program.source
    assert torch.isfinite(act(torch.tensor([F32_MAX, -F32_MAX, 3e38, 0.0]))).all()
    # sqrt(x) <= 1.8e19 proves square finite, but the protected square clamps at 1e18
    act = Activation.from_string("square(sqrt(x))")
    x = torch.tensor([1e37, 4.0])
    assert torch.equal(act(x), _op("square")(_op("sqrt")(x)))


@pytest.mark.parametrize("expression, guarded", [
    ("sub(relu(x), mul(abs(x), gauss(x)))", False),  # signs prove it: [0, M] - [0, M]
    ("add(relu(x), mul(0.01, minzero(x)))", False),  # leaky ReLU: [0, M] + [-0.01 M, 0]
    ("add(relu(x), relu(x))", True),                 # 2·relu(x) really overflows at 3e38
    ("sub(relu(x), minzero(x))", True),              # |x| + |x| in the worst case
    ("square(tanh(x))", False),
    ("exp(sigmoid(x))", False),
])
def test_interval_analysis_decides_the_guards(expression, guarded):
    from gp_activations import Activation

    act = Activation.from_string(expression)
    source = act.program.source
    assert (("nan_to_num" in source) or ("clamp(x, " in source and "max=0.0" not in source)) == guarded
    x = torch.tensor([F32_MAX, -F32_MAX, 3e38, -3e38, 1e4, -1e4, 0.0, 1.5, -2.5], requires_grad=True)
    y = act(x)
    assert torch.isfinite(y).all()
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g[4:]).all()


def test_interval_of_each_builtin_contains_sampled_values():
    """The declared output ranges hold on samples from the operand ranges (an oracle check)."""
    rng = np.random.default_rng(3)
    spans = [(-3.0, 2.0), (0.5, 4.0), (-10.0, -1.0), (-80.0, 70.0)]
    for name, op in ops.REGISTRY.items():
        if op.params or op.interval is None:
            continue
        for operand_spans in itertools.product(spans, repeat=op.arity):
            lo, hi = op.output_interval(list(operand_spans))
            cols = [torch.tensor(rng.uniform(a, b, 400), dtype=torch.float64) for a, b in operand_spans]
            y = op(*cols)
            assert (y >= lo - 1e-9 * max(1.0, abs(lo))).all(), (name, operand_spans, lo)
            assert (y <= hi + 1e-9 * max(1.0, abs(hi))).all(), (name, operand_spans, hi)


def test_every_builtin_has_a_measured_cost_and_trees_add_them_up():
    from gp_activations import Activation

    assert set(ops.COSTS) == set(ops.REGISTRY)
    assert all(op.cost == ops.COSTS[name] for name, op in ops.REGISTRY.items())
    act = Activation.from_string("max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))", params=[2, 7])
    expected = ops.COSTS["max"] + 2 * ops.COSTS["mul"] + ops.COSTS["tanh"] + ops.COSTS["softplus"] \
        + ops.COSTS["sigmoid"] + 2 * ops.COSTS["mul"]  # two edge scalars: one multiply each
    assert act.estimated_cost == pytest.approx(expected)

"""Every tree that compiles exports as the function its module computes.

Random trees of every built-in search space (constants, numeric literals -- 0, 1e-9, 1e20 ...
-- and learnable scalars included): the sympy form, evaluated numerically, equals the module
on a grid of x wherever the module's protections do not change an x-dependent value; LaTeX is
produced; the standalone torch source computes exactly what the module computes; JSON round
trips.  Then the cases of the issue one by one (log of 0, division by 0, 0/0, sub(x, x) in a
denominator, a literal below the division's 1e-6 floor) and trees thousands of levels deep.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import sympy
import torch
from deap import gp

from gp_activations import Activation, UserError, load_primitive_set, zoo
from gp_activations import cli
from gp_activations import operators as ops
from gp_activations.codegen import leaf_value
from gp_activations.expression import children, literal_terminal

SETS = ["pangaea", "swish_search", "minimal"]
TREES_PER_SET = 300
#: literals that hit protections (0, 1e-9 and -1e-7 under the division's 1e-6 floor, 1e20
#: beyond its 1e15 numerator clamp and square's 1e18 clamp, 100 beyond exp's 80) and plain ones
LITERALS = [0.0, 1.0, -1.0, 0.5, 2.0, -3.0, 1e-3, 1e-9, -1e-7, 1e20, 100.0, 0.7071067811865476]
GRID = np.concatenate([np.linspace(-5.0, 5.0, 101), [0.0, 1e-3, -1e-3, 20.0, -20.0]])
X = sympy.Symbol("x", real=True)
BAD = (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def random_trees(space: str, n: int = TREES_PER_SET, seed: int = 7, max_height: int = 4):
    """``n`` random (tree, params) over ``space``: a third of the leaves constants/literals,
    every fourth tree with learnable edge scalars on random nodes."""
    pset = load_primitive_set(space)
    rng = random.Random(seed)
    random.seed(seed)  # deap's generators use the global random module
    out = []
    for i in range(n):
        tree = gp.PrimitiveTree(gp.genHalfAndHalf(pset, min_=1, max_=max_height))
        for idx, node in enumerate(tree):
            if isinstance(node, gp.Terminal) and rng.random() < 0.35:
                if pset.constants and rng.random() < 0.4:
                    tree[idx] = pset.mapping[rng.choice(list(pset.constants))]
                else:
                    tree[idx] = literal_terminal(rng.choice(LITERALS))
        params = sorted(rng.sample(range(len(tree)), min(len(tree), 2))) if i % 4 == 0 else []
        out.append((tree, params))
    return pset, out


_MATH: dict = {}


def math_form(op, pset):
    """The operator's mathematical (sympy) form as a numpy function of operands and params."""
    key = (pset.spec, op.name)
    if key not in _MATH:
        args = sympy.symbols(f"a0:{op.arity}", real=True)
        params = sympy.symbols(f"q0:{len(op.params)}", real=True)
        _MATH[key] = sympy.lambdify([*args, *params], op.sympy(*args, *params),
                                    modules=[ops.numeric_namespace(pset.operators), "scipy",
                                             "numpy"])
    return _MATH[key]


def node_values(act: Activation, x: torch.Tensor):
    """Node by node, in float64: (module, reference, scale, protected_constant).

    ``module``: every operator's protected torch form (what the compiled function computes).
    ``reference``: the same, except that every node depending on x applies the operator's
    *mathematical* form to its operands' reference values -- so the two differ exactly where a
    protection changes an x-dependent value.  Subtrees without x are the module's numbers in
    both (that is what the export promises for them).  ``scale``: the largest |value| of any
    node at each point (float64 rounding is relative to it).  ``protected_constant``: whether a
    protection changed some constant subtree's value (log 0, div by 0, clamps) -- the cases the
    export must write as the module's number.
    """
    own: dict = {}
    edge = {}
    for s in act.slots:
        v = torch.tensor(s.init, dtype=torch.float64)
        if s.kind == "edge":
            edge[s.node] = v
        else:
            own.setdefault(s.node, []).append(v)
    kids = children(act.tree)
    n = len(act.tree)
    mod, ref, has_x = [None] * n, [None] * n, [False] * n
    scale = torch.zeros_like(x)
    protected_constant = False
    with np.errstate(all="ignore"):
        for idx in range(n - 1, -1, -1):
            node = act.tree[idx]
            ks = kids[idx]
            if isinstance(node, gp.Primitive):
                op = act.pset.operators[node.name]
                params = own.get(idx, [])
                m = op(*[mod[k] for k in ks], params=params)
                has_x[idx] = any(has_x[k] for k in ks)
                fn = math_form(op, act.pset)
                if has_x[idx]:
                    r = torch.as_tensor(np.asarray(fn(*[ref[k].numpy() for k in ks],
                                                       *[float(p) for p in params]), dtype=float))
                else:
                    r = m
                    exact = np.asarray(fn(*[mod[k].numpy() for k in ks],
                                          *[float(p) for p in params]), dtype=complex)
                    protected_constant |= not np.isclose(exact, float(m), rtol=1e-9, atol=0)
            else:
                v = leaf_value(node, act.pset)
                has_x[idx] = v is None
                m = r = x if v is None else torch.tensor(v, dtype=torch.float64)
            if idx in edge:
                m, r = m * edge[idx], r * edge[idx]
            mod[idx], ref[idx] = m, r
            scale = torch.maximum(scale, torch.nan_to_num(m.abs(), posinf=1e308))
    full = torch.zeros_like(x)
    return mod[0] + full, ref[0] + full, scale, protected_constant


def sympy_values(act: Activation, expr) -> np.ndarray:
    f = sympy.lambdify(X, expr, modules=[ops.numeric_namespace(act.pset.operators), "scipy",
                                         "numpy"])
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(f(GRID), dtype=complex), GRID.shape)


def check_sympy_is_module(act: Activation):
    """Assert the sympy form (scalars at their initial values) is the module's function;
    return (points compared, whether a protected constant was involved)."""
    init = {s.name: s.init for s in act.slots}
    expr = act.sympy(values=init)
    assert expr.free_symbols <= {X}, (str(act), expr)
    assert not expr.has(*BAD), (str(act), expr)
    x = torch.tensor(GRID, dtype=torch.float64)
    module = act(x).numpy()
    oracle_module, reference, scale, protected_constant = node_values(act, x)
    np.testing.assert_array_equal(module, oracle_module.numpy())  # the oracle is the module
    reference, scale = reference.numpy(), scale.numpy()
    got = sympy_values(act, expr)
    finite = np.isfinite(got) & (got.imag == 0) & np.isfinite(module)
    got = got.real
    with np.errstate(all="ignore"):
        # points where the module's protections leave every x-dependent value alone
        unprotected = np.isfinite(reference) & (
            np.abs(module - reference) <= 1e-9 * np.abs(reference) + 1e-13 * scale)
        check = finite & unprotected
        err = np.abs(got - module)
        tol = 1e-7 * np.abs(module) + 1e-11 * scale
    bad = check & ~(err <= tol)
    assert not bad.any(), (str(act), str(expr), GRID[bad][:5], got[bad][:5], module[bad][:5])
    return int(check.sum()), protected_constant


# ---------------------------------------------------------------------------------------------
# random trees of every built-in space
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", SETS)
def test_random_trees_sympy_equals_module(space):
    pset, trees = random_trees(space)
    checked = protected = with_params = 0
    for tree, params in trees:
        act = Activation(tree, pset, params)
        with_params += bool(act.slots)
        points, hit = check_sympy_is_module(act)
        checked += points
        protected += hit
    # the grid comparison is not vacuous: most points of most trees are compared
    assert checked >= 0.75 * len(trees) * len(GRID), checked
    assert with_params >= len(trees) // 5
    # trees whose constant subtrees hit a protection (minimal has no log, division or exp:
    # only square's clamp of 1e20)
    assert protected >= {"pangaea": 30, "swish_search": 10, "minimal": 1}[space], protected


@pytest.mark.parametrize("space", SETS)
def test_random_trees_latex_torch_and_json(space, tmp_path):
    pset, trees = random_trees(space, n=TREES_PER_SET // 3, seed=11)
    x32 = torch.tensor(GRID, dtype=torch.float32)
    x64 = torch.tensor(GRID, dtype=torch.float64)
    for tree, params in trees:
        act = Activation(tree, pset, params)
        for text in (act.export("latex"), act.latex(values={s.name: s.init for s in act.slots}),
                     act.export("sympy")):
            assert text and not any(w in text for w in ("infty", "NaN", "nan", "zoo")), (act, text)
        source = act.export("torch")
        namespace: dict = {}
        exec(compile(source, "<export>", "exec"), namespace)  # noqa: S102 -- our own export
        exported = namespace["EvolvedActivation"]()
        module = act.module()
        assert torch.equal(exported(x32), module(x32)), act
        assert torch.equal(exported.double()(x64), module.double()(x64)), act
        data = json.loads(act.export("json"))
        back = Activation.from_json(data)
        assert back == act and back.expression == act.expression and back.params == act.params
        assert torch.equal(back(x64), act(x64))


def test_zoo_exports_are_the_module():
    for name in zoo.names():
        act = zoo.get(name)
        points, _ = check_sympy_is_module(act)
        assert points >= 0.9 * len(GRID), name


# ---------------------------------------------------------------------------------------------
# the cases of the issue
# ---------------------------------------------------------------------------------------------
LOG_EPS = math.log(1e-7)


@pytest.mark.parametrize("expr, want", [
    ("logabs(zero)", lambda x: np.full_like(x, LOG_EPS)),
    ("mul(x, logabs(zero))", lambda x: LOG_EPS * x),
    ("div(logabs(zero), add(x, 10.0))", lambda x: LOG_EPS / (x + 10)),
    ("div(x, zero)", lambda x: x / 1e-6),
    ("add(x, div(one, zero))", lambda x: x + 1e6),
    ("div(zero, zero)", lambda x: np.zeros_like(x)),
    ("max(x, div(zero, zero))", lambda x: np.maximum(x, 0)),
    ("min(x, div(zero, zero))", lambda x: np.minimum(x, 0)),
    ("div(x, sub(x, x))", lambda x: x / 1e-6),  # sympy makes x - x a 0 before dividing
    ("div(sin(x), mul(x, zero))", lambda x: np.sin(x) / 1e-6),
    ("mul(x, logabs(sub(x, x)))", lambda x: LOG_EPS * x),
    ("div(sub(x, x), sub(x, x))", lambda x: np.zeros_like(x)),
    ("div(x, sqrt(zero))", lambda x: x / 1e-6),  # √0 is the module's √1e-12 = 1e-6
    ("div(x, 1e-9)", lambda x: x / 1e-6),  # not 1e9·x: the module floors |x₂| at 1e-6
    ("div(x, -1e-9)", lambda x: x / -1e-6),
    ("div(1e20, add(x, 10.0))", lambda x: 1e15 / (x + 10)),  # the numerator is clamped to 1e15
    ("mul(x, exp(100.0))", lambda x: x * math.exp(80)),  # exp's input is clamped at 80
    ("add(x, square(1e20))", lambda x: x + 1e36),
    ("mul(x, sinc(zero))", lambda x: x),
    ("add(x, sqrt(zero))", lambda x: x + 1e-6),
])
def test_protected_constants_export_the_module_function(expr, want):
    act = Activation.from_string(expr, "pangaea")
    expected = want(GRID)
    np.testing.assert_allclose(act(torch.tensor(GRID, dtype=torch.float64)).numpy(), expected,
                               rtol=1e-12, atol=1e-30)
    x32 = torch.tensor(GRID, dtype=torch.float32)  # float32: against the function at x32
    np.testing.assert_allclose(act(x32).double().numpy(), want(x32.double().numpy()),
                               rtol=1e-5, atol=1e-30)
    sym = act.sympy()
    assert not sym.has(*BAD), sym
    np.testing.assert_allclose(sympy_values(act, sym).real, expected, rtol=1e-12, atol=1e-30)
    assert np.all(sympy_values(act, sym).imag == 0)
    latex = act.latex()
    assert "infty" not in latex and "NaN" not in latex
    assert "zoo" not in act.export("sympy") and "nan" not in act.export("sympy")


def test_protected_constant_values_are_printed():
    assert Activation.from_string("mul(x, logabs(zero))").latex() == "- 16.12 x"
    assert Activation.from_string("div(x, zero)").export("sympy") == "1000000*x"
    assert Activation.from_string("div(x, sub(x, x))").latex() == "1000000 x"
    assert Activation.from_string("max(x, div(zero, zero))").export("sympy") == "Max(0, x)"
    # exact constants stay exact where the module agrees with them
    sin_half = Activation.from_string("mul(x, sin(0.5))").latex()
    assert sin_half == r"x \sin{\left(\frac{1}{2} \right)}"
    assert Activation.from_string("add(x, exp(one))").export("sympy") == "x + E"


def test_protected_constants_with_learnable_scalars():
    # a scalar on the zero (node 2): p0·0 is 0 for every p0, so still the floored denominator
    act = Activation.from_string("div(x, zero)", params=[2])
    assert act.sympy() == 1000000 * X
    # a scalar above the constant log: p0·log(1e-7), symbolic or at a learned value
    act = Activation.from_string("mul(x, logabs(zero))", params=[2])
    p0 = sympy.Symbol("p_0", real=True)
    sym = act.sympy()
    assert sym.free_symbols == {X, p0} and not sym.has(*BAD)
    assert float(sym.subs({X: 2.0, p0: 3.0})) == pytest.approx(2 * 3 * LOG_EPS, rel=1e-12)
    y = act(torch.tensor([2.0], dtype=torch.float64), values={"p0": 3.0})
    assert float(act.sympy(values={"p0": 3.0}).subs(X, 2.0)) == pytest.approx(float(y), rel=1e-12)
    # the swish_search β's: const(x) is β; gaussdist of two numbers is the module's number
    act = Activation.from_string("div(x, sub(const(x), 1.0))", "swish_search")
    assert not act.sympy().has(*BAD)
    assert act.slot_names == ["beta0"] and act.sympy(values={"beta0": 1.0}) == 1000000 * X
    act = Activation.from_string("mul(x, gaussdist(1e20, 0.0))", "swish_search")
    assert act.slot_names == ["beta0"]
    assert act.sympy(values={"beta0": 1.0}) == 0  # e^{-(1e18)²} = 0 in the module


# ---------------------------------------------------------------------------------------------
# deep trees
# ---------------------------------------------------------------------------------------------
DEPTH = 5000


def deep(op: str = "sin", depth: int = DEPTH, leaf: str = "x") -> str:
    return f"{op}(" * depth + leaf + ")" * depth


@pytest.mark.parametrize("op", ["sin", "exp"])
def test_deep_tree_torch_and_json_export(op, tmp_path):
    act = Activation.from_string(deep(op), "pangaea")
    assert act.height == DEPTH and str(act.tree) == deep(op)
    source = act.export("torch")
    assert f"LaTeX:\n    (omitted for an expression of {DEPTH + 1} nodes;" in source
    path = tmp_path / "deep_export.py"
    path.write_text(source)
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 -- our export
    exported = namespace["EvolvedActivation"]()
    x = torch.linspace(-3, 3, 25, dtype=torch.float64)
    y = exported.double()(x)
    assert torch.equal(y, act.module().double()(x))
    want = x.numpy().copy()
    fn = {"sin": np.sin, "exp": lambda v: np.exp(np.minimum(v, 80.0))}[op]
    for _ in range(DEPTH):
        want = fn(want)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-9)
    back = Activation.from_json(act.export("json"))
    assert back == act and back.height == DEPTH


@pytest.mark.parametrize("fmt", ["latex", "sympy"])
def test_deep_tree_symbolic_export_is_one_user_error(fmt):
    act = Activation.from_string(deep("sin"), "pangaea")
    with pytest.raises(UserError, match=f"expression is {DEPTH} levels deep; sympy/LaTeX cannot "
                                        f"represent it -- export it with --format torch or json"):
        act.export(fmt)
    with pytest.raises(UserError, match="levels deep"):
        act.sympy()
    with pytest.raises(UserError, match="levels deep"):
        act.latex()


def test_torch_export_notes_why_latex_is_missing():
    # deeper than sympy's recursion allows, small enough for the docstring to try
    # (where sympy's recursion gives out depends on what it has cached: either is right)
    # (the source doubles LaTeX's backslashes: it is a Python docstring)
    source = Activation.from_string(deep("sin", 600)).torch_source()
    assert ("LaTeX:\n    (omitted: the expression is 600 levels deep, too deep for sympy/LaTeX)"
            in source) or "LaTeX:\n    \\\\sin{\\\\left(" in source
    shallow = Activation.from_string(deep("sin", 5)).torch_source()
    assert "LaTeX:\n    \\\\sin{\\\\left(\\\\sin{" in shallow
    # i0e is e^{-|x|} I0(x): its operand twice, so the symbolic form doubles per level
    act = Activation.from_string(deep("i0e", 14))
    with pytest.raises(UserError, match="would have more than 20000 operations .*too large for "
                                        "sympy/LaTeX -- export it with --format torch or json"):
        act.latex()
    source = act.torch_source()
    assert "LaTeX:\n    (omitted: the form would have more than 20000 operations)" in source
    namespace: dict = {}
    exec(compile(source, "<export>", "exec"), namespace)  # noqa: S102 -- our own export
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(namespace["EvolvedActivation"]()(x), act.module()(x))
    assert Activation.from_string(deep("i0e", 4)).latex().count("I_{0}") == 2 ** 4 - 1


def test_deep_constant_tree_exports_its_value():
    # a constant chain of any depth folds to the module's number
    act = Activation.from_string(f"mul(x, {deep('cos', 3000, 'one')})", "pangaea")
    y = float(act(torch.tensor([1.0], dtype=torch.float64)))
    assert 0.73 < y < 0.74  # the fixed point of cos
    sym = act.sympy()
    assert sym.free_symbols == {X}
    assert float(sym.subs(X, 1.0)) == pytest.approx(y, rel=1e-12)
    assert act.latex() == "0.7391 x"


def test_cli_deep_expression(capsys, tmp_path):
    text = deep("sin")
    assert cli.main(["export", "--expr", text, "--format", "torch"]) == 0
    out, err = capsys.readouterr()
    assert "class EvolvedActivation" in out and out.count("torch.sin(") == DEPTH and not err
    namespace: dict = {}
    exec(compile(out, "<cli export>", "exec"), namespace)  # noqa: S102 -- our export
    x = torch.tensor([0.5])
    assert torch.equal(namespace["EvolvedActivation"]()(x),
                       Activation.from_string(text).module()(x))
    assert cli.main(["export", "--expr", text, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["expression"] == text and not err
    for fmt in ("latex", "sympy"):
        assert cli.main(["export", "--expr", text, "--format", fmt]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"expression is {DEPTH} levels deep" in err and "--format torch or json" in err


def test_cli_too_large_form(capsys):
    text = deep("i0e", 14)
    assert cli.main(["export", "--expr", text, "--format", "latex"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "too large for sympy/LaTeX" in err
    assert cli.main(["export", "--expr", text, "--format", "torch"]) == 0
    out, err = capsys.readouterr()
    assert out.count("torch.special.i0e(") == 14 and not err


def test_cli_protected_constant(capsys):
    assert cli.main(["export", "--expr", "mul(x, logabs(zero))", "--format", "sympy"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == "-16.1180956509583*x"
    assert cli.main(["export", "--expr", "max(x, div(zero, zero))", "--format", "latex"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == r"\max\left(0, x\right)"

"""The operator registry: every operator an activation can use, each defined exactly once.

An :class:`Operator` carries everything the rest of the library needs to know about it:

* ``torch`` -- a *source template* of the protected torch implementation, e.g.
  ``"torch.exp(torch.clamp({0}, max=80.0))"``.  Templates rather than callables because the
  compiler writes straight-line source (one statement per node) and the torch exporter writes
  that very same source into a standalone file.  ``{0}``/``{1}`` are the operands, ``{p0}``…
  the operator's own learnable scalars (e.g. the β of ``βx``).
* ``fast`` -- optionally, the unprotected template.  The compiler emits it when interval
  (magnitude) analysis proves the operands are small enough for the fast form to stay finite
  *and equal to the protected form*, so that ``x * sigmoid(x)`` costs exactly what hand-written
  torch costs, while ``exp(x)`` on an unbounded input gets its clamp.
* ``interval`` -- the output's range ``(lo, hi)`` given each operand's range (of the
  mathematical function); unknown parts are infinite.  Used by that analysis, which tracks
  signs, so ``relu(x) - |x|·gauss(x)`` is proven finite while ``relu(x) + relu(x)`` is not.
  User operators may give ``bound`` instead: the largest |output| given the largest |operand|.  Operators that
  clamp their input return ``inf`` ("unknown") near and beyond the clamp, so that the fast form
  is never chosen where the protection would change the result.
* ``sympy`` -- the mathematical form, for LaTeX, simplification and numeric oracles.  Protections
  are *not* part of it: ``div`` is ``x1/x2`` in sympy, protected in torch.

**Numerical protection.**  Every built-in operator returns finite values *and* finite gradients
for every finite float32 (and bfloat16) operand, 0 and ±1e4 included.  Each protection is
described in the operator's ``doc``; the general rules are:

* operators that overflow (square, cube, exp, sinh, cosh) clamp their *input* to a range whose
  output is finite, so the gradient beyond it is exactly 0 (never 0·inf = NaN);
* ``add``/``sub``/``mul`` of finite huge numbers can overflow; their protected forms replace an
  overflowed ±inf by the dtype's largest finite value (``torch.nan_to_num``, zero gradient
  there, multiplying finite operands only) and leave every finite result unchanged -- so they
  equal the fast forms wherever those are finite, in float32, bfloat16 and float16 alike;
* singular points (division by 0, log 0, the slope of √ at 0) are kept an ε away.

Learnable scalars are assumed to stay moderate: a parameter that grows without bound can still
overflow, which the trainer reports as a ``diverged`` run rather than a crash.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import sympy
import torch

from . import kernels

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class sigmoid(sympy.Function):
    """σ(x) = 1 / (1 + e^{-x}) as a sympy function that prints as σ."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sympy.exp(-arg))

    def _eval_evalf(self, prec):
        return (1 / (1 + sympy.exp(-self.args[0]))).evalf(prec)

    def _latex(self, printer, exp=None):
        inner = printer._print(self.args[0])
        text = rf"\sigma\left({inner}\right)"
        return rf"{text}^{{{exp}}}" if exp else text

    #: numeric implementation used by sympy.lambdify
    _imp_ = staticmethod(lambda x: 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float))))


def _softplus_np(x):
    x = np.asarray(x, dtype=float)
    return np.logaddexp(0.0, x)


@dataclass(frozen=True)
class Operator:
    """One operator: name, arity, torch template(s), sympy form and documentation."""

    name: str
    arity: int
    torch: str
    sympy: Callable[..., sympy.Expr]
    doc: str
    fast: Optional[str] = None
    bound: Optional[Callable[..., float]] = None
    #: interval analysis: (lo, hi) of the output given (lo, hi) of each operand (built-ins)
    interval: Optional[Callable[..., tuple]] = None
    #: forward cost in ReLU units (see COSTS); the search rejects trees whose sum is too high
    cost: float = 10.0
    #: operator-owned learnable scalars: (name, initial value) pairs, referenced as {p0}, {p1}…
    params: tuple = ()
    #: for user operators written as Python functions: name -> callable used by the templates
    helpers: dict = field(default_factory=dict, compare=False, hash=False)
    #: True when the implementation is a user's function (its source is embedded on export)
    user_defined: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"operator name {self.name!r} is not an identifier")
        if self.arity not in (1, 2):
            raise ValueError(f"operator {self.name!r}: arity must be 1 or 2, got {self.arity}")

    # -- code generation -------------------------------------------------------------------
    def render(self, operands: Sequence[str], params: Sequence[str] = (), fast: bool = False) -> str:
        """The operator applied to variable names, as a Python expression."""
        template = self.fast if (fast and self.fast) else self.torch
        names = {f"p{i}": p for i, p in enumerate(params)}
        return template.format(*operands, **names)

    def output_interval(self, operands: Sequence) -> tuple:
        """(lo, hi) of the mathematical function's output given each operand's (lo, hi) -- or a
        magnitude b, meaning (-b, b); (-inf, inf) when unknown."""
        ivs = [(-float(o), float(o)) if not isinstance(o, tuple) else o for o in operands]
        try:
            if self.interval is not None:
                lo, hi = self.interval(*ivs)
            elif self.bound is not None:
                m = float(self.bound(*[max(abs(a), abs(b)) for a, b in ivs]))
                lo, hi = -m, m
            else:
                return -math.inf, math.inf
        except (OverflowError, ValueError):
            return -math.inf, math.inf
        lo, hi = float(lo), float(hi)
        if math.isnan(lo) or math.isnan(hi):
            return -math.inf, math.inf
        return lo, hi

    def output_bound(self, operands: Sequence) -> float:
        """Largest |output| of the mathematical function, or inf when unknown."""
        lo, hi = self.output_interval(operands)
        return max(abs(lo), abs(hi))

    def can_use_fast(self, operands: Sequence) -> bool:
        return self.fast is not None and self.output_bound(operands) <= FLOAT32_MAX

    # -- direct use --------------------------------------------------------------------------
    def __call__(self, *operands, params=()):
        """Apply the (protected) torch implementation to tensors, as eager activations run it
        (:mod:`kernels`) -- handy in notebooks and tests."""
        return self.function(*operands, *params)

    @property
    def function(self):
        """A Python function evaluating the protected torch template, ``f(*operands,
        *params)`` -- what DEAP's primitive set calls (built once per operator)."""
        return _template_function(self)

    def symbolic(self, *operands, params=()):
        """The mathematical (sympy) form applied to sympy operands."""
        return self.sympy(*operands, *params)

    def latex(self) -> str:
        """LaTeX of the operator applied to x (unary) or x_1, x_2 (binary)."""
        names = ["x"] if self.arity == 1 else ["x_1", "x_2"]
        args = [sympy.Symbol(n, real=True) for n in names]
        ps = [sympy.Symbol(p[0] if len(self.params) > 1 else r"\beta", real=True) for p in self.params]
        return sympy.latex(self.sympy(*args, *ps))


_TEMPLATE_CACHE: dict = {}


def _template_function(op: Operator):
    """A Python function evaluating ``op``'s protected template (our own trusted source)."""
    key = (op.name, op.torch, id(op))
    fn = _TEMPLATE_CACHE.get(key)
    if fn is None:
        operands = [f"a{i}" for i in range(op.arity)]
        params = [f"p{i}" for i in range(len(op.params))]
        args = ", ".join(operands + params)
        src = f"def _op({args}):\n    return {op.render(operands, params)}\n"
        namespace = kernels.namespace()  # as generated eager code runs it
        namespace.update(op.helpers)
        exec(compile(src, f"<operator {op.name}>", "exec"), namespace)  # noqa: S102 -- our template
        fn = _TEMPLATE_CACHE[key] = namespace["_op"]
    return fn


def template_namespace() -> dict:
    """Globals that generated code may reference (and nothing else: only torch)."""
    return {"torch": torch}


# ---------------------------------------------------------------------------------------------
# Built-in operators.  Bounds: ``b`` is the largest |operand|.
# ---------------------------------------------------------------------------------------------
REGISTRY: dict[str, Operator] = {}


def register(op: Operator) -> Operator:
    """Add an operator to the global registry (names are unique)."""
    if op.name in REGISTRY:
        raise ValueError(f"operator {op.name!r} is already registered")
    REGISTRY[op.name] = op
    return op


#: Forward time of each built-in relative to ReLU, measured on a cache-resident float32 tensor
#: (65,536 elements, one CPU thread, torch 2.14, AMD EPYC with AVX-512): the compute each
#: operator costs, without the memory traffic that makes every elementwise op look alike on
#: big tensors.  A fixed table -- not a timing taken during the search -- so that every run,
#: executor and resume makes the same rejections.
COSTS = {
    "identity": 0.0, "neg": 1.0, "relu": 1.0, "abs": 1.0, "minzero": 1.2, "max": 1.7,
    "min": 1.7, "const": 1.8, "scale": 2.5, "shift": 2.5, "square": 2.7, "cube": 2.8, "mul": 3.0,
    "sub": 3.0, "add": 3.0, "sigmoid": 5.0, "sigmul": 7.0, "sqrt": 8.0, "interp": 9.5,
    "exp": 11.0, "gauss": 12.0, "sin": 14.0, "logabs": 15.0, "cos": 15.0, "erf": 15.0,
    "laplacedist": 16.0, "gaussdist": 16.0, "softplus": 17.0, "erfc": 20.0, "div": 21.0,
    "atan": 27.0, "i1e": 27.0, "tanh": 42.0, "cosh": 72.0, "sinc": 76.0, "sinh": 194.0,
    "asinh": 249.0, "i0e": 293.0,
}


def _unary(name, torch_src, sym, doc, *, fast=None, interval=None, params=()):
    return register(Operator(name, 1, torch_src, sym, doc, fast=fast, interval=interval,
                             params=params, cost=COSTS[name]))


def _binary(name, torch_src, sym, doc, *, fast=None, interval=None, params=()):
    return register(Operator(name, 2, torch_src, sym, doc, fast=fast, interval=interval,
                             params=params, cost=COSTS[name]))


# Interval helpers: an interval is (lo, hi); results may contain inf ("unknown").
INF = math.inf


def _increasing(f):
    return lambda i: (f(i[0]), f(i[1]))


def _fixed(lo, hi):
    return lambda *i: (lo, hi)


def _abs(i):
    lo, hi = i
    if lo >= 0:
        return lo, hi
    if hi <= 0:
        return -hi, -lo
    return 0.0, max(-lo, hi)


def _mul(a, b):
    products = [x * y for x in a for y in b if not (math.isinf(x) or math.isinf(y))]
    if len(products) < 4:
        return -INF, INF
    return min(products), max(products)


def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


# The bounds of square, cube, exp, sinh and cosh are inf ("unknown") from a margin inside their
# protected forms' input clamps on: the fast forms are then used only where they equal the
# protected ones, values and gradients (a clamp's gradient is 0 at its boundary), allowing for an
# operand computed in float32 that exceeds its float64 bound by a few ulps.
def _sq(i):
    lo, hi = _abs(i)
    return (lo * lo, hi * hi) if hi <= 5e17 else (0.0, INF)  # protected: input clamped to ±1e18


def _cube(i):
    if max(abs(i[0]), abs(i[1])) > 5e11:  # protected: input clamped to ±1e12
        return -INF, INF
    return i[0] ** 3, i[1] ** 3


def _exp(v):
    return math.exp(v) if v <= 79.0 else INF  # protected: input clamped at 80 (±80)


def _sinh(i):
    if max(abs(i[0]), abs(i[1])) > 79.0:
        return -INF, INF
    return math.sinh(i[0]), math.sinh(i[1])


def _cosh(i):
    lo, hi = _abs(i)
    return (math.cosh(lo), math.cosh(hi)) if hi <= 79.0 else (1.0, INF)


_CLAMP_OUT = "torch.nan_to_num({expr})"
S = sympy

# -- sign and magnitude --
_unary("identity", "{0}", lambda x: x, "x", interval=lambda i: i)
_unary("neg", "-{0}", lambda x: -x, "-x", interval=lambda i: (-i[1], -i[0]))
_unary("abs", "torch.abs({0})", S.Abs, "|x|; gradient 0 at x = 0", interval=_abs)
_unary("relu", "torch.relu({0})", lambda x: S.Max(x, 0), "max(x, 0)",
       interval=lambda i: (max(i[0], 0.0), max(i[1], 0.0)))
_unary("minzero", "torch.clamp({0}, max=0.0)", lambda x: S.Min(x, 0), "min(x, 0)",
       interval=lambda i: (min(i[0], 0.0), min(i[1], 0.0)))

# -- powers --
_unary("square", "torch.square(torch.clamp({0}, -1e18, 1e18))", lambda x: x**2,
       "x²; input clamped to ±1e18 so the result (≤1e36) and its slope stay finite",
       fast="torch.square({0})", interval=_sq)
_unary("cube", "torch.pow(torch.clamp({0}, -1e12, 1e12), 3)", lambda x: x**3,
       "x³; input clamped to ±1e12 so the result (≤1e36) and its slope stay finite",
       fast="torch.pow({0}, 3)", interval=_cube)
_unary("sqrt", "torch.sqrt(torch.clamp(torch.abs({0}), min=1e-12))", lambda x: S.sqrt(S.Abs(x)),
       "√|x|; |x| floored at 1e-12 so the slope (≤5e5) is finite at 0",
       interval=lambda i: (1e-6, math.sqrt(max(_abs(i)[1], 1e-12))))

# -- exponentials and logarithms --
_unary("exp", "torch.exp(torch.clamp({0}, max=80.0))", S.exp,
       "eˣ; input clamped at 80 (e⁸⁰≈5.5e34) so value and slope stay finite",
       fast="torch.exp({0})", interval=_increasing(_exp))
_unary("gauss", "torch.exp(-({0} * {0}))", lambda x: S.exp(-x**2),
       "e^{-x²}; x·x overflowing to inf gives e^{-inf}=0 and a gradient 0·x = 0 (x finite), "
       "so no clamp is needed", interval=_fixed(0.0, 1.0))
_unary("softplus", "torch.nn.functional.softplus({0})", lambda x: S.log(1 + S.exp(x)),
       "log(1+eˣ); torch's softplus is linear above 20, finite everywhere",
       interval=_increasing(_softplus))
_unary("logabs", "torch.log(torch.abs({0}) + 1e-7)", lambda x: S.log(S.Abs(x)),
       "log(|x| + ε), ε = 1e-7: value ≥ -16.1 and slope ≤ 1e7 at 0",
       interval=lambda i: (math.log(1e-7), math.log(_abs(i)[1] + 1e-7)))

# -- trigonometric and hyperbolic --
_unary("sin", "torch.sin({0})", S.sin, "sin x", interval=_fixed(-1.0, 1.0))
_unary("cos", "torch.cos({0})", S.cos, "cos x", interval=_fixed(-1.0, 1.0))
_unary("sinh", "torch.sinh(torch.clamp({0}, -80.0, 80.0))", S.sinh,
       "sinh x; input clamped to ±80 so value and slope stay finite",
       fast="torch.sinh({0})", interval=_sinh)
_unary("cosh", "torch.cosh(torch.clamp({0}, -80.0, 80.0))", S.cosh,
       "cosh x; input clamped to ±80 so value and slope stay finite",
       fast="torch.cosh({0})", interval=_cosh)
_unary("tanh", "torch.tanh({0})", S.tanh, "tanh x", interval=_fixed(-1.0, 1.0))
_unary("asinh", "torch.asinh({0})", S.asinh, "arsinh x (finite for every finite x)",
       interval=_increasing(math.asinh))
_unary("atan", "torch.atan({0})", S.atan, "arctan x", interval=_fixed(-math.pi / 2, math.pi / 2))
_unary("sinc", "torch.sinc({0} * 0.3183098861837907)", S.sinc,
       "sin(x)/x (unnormalised; 1 at 0); torch.sinc takes x/π",
       interval=_fixed(-0.2173, 1.0))

# -- sigmoidal and error functions --
_unary("sigmoid", "torch.sigmoid({0})", sigmoid, "σ(x) = 1/(1+e^{-x})",
       interval=_fixed(0.0, 1.0))
_unary("erf", "torch.erf({0})", S.erf, "erf x", interval=_fixed(-1.0, 1.0))
_unary("erfc", "torch.erfc({0})", S.erfc, "erfc x = 1 - erf x", interval=_fixed(0.0, 2.0))
_unary("i0e", "torch.special.i0e({0})", lambda x: S.exp(-S.Abs(x)) * S.besseli(0, x),
       "e^{-|x|} I₀(x), exponentially scaled Bessel function of order 0",
       interval=_fixed(0.0, 1.0))
_unary("i1e", "(torch.special.i1e({0}) if {0}.dtype not in (torch.bfloat16, torch.float16) "
       "else torch.special.i1e({0}.float()).to({0}.dtype))",
       lambda x: S.exp(-S.Abs(x)) * S.besseli(1, x),
       "e^{-|x|} I₁(x), exponentially scaled Bessel function of order 1 (16-bit inputs are "
       "computed in float32: torch has no 16-bit i1e gradient)", interval=_fixed(-0.5, 0.5))

# -- binary --
_binary("add", _CLAMP_OUT.format(expr="{0} + {1}"), lambda a, b: a + b,
        "x₁ + x₂; the protected form maps an overflowed sum to ±(largest float)",
        fast="{0} + {1}", interval=lambda a, b: (a[0] + b[0], a[1] + b[1]))
_binary("sub", _CLAMP_OUT.format(expr="{0} - {1}"), lambda a, b: a - b,
        "x₁ - x₂; the protected form maps an overflowed difference to ±(largest float)",
        fast="{0} - {1}", interval=lambda a, b: (a[0] - b[1], a[1] - b[0]))
_binary("mul", _CLAMP_OUT.format(expr="{0} * {1}"), lambda a, b: a * b,
        "x₁·x₂; the protected form maps an overflowed product to ±(largest float)",
        fast="{0} * {1}", interval=_mul)
_binary("div",
        "torch.clamp({0}, -1e15, 1e15) / torch.where({1} < 0, torch.clamp({1}, max=-1e-6), "
        "torch.clamp({1}, min=1e-6))",
        lambda a, b: a / b,
        "x₁/x₂ protected: |x₂| floored at 1e-6 (keeping its sign, 0 → +1e-6) and x₁ clamped to "
        "±1e15, so |result| ≤ 1e21 and both slopes stay finite",
        interval=_fixed(-1e21, 1e21))
_binary("max", "torch.maximum({0}, {1})", S.Max, "max(x₁, x₂)",
        interval=lambda a, b: (max(a[0], b[0]), max(a[1], b[1])))
_binary("min", "torch.minimum({0}, {1})", S.Min, "min(x₁, x₂)",
        interval=lambda a, b: (min(a[0], b[0]), min(a[1], b[1])))
_binary("sigmul", "torch.sigmoid({0}) * {1}", lambda a, b: sigmoid(a) * b, "σ(x₁)·x₂",
        interval=lambda a, b: (min(0.0, b[0]), max(0.0, b[1])))

# -- β-parameterised operators of Ramachandran, Zoph & Le (2017); β is learnable --
_unary("scale", _CLAMP_OUT.format(expr="{0} * {p0}"), lambda x, beta: beta * x,
       "βx (β learnable, init 1); overflow maps to ±(largest float)", params=(("beta", 1.0),))
_unary("shift", _CLAMP_OUT.format(expr="{0} + {p0}"), lambda x, beta: x + beta,
       "x + β (β learnable, init 0); overflow maps to ±(largest float)", params=(("beta", 0.0),))
_unary("const", "torch.zeros_like({0}) + {p0}", lambda x, beta: beta,
       "β, a learnable constant (init 1) of x's shape", params=(("beta", 1.0),))
_binary("gaussdist", "torch.exp(-{p0} * torch.square(torch.clamp({0} - {1}, -1e18, 1e18)))",
        lambda a, b, beta: S.exp(-beta * (a - b) ** 2),
        "e^{-β(x₁-x₂)²} (β learnable, init 1); the difference is clamped to ±1e18",
        params=(("beta", 1.0),))
_binary("laplacedist", "torch.exp(-{p0} * torch.abs(torch.clamp({0} - {1}, -3e38, 3e38)))",
        lambda a, b, beta: S.exp(-beta * S.Abs(a - b)),
        "e^{-β|x₁-x₂|} (β learnable, init 1); the difference is clamped to ±3e38",
        params=(("beta", 1.0),))
_binary("interp", _CLAMP_OUT.format(expr="{p0} * torch.clamp({0}, -1.5e38, 1.5e38) + "
                                       "(1.0 - {p0}) * torch.clamp({1}, -1.5e38, 1.5e38)"),
        lambda a, b, beta: beta * a + (1 - beta) * b,
        "βx₁ + (1-β)x₂ (β learnable, init 0.5); operands clamped to ±1.5e38 so that the slope "
        "in β, x₁ - x₂, stays finite; overflow maps to ±(largest float)", params=(("beta", 0.5),))


#: Named constant terminals available to search spaces.
CONSTANTS: dict[str, float] = {"zero": 0.0, "one": 1.0}


def numeric_namespace(operators=None) -> dict:
    """Functions sympy.lambdify needs for our custom sympy functions (numeric oracles).

    ``operators`` (e.g. ``pset.operators``): user operators declared without a sympy form print
    as an undefined function of their name; for those the namespace evaluates their torch
    function on float64 numpy arrays.
    """
    ns = {"sigmoid": sigmoid._imp_, "softplus": _softplus_np}
    ops = operators.values() if isinstance(operators, dict) else (operators or ())
    for op in ops:
        if op.user_defined and op.name in op.helpers:
            ns.setdefault(op.name, _numpy_wrapper(op.helpers[op.name]))
    return ns


def _numpy_wrapper(fn):
    def evaluate(*args):
        tensors = [torch.as_tensor(np.asarray(a, dtype=float)) for a in args]
        return fn(*tensors).detach().numpy()

    return evaluate


def get(name: str) -> Operator:
    try:
        return REGISTRY[name]
    except KeyError:
        from .errors import UserError

        raise UserError(
            f"unknown operator {name!r}; built-in operators: {', '.join(sorted(REGISTRY))}"
        ) from None

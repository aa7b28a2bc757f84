"""The tabular benchmark's space: every u(u(x)) and b(u(x), u(x)) over a fixed operator subset.

``UNARY`` are 15 of PANGAEA's unary operators plus the identity ``x`` (so ``u(x)`` and
``b(x, u(x))`` are in the space too), ``BINARY`` 6 of its binary operators.  Commutative
operators take each unordered pair once; the rest of the duplicates -- ``abs(abs(x))`` is
``abs(x)``, ``max(x, relu(x))`` is ``relu(x)`` -- go by the search's own functional
fingerprint (``screening.function_key``), keeping the first in enumeration order.  Constant,
non-finite and affine functions are screened out exactly as the search screens them.
"""

from __future__ import annotations

UNARY = ("x", "neg", "abs", "square", "cube", "relu", "minzero", "softplus", "exp", "sin",
         "tanh", "atan", "sigmoid", "erf", "gauss", "asinh")
BINARY = ("add", "mul", "max", "min", "sub", "sigmul")
COMMUTATIVE = {"add", "mul", "max", "min"}


def _u(name: str, inner: str) -> str:
    return inner if name == "x" else f"{name}({inner})"


def expressions():
    """Every expression of the space, in a fixed order (before deduplication)."""
    for a in UNARY:
        for b in UNARY:
            yield "u(u(x))", _u(a, _u(b, "x"))
    for op in BINARY:
        for i, a in enumerate(UNARY):
            for j, b in enumerate(UNARY):
                if op in COMMUTATIVE and j < i:
                    continue
                yield "b(u(x),u(x))", f"{op}({_u(a, 'x')}, {_u(b, 'x')})"


def functions(pset="pangaea", max_forward_cost: float = 400.0):
    """[(shape, expression, function_key)] of the space: screened and functionally deduplicated."""
    from gp_activations.activation import Activation
    from gp_activations.search.screening import is_affine, screen

    seen, out = set(), []
    for shape, text in expressions():
        act = Activation.from_string(text, pset)
        result = screen(act, max_forward_cost=max_forward_cost)
        if not result.ok or result.function_key in seen or is_affine(act):
            continue
        seen.add(result.function_key)
        out.append((shape, act.expression, result.function_key))
    return out

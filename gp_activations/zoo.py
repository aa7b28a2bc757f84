"""Known activation functions, each written as a tree over the ``pangaea`` search space.

They seed the search's initial population and serve as baselines.  Every entry is tested
against its torch counterpart (values and gradients).  The parametric ones carry learnable
scalars: ``prelu`` multiplies its negative-side slope 0.25 by p (so the learned slope is
0.25·p), ``swish_beta`` is x·σ(p·x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .activation import Activation
from .errors import UserError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    expression: str
    params: tuple
    reference: Callable  # torch reference implementation, for tests and benchmarks
    description: str


_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772

_ENTRIES = [
    ZooEntry("relu", "relu(x)", (), torch.relu, "max(x, 0)"),
    ZooEntry("leaky_relu", "add(relu(x), mul(0.01, minzero(x)))", (),
             lambda x: F.leaky_relu(x, 0.01), "max(x, 0) + 0.01 min(x, 0)"),
    ZooEntry("elu", "add(relu(x), sub(exp(minzero(x)), one))", (), F.elu,
             "x for x > 0, eˣ - 1 otherwise"),
    ZooEntry("selu",
             f"mul({_SELU_SCALE}, add(relu(x), mul({_SELU_ALPHA}, sub(exp(minzero(x)), one))))",
             (), F.selu, "scaled ELU (Klambauer et al. 2017)"),
    ZooEntry("gelu", "mul(mul(0.5, x), add(one, erf(mul(0.7071067811865476, x))))", (),
             F.gelu, "x Φ(x), exact erf form"),
    ZooEntry("silu", "mul(x, sigmoid(x))", (), F.silu, "x σ(x) (Swish)"),
    ZooEntry("mish", "mul(x, tanh(softplus(x)))", (), F.mish, "x tanh(softplus(x))"),
    ZooEntry("softplus", "softplus(x)", (), F.softplus, "log(1 + eˣ)"),
    ZooEntry("tanh", "tanh(x)", (), torch.tanh, "tanh x"),
    ZooEntry("sigmoid", "sigmoid(x)", (), torch.sigmoid, "σ(x)"),
    ZooEntry("hardswish", "div(mul(x, min(relu(add(x, 3.0)), 6.0)), 6.0)", (), F.hardswish,
             "x ReLU6(x + 3) / 6"),
    ZooEntry("softsign", "div(x, add(one, abs(x)))", (), F.softsign, "x / (1 + |x|)"),
    ZooEntry("prelu", "add(relu(x), mul(0.25, minzero(x)))", (4,),
             lambda x: F.prelu(x, x.new_tensor([0.25])),
             "max(x, 0) + 0.25 p min(x, 0), p learnable (init 1)"),
    ZooEntry("swish_beta", "mul(x, sigmoid(x))", (3,), F.silu, "x σ(p x), p learnable (init 1)"),
]
ENTRIES: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    return list(ENTRIES)


def entry(name: str) -> ZooEntry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise UserError(f"unknown zoo activation {name!r}; known: {', '.join(ENTRIES)}") from None


def get(name: str) -> Activation:
    """The zoo activation ``name`` as an :class:`Activation` over ``pangaea``."""
    e = entry(name)
    return Activation.from_string(e.expression, "pangaea", e.params)


def reference(name: str) -> Callable:
    """The torch implementation the zoo entry is tested against."""
    return entry(name).reference


def resolve(text, primitives="pangaea", params=()) -> Activation:
    """The one "zoo name or expression" resolver of the command line and the library: a zoo
    name (over ``pangaea``, without extra ``params``) gives that entry, with its own learnable
    scalars; any other text is parsed as an expression over ``primitives``.  An
    :class:`Activation` passes through."""
    if isinstance(text, Activation):
        return text
    if not isinstance(text, str):
        raise UserError(f"activation must be an expression or a zoo name, got {type(text).__name__}")
    params = list(params)
    if text.strip() in ENTRIES and not params and primitives in ("pangaea", None):
        return get(text.strip())
    return Activation.from_string(text, primitives or "pangaea", params)

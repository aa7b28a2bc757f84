"""Cheap checks before any training: rejection reasons and the functional fingerprint.

A candidate is rejected -- stored with its reason, never trained -- when on a probe grid its
output or gradient is not finite, when its output is (nearly) constant on [-5, 5], or when its
forward pass is estimated slower than ``max_forward_cost`` ReLUs.  The estimate adds up the
operators' measured costs (``operators.COSTS``) instead of timing the candidate: a timing
depends on the machine's load, and rejections that differ between runs would make executors
and resumed runs disagree.

The **dedup key** is a functional fingerprint: the function's values on fixed probe points
(float64, rounded to 6 significant digits), once with every learnable scalar at 1 and once
with them moved off 1.  Equal keys mean the same parametric family, so
``mul(x, sigmoid(x))`` and ``mul(sigmoid(x), x)`` -- or ``x·σ(p·x)`` written either way --
train once.  The parameter placement enters through the second evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..activation import Activation

# Probe points: a dense grid on [-5, 5], a few far points, and fixed normal samples.
# (arange / 10, not linspace: linspace's middle point is -2.8e-16, and 0 -- where 1/x, log|x|
# and the slope of sqrt|x| blow up -- must be on the grid exactly)
_GRID = torch.arange(-50, 51, dtype=torch.float64) / 10
_FAR = torch.tensor([-1e4, -100.0, -20.0, 20.0, 100.0, 1e4], dtype=torch.float64)
_NORMAL = torch.from_numpy(np.random.default_rng(0).normal(size=64)).clamp(-5, 5)
PROBE = torch.cat([_GRID, _FAR, _NORMAL])
#: factor applied to every learnable scalar for the second half of the fingerprint
_PARAM_FACTOR = 1.37


@dataclass
class Screening:
    ok: bool
    reason: str = ""  # why it was rejected, or the exception of a failing operator
    failed: bool = False  # True when evaluating it raised (a user operator's bug)
    dedup_key: str = ""
    function_key: str = ""  # fingerprint of the plain function (params at 1)


def _round_signif(values: np.ndarray, digits: int = 6) -> list[str]:
    return [f"{v:.{digits}g}" for v in values.tolist()]


def _fingerprint(act: Activation, x: torch.Tensor, values: Optional[dict]) -> str:
    with torch.no_grad():
        y = act(x, values=values).to(torch.float64).numpy()
    y = np.where(y == 0, 0.0, y)  # -0.0 and 0.0 are the same value
    return hashlib.sha1(",".join(_round_signif(y)).encode()).hexdigest()[:20]


def function_key(act: Activation) -> str:
    """Fingerprint of the plain function (every learnable scalar at its initial value)."""
    return _fingerprint(act, PROBE, None)


def dedup_key(act: Activation, plain: Optional[str] = None) -> str:
    """Fingerprint of the parametric family: values with scalars at init and moved off it."""
    plain = plain or function_key(act)
    if not act.slots:
        return plain
    # Equivalent placements may number their scalars differently, so every scalar moves by
    # the same factor: x·σ(p0·x) and σ(p0·x)·x agree whatever the order of the p's.
    moved = {s.name: s.init * _PARAM_FACTOR if s.init else _PARAM_FACTOR - 1.0 for s in act.slots}
    return f"{plain}-{_fingerprint(act, PROBE, moved)}-{len(act.slots)}"


def screen(act: Activation, *, max_forward_cost: float = 400.0,
           constant_tol: float = 1e-3) -> Screening:
    """Decide whether ``act`` is worth training; compute its dedup keys."""
    problem = _shape_problem(act)
    if problem:
        return Screening(False, problem, failed=True)
    try:
        plain = function_key(act)
        keys = (dedup_key(act, plain), plain)
    except Exception as exc:  # noqa: BLE001 -- a user operator's bug fails this candidate only
        return Screening(False, f"{type(exc).__name__}: {exc}".splitlines()[0], failed=True)
    try:
        reason = _rejection_reason(act, max_forward_cost, constant_tol)
    except Exception as exc:  # noqa: BLE001
        return Screening(False, f"{type(exc).__name__}: {exc}".splitlines()[0], failed=True,
                         dedup_key=keys[0], function_key=keys[1])
    return Screening(reason is None, reason or "", dedup_key=keys[0], function_key=keys[1])


_SHAPE_PROBE = PROBE[:48].to(torch.float32).view(2, 3, 8)


def _shape_problem(act: Activation) -> Optional[str]:
    """An operator (a user's, typically) that does not return its input's shape breaks the
    network far from its cause: name it here, before any training."""
    from deap import gp

    for node in act.tree:
        if not isinstance(node, gp.Primitive):
            continue
        op = act.pset.operators[node.name]
        key = (node.name, id(op))
        if key not in _SHAPE_CHECKED:
            _SHAPE_CHECKED[key] = _operator_shape_problem(node.name, op)
        if _SHAPE_CHECKED[key]:
            return _SHAPE_CHECKED[key]
    return None


_SHAPE_CHECKED: dict = {}


def _operator_shape_problem(name: str, op) -> Optional[str]:
    x = _SHAPE_PROBE
    try:
        with torch.no_grad():
            out = op(*([x] * op.arity), params=[x.new_tensor(float(v)) for _, v in op.params])
    except Exception as exc:  # noqa: BLE001 -- reported as this candidate's failure
        first = (str(exc).strip().splitlines() or [""])[0]
        return (f"operator {name!r} raised {type(exc).__name__} for an input of shape "
                f"{tuple(x.shape)}: {first}")
    if not isinstance(out, torch.Tensor):
        return (f"operator {name!r} returned {type(out).__name__}, not a tensor, for an input of "
                f"shape {tuple(x.shape)}")
    if out.shape != x.shape:
        return (f"operator {name!r} returned shape {tuple(out.shape)} for input of shape "
                f"{tuple(x.shape)}; an operator must work elementwise and keep its input's shape")
    return None


def _rejection_reason(act, max_forward_cost, constant_tol) -> Optional[str]:
    # 1. finite output and gradient (float32, as in training), scalars at their initial values
    x = PROBE.to(torch.float32).clone().requires_grad_(True)
    module = act.module()
    y = module(x)
    if not torch.isfinite(y).all():
        bad = x[~torch.isfinite(y)][0].item()
        return f"non-finite output at x={bad:g}"
    # A tree without x (``one``, ``cos(zero)``) has an output that needs no gradient: it is
    # constant, which check 2 reports -- autograd.grad would raise on it.
    if y.requires_grad:
        grads = torch.autograd.grad(y.sum(), [x, *module.parameters()], allow_unused=True)
        for name, g in zip(["x", *module.param_names], grads):
            if g is not None and not torch.isfinite(g).all():
                return f"non-finite gradient w.r.t. {name} on the probe grid"
    # 2. (near-)constant on [-5, 5]
    with torch.no_grad():
        grid = _GRID.to(torch.float32)
        out = module(grid)
        spread = (out.max() - out.min()).item()
    if spread < constant_tol:
        return f"(near-)constant output on [-5, 5] (range {spread:.2e})"
    # 3. forward cost: a deterministic estimate (see operators.COSTS), not a timing
    if max_forward_cost and act.estimated_cost > max_forward_cost:
        return (f"forward pass too slow: estimated {act.estimated_cost:.0f} ReLUs "
                f"(limit {max_forward_cost:g})")
    return None


# ---------------------------------------------------------------------------------------------
# What a finished function *is*: affine (the network becomes linear), or a known baseline
# ---------------------------------------------------------------------------------------------
def _values(act: Activation, x: torch.Tensor, values: Optional[dict]) -> np.ndarray:
    with torch.no_grad():
        return act(x, values=values).to(torch.float64).numpy()


def is_affine(act: Activation, tol: float = 1e-6) -> bool:
    """True when ``act`` is a·x + b on [-5, 5] -- with its scalars at their initial values and
    moved off them -- so that a network using it is a linear (affine) map: ``x``, ``mul(2, x)``,
    ``sub(x, one)``, ``tanh(zero) + x``.  Such a "winner" is no activation function."""
    x = _GRID.to(torch.float64)
    design = np.stack([x.numpy(), np.ones(len(x))], axis=1)
    settings = [None]
    if act.slots:
        settings.append({s.name: s.init * _PARAM_FACTOR if s.init else _PARAM_FACTOR - 1.0
                         for s in act.slots})
    for values in settings:
        try:
            y = _values(act, x, values)
        except Exception:  # noqa: BLE001 -- a failing function is not affine
            return False
        if not np.isfinite(y).all():
            return False
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        if np.abs(design @ coef - y).max() > tol * max(1.0, np.abs(y).max()):
            return False
    return True


_ZOO_KEYS: dict = {}


def equal_baseline(act: Activation) -> Optional[str]:
    """The zoo activation that ``act`` equals as a (parametric) function, e.g. ``"silu"`` for
    ``mul(x, sigmoid(x))`` or ``mul(sigmoid(x), x)``; None when there is none."""
    from .. import zoo

    if not _ZOO_KEYS:
        for name in zoo.names():
            _ZOO_KEYS.setdefault(dedup_key(zoo.get(name)), name)
    try:
        return _ZOO_KEYS.get(dedup_key(act))
    except Exception:  # noqa: BLE001
        return None

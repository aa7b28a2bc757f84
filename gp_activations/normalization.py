"""Output normalisation: a fixed affine rescaling of an activation function so that its output
has mean 0 and variance 1 when its input is standard normal (as AQuaSurF normalises its
candidates, Bingham & Miikkulainen 2023).

    g(x) = (f(x) - shift) / scale,    shift = E[f(Z)],  scale = sqrt(Var[f(Z)]),  Z ~ N(0, 1)

The two constants are computed once, with the function's learnable scalars at their initial
values, and then stay fixed (they are part of the function: exported with it, and the scalars
train through them).  The expectations are integrals against the normal density by the
trapezoid rule on [-10, 10] (131,072 points, float64, evaluated on one thread and summed
by numpy: the same constants for any thread count), within 1e-6 of the exact
values for ReLU (shift 1/sqrt(2 pi) = 0.398942, scale sqrt(1/2 - 1/(2 pi)) = 0.583819), x^2 and
exp (tested against textbook values and scipy's quadrature).  A function has no normalisation
when it is not finite on that grid (the module's value, protections included), is constant
there, or its moments are not stable: they must agree on the grid shifted by half a step and
on [-6, 6] (1/x's protected pole, cosh(cosh(x))'s far tails).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .errors import UserError

__all__ = ["Normalization", "normal_grid", "moments"]

#: The integration grid: the trapezoid rule on [-LIMIT, LIMIT] (the normal density's mass
#: beyond is 1.5e-23) with GRID_POINTS points (an even number: 0 is not a grid point).
LIMIT = 10.0
GRID_POINTS = 2 ** 17
#: The moments must agree, within AGREE (relative to the scale), on the grid, on the grid
#: shifted by half a step, and on [-CORE, CORE]: else they are the grid's artefacts (a
#: protected singularity, 1/x at 0) or come from inputs a network never sees (cosh(cosh(x))).
AGREE = 1e-3
CORE = 6.0
#: A function whose output varies less than this under N(0, 1) is (numerically) constant.
MIN_SCALE = 1e-6


@functools.lru_cache(maxsize=8)  # three grids in use; read-only
def normal_grid(n: int = GRID_POINTS, limit: float = LIMIT, offset: float = 0.0) -> tuple:
    """(points, weights): ``n`` equally spaced points on [-limit, limit] (moved by ``offset``
    steps) and their trapezoid weights against the N(0, 1) density, summing to 1 --
    sum(w f(x)) ~= E[f(Z)]."""
    x = torch.linspace(-limit, limit, n, dtype=torch.float64)
    x = x + offset * (x[1] - x[0])
    w = torch.exp(-0.5 * x * x)
    w[0] *= 0.5
    w[-1] *= 0.5
    return x, w / w.sum()


def _evaluated(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` on one thread: the values -- hence the constants -- the same whatever the
    caller's thread count (vectorised kernels split work by thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return fn(x).to(torch.float64).reshape(-1)
    finally:
        torch.set_num_threads(threads)


def moments(fn: Callable[[torch.Tensor], torch.Tensor], n: int = GRID_POINTS,
            limit: float = LIMIT, offset: float = 0.0) -> tuple:
    """(E[f(Z)], sqrt(Var[f(Z)])) for Z ~ N(0, 1) on :func:`normal_grid`; nan where f is not
    finite there.  Summed by numpy (pairwise, one thread): the same bits for any thread
    count."""
    x, w = normal_grid(n, limit, offset)
    y = _evaluated(fn, x)
    if y.numel() != n or not bool(torch.isfinite(y).all()):
        return math.nan, math.nan
    wn, yn = w.numpy(), y.numpy()
    mean = float(np.sum(wn * yn))
    second = float(np.sum(wn * (yn - mean) ** 2))
    return (mean, math.sqrt(second)) if math.isfinite(second) else (math.nan, math.nan)


def _disagreement(fn, shift: float, scale: float) -> Optional[str]:
    """Why the moments of ``fn`` are not to be trusted (see :data:`AGREE`), or None."""
    for what, kwargs in (("the grid shifted by half a step", {"offset": 0.5}),
                         (f"inputs within ±{CORE:g}", {"limit": CORE})):
        other_shift, other_scale = moments(fn, **kwargs)
        if not (math.isfinite(other_scale) and other_scale > 0
                and abs(other_shift - shift) <= AGREE * scale
                and abs(other_scale / scale - 1) <= AGREE):
            return (f"its moments change with {what} (a singularity the grid cannot resolve, "
                    f"or a variance from inputs beyond |x| = {CORE:g})")
    return None


@dataclass(frozen=True)
class Normalization:
    """The affine map y -> (y - shift) / scale applied to a function's output."""

    shift: float
    scale: float

    def __post_init__(self):
        for name in ("shift", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise UserError(f"normalization: {name} must be a finite number, got {value!r}")
        if self.scale < MIN_SCALE:
            raise UserError(f"normalization: scale must be at least {MIN_SCALE}, got "
                            f"{self.scale!r} (a constant function cannot be normalised)")

    @classmethod
    def of(cls, fn: Callable[[torch.Tensor], torch.Tensor], what: str = "the function",
           n: int = GRID_POINTS) -> "Normalization":
        """The normalisation of ``fn`` (a :class:`UserError` if it has none: not finite under
        N(0, 1) inputs, or constant)."""
        shift, scale = moments(fn, n)
        if not (math.isfinite(shift) and math.isfinite(scale)):
            raise UserError(f"{what} cannot be normalised: its output (or its variance) is not "
                            f"finite for inputs in [-{LIMIT:g}, {LIMIT:g}]")
        if scale < MIN_SCALE:
            raise UserError(f"{what} cannot be normalised: it is constant under standard-normal "
                            f"inputs (std {scale:.3g})")
        why = _disagreement(fn, shift, scale)
        if why:
            raise UserError(f"{what} cannot be normalised: {why}")
        return cls(shift, scale)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.shift) / self.scale

    def to_dict(self) -> dict:
        return {"shift": self.shift, "scale": self.scale}

    @classmethod
    def from_dict(cls, data) -> "Normalization":
        if not isinstance(data, dict) or set(data) != {"shift", "scale"}:
            raise UserError("normalization must be an object with exactly 'shift' and 'scale'")
        return cls(data["shift"], data["scale"])

    def __str__(self) -> str:
        sign = "-" if self.shift >= 0 else "+"
        return f"(f(x) {sign} {abs(self.shift):.6g}) / {self.scale:.6g}"

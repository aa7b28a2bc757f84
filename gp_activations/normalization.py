"""Output normalisation: a fixed affine rescaling of an activation function so that its output
has mean 0 and variance 1 when its input is standard normal (as AQuaSurF normalises its
candidates, Bingham & Miikkulainen 2023).

    g(x) = (f(x) - shift) / scale,    shift = E[f(Z)],  scale = sqrt(Var[f(Z)]),  Z ~ N(0, 1)

The two constants are computed once, with the function's learnable scalars at their initial
values, and then stay fixed (they are part of the function: exported with it, and the scalars
train through them).  The expectations are integrals against the normal density by the
trapezoid rule on [-10, 10] (131,073 points, float64): deterministic, and within 1e-6 of the
exact values for ReLU (shift 1/sqrt(2 pi) = 0.398942, scale sqrt(1/2 - 1/(2 pi)) = 0.583791),
x^2 and exp (tested against textbook values and scipy's quadrature).  A function that is not
finite on that grid -- the module's value, protections included -- has no normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UserError

__all__ = ["Normalization", "normal_grid", "moments"]

#: The integration grid: the trapezoid rule on [-LIMIT, LIMIT] (the normal density's mass
#: beyond is 1.5e-23) with GRID_POINTS points, dx = 1.5e-4.
LIMIT = 10.0
GRID_POINTS = 2 ** 17 + 1
#: A function whose output varies less than this under N(0, 1) is (numerically) constant.
MIN_SCALE = 1e-6


def normal_grid(n: int = GRID_POINTS, limit: float = LIMIT) -> tuple:
    """(points, weights): ``n`` equally spaced points on [-limit, limit] and their trapezoid
    weights against the N(0, 1) density, summing to 1 -- sum(w f(x)) ~= E[f(Z)]."""
    x = torch.linspace(-limit, limit, n, dtype=torch.float64)
    w = torch.exp(-0.5 * x * x)
    w[0] *= 0.5
    w[-1] *= 0.5
    return x, w / w.sum()


def moments(fn: Callable[[torch.Tensor], torch.Tensor], n: int = GRID_POINTS) -> tuple:
    """(E[f(Z)], sqrt(Var[f(Z)])) for Z ~ N(0, 1); nan where f is not finite on the grid."""
    x, w = normal_grid(n)
    with torch.no_grad():
        y = fn(x).to(torch.float64).reshape(-1)
    if y.numel() != n or not bool(torch.isfinite(y).all()):
        return math.nan, math.nan
    mean = float((w * y).sum())
    second = float((w * (y - mean) ** 2).sum())
    return (mean, math.sqrt(second)) if math.isfinite(second) else (math.nan, math.nan)


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
        return f"(f(x) - {self.shift:.6g}) / {self.scale:.6g}"

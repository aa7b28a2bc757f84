"""Cheaper CPU gradients for the torch functions our protected operators use.

On CPU, PyTorch's backward formulas for ``clamp``, ``nan_to_num``, ``maximum``, ``minimum``
and ``where`` build boolean masks and go through ``where`` / ``masked_fill`` -- kernels that
are not vectorised for bool (measured here, 2-vCPU Xeon, torch 2.14, 47.5 k fp32 elements: ``where``
154 us, ``masked_fill`` 167 us, ``isfinite`` 69 us, against 5 us for ``relu`` or a multiply).
Forward plus backward, ``torch.maximum`` cost 17 ReLUs and a protected ``x + y``
(``nan_to_num``) 6; on MNIST-1D's small tensors those masks, not arithmetic, were most of an
evolved activation's cost in a fitness run.

Each function here computes the **same forward value** with the same torch call and the **same
gradient** as autograd (for every non-NaN input), without a boolean kernel:

* ``clamp`` / ``nan_to_num``: one ``aminmax`` of the input in the backward; when no element
  reached a bound (the usual case: protected operators clamp at ±1e15 and beyond) or none was
  infinite, the gradient passes through unchanged; otherwise clamp's mask is built from
  ``sign`` (the bound itself as torch has it: torch 2.14 passes no gradient there, probed at
  import), and a NaN (or, for nan_to_num, infinite) input takes torch's own autograd;
* ``maximum`` / ``minimum``: the weight ``sign(a - b) / 2 + 1/2`` is 1, 1/2 (a tie, torch's
  half-and-half) or 0, so ``g * w`` and ``g - g * w`` are exactly torch's two gradients;
* ``where`` (protected division's denominator): the condition as 0/1 once, ``g * m`` and
  ``g - g * m`` -- torch's two gradients while g is finite (checked; else torch's formula).

The generated activation source stays one text (the export, the fused path and the eager path
run the same statements): :func:`namespace` binds ``torch`` in the eager path to a proxy whose
five functions are these, and delegates everything else to torch.  They step aside (plain
torch) off the CPU, when no gradient is recorded, under torch.compile and under torch.func
transforms (the same values either way); the fused path compiles the plain source.
``GP_ACTIVATIONS_PLAIN_KERNELS=1`` (or ``gp_activations.compiled.COMPILED.set_kernels(False)``,
the switch's owner) binds generated eager code to plain torch instead: the benchmarks'
baseline.

Not here: torch's float32 ``sinh`` / ``cosh`` / ``asinh`` / ``sinc`` / ``i0e`` are scalar loops
on this CPU too (forward plus backward 570-1,050 us per 47.5 k elements against 35 for relu).
Computed in float64 they cost 2-3x less but differ from torch in the last bit, and the
in-process function would no longer equal its torch export exactly; the fused path is their
remedy.
"""

from __future__ import annotations

import math
import types

import torch

__all__ = ["clamp", "nan_to_num", "maximum", "minimum", "where", "namespace", "TORCH",
           "PLAIN_ENV"]


#: set to "1" to run generated eager code on plain torch (a baseline for the benchmarks); read
#: by the switch's owner, :data:`gp_activations.compiled.COMPILED`
PLAIN_ENV = "GP_ACTIVATIONS_PLAIN_KERNELS"


def _recorded(*tensors) -> bool:
    """A CPU autograd graph is being recorded through at least one of ``tensors`` -- by plain
    autograd: torch.compile tracing and torch.func transforms (vmap, grad, jvp) get torch."""
    if not torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    grad = False
    for t in tensors:
        if isinstance(t, torch.Tensor):
            if t.device.type != "cpu":
                return False
            grad = grad or t.requires_grad
    return grad


def _reduce_to(grad: torch.Tensor, shape, dtype) -> torch.Tensor:
    """A broadcast operand's gradient: summed to its shape, in its dtype."""
    if grad.shape != shape:
        grad = grad.sum_to_size(shape)
    return grad.to(dtype) if grad.dtype != dtype else grad


def _extremes(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``t`` as floats -- one kernel and one host sync; (0, 0) when empty."""
    if t.numel() == 0:
        return 0.0, 0.0
    mn, mx = torch.aminmax(t)
    return float(mn), float(mx)


def _rounded(bound, dtype):
    """A clamp bound as torch compares it: rounded to x's dtype (1e15 is not a float32)."""
    return None if bound is None else torch.tensor(bound, dtype=dtype).item()


def _torch_gradient(fn, x, g):
    """torch's own gradient of ``fn`` at ``x`` (the rare inputs the shortcuts leave alone)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(fn(leaf), leaf, g)
    return grad


def _bound_passes_gradient() -> bool:
    """Whether torch's clamp passes the gradient at x == bound (version-dependent; torch 2.14
    does not): probed once."""
    x = torch.zeros(1, requires_grad=True)
    torch.clamp(x, max=0.0).backward(torch.ones(1))
    return bool(x.grad.item() != 0.0)


_AT_BOUND = _bound_passes_gradient()


def _within(x: torch.Tensor, bound: float, above: bool) -> torch.Tensor:
    """1.0 where x is on the kept side of ``bound`` (above it when ``above``; the bound itself
    as torch's clamp has it), else 0.0; x without NaN -- no boolean kernel."""
    d = torch.sign(x - bound) if above else torch.sign(bound - x)  # 1 kept, 0 at bound, -1 not
    return 1.0 - torch.relu(-d) if _AT_BOUND else torch.relu(d)


class _Clamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = _rounded(lo, x.dtype), _rounded(hi, x.dtype)
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.lo, ctx.hi
        mn, mx = _extremes(x)
        if math.isnan(mn) or math.isnan(mx):
            return _torch_gradient(lambda t: torch.clamp(t, lo, hi), x, g), None, None
        mask = None
        if lo is not None and mn <= lo:
            mask = _within(x, lo, above=True)
        if hi is not None and mx >= hi:
            upper = _within(x, hi, above=False)
            mask = upper if mask is None else mask * upper
        return (g if mask is None else g * mask), None, None


class _NanToNum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nan_to_num(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        mn, mx = _extremes(x)
        if math.isfinite(mn) and math.isfinite(mx):
            return g
        return _torch_gradient(torch.nan_to_num, x, g)  # the rare overflowed input


class _Maximum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, sign):
        ctx.save_for_backward(a, b)
        ctx.sign = sign
        return torch.maximum(a, b) if sign > 0 else torch.minimum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        # 1 where a wins, 1/2 at a tie, 0 where b wins (exact in every float dtype)
        w = torch.sign(a - b) if ctx.sign > 0 else torch.sign(b - a)
        w = w * 0.5 + 0.5
        ga = g * w
        gb = g - ga
        need_a, need_b, _ = ctx.needs_input_grad
        return ((_reduce_to(ga, a.shape, a.dtype) if need_a else None),
                (_reduce_to(gb, b.shape, b.dtype) if need_b else None), None)


class _Where(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        ctx.shapes = (a.shape, a.dtype), (b.shape, b.dtype)
        return torch.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        mn, mx = _extremes(g)
        if not (math.isfinite(mn) and math.isfinite(mx)):  # g * 0 would be NaN: torch's formula
            zero = torch.zeros((), dtype=g.dtype)
            ga, gb = torch.where(cond, g, zero), torch.where(cond, zero, g)
        else:
            ga = g * cond.to(g.dtype)
            gb = g - ga  # exactly g where cond is false, 0 where true
        (sa, da), (sb, db) = ctx.shapes
        need_a, need_b = ctx.needs_input_grad[1:]
        return (None, _reduce_to(ga, sa, da) if need_a else None,
                _reduce_to(gb, sb, db) if need_b else None)


def where(cond, a, b):
    if (not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor))
            or getattr(cond, "dtype", None) is not torch.bool  # uint8: nonzero true, not a weight
            or not _recorded(a, b)):
        return torch.where(cond, a, b)
    return _Where.apply(cond, a, b)


def clamp(x, min=None, max=None):  # noqa: A002 -- torch.clamp's signature
    if not _recorded(x) or isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor):
        return torch.clamp(x, min, max)
    return _Clamp.apply(x, min, max)


def nan_to_num(x, *args, **kwargs):
    if args or kwargs or not _recorded(x):
        return torch.nan_to_num(x, *args, **kwargs)
    return _NanToNum.apply(x)


def _binary(a, b, sign):
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or not _recorded(a, b):
        return torch.maximum(a, b) if sign > 0 else torch.minimum(a, b)
    return _Maximum.apply(a, b, sign)


def maximum(a, b):
    return _binary(a, b, 1)


def minimum(a, b):
    return _binary(a, b, -1)


class _CheapTorch(types.ModuleType):
    """``torch`` for generated eager code: five functions replaced, the rest delegated."""

    clamp = staticmethod(clamp)
    nan_to_num = staticmethod(nan_to_num)
    maximum = staticmethod(maximum)
    minimum = staticmethod(minimum)
    where = staticmethod(where)

    def __getattr__(self, name):  # only for names not yet looked up: kept as attributes
        value = getattr(torch, name)
        setattr(self, name, value)
        return value


TORCH = _CheapTorch("torch")


def namespace() -> dict:
    """Globals for the eager execution of generated source (see the module docstring)."""
    return {"torch": TORCH}

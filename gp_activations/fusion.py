"""Fusing an activation: ``torch.compile`` of the generated function, made to pay in training.

What was found (``benchmarks/trainer_throughput.py`` has the numbers and the method; ResNet-20,
CPU, bf16 autocast, channels_last, one thread):

1. **Layout.**  Inductor gives the gradient of a compiled function's *input* contiguous (NCHW)
   strides whatever the input's own layout (its backward kernel even transposes tiles to write
   them).  Every activation sits after a BatchNorm, so a channels_last network handed
   ``native_batch_norm_backward`` an NCHW gradient for a channels_last input, and that
   mixed-layout backward ran **7x slower** (664 vs 91 ms per 3 steps) -- most of the fused
   max(mish, silu)'s 3.6 ReLU steps.  Not recompilations, not graph breaks, not scalar loops:
   the kernels are one vectorised AVX-512 pass, with one recompile (static -> dynamic shapes).
   Fix: :func:`call_in_memory_order` runs the elementwise function on ``x``'s storage in
   storage order (a 1-D view, or ``(outer, C, inner)`` for per-channel scalars), so the result
   and the gradient keep ``x``'s layout; every site and batch size then shares one
   ``dynamic=True`` graph (no recompiles).
2. **Recomputation.**  AOTAutograd's min-cut partitioner saves only ``x`` and recomputes every
   pointwise op in the backward -- right on a GPU, where pointwise ops are memory-bound, wrong
   on a CPU, where ``exp``/``log1p``/``tanh`` are compute-bound SLEEF calls: max(mish, silu)
   evaluated 8 transcendentals per element and step instead of 4.  :class:`SaveTranscendentals`
   marks them must-save in CPU graphs (the backward then has none); on CUDA the default
   partitioner is kept.
3. **What is left** is the arithmetic itself: max(mish, silu) evaluates four transcendentals
   per element in the forward, ~23 M elements per ResNet-20 step, which costs about half a ReLU
   step on this CPU whatever the fusion.

Fusion is decided per candidate by :func:`decide` (``fused = "auto"``): fuse when the time a
cost model says the fused kernel saves over the whole training exceeds the compile time --
cold, warm (the function was compiled into this cache before: inductor's on-disk caches make
it ~10x cheaper), plus dynamo's one-time start in a process that has compiled nothing yet.  A
function inductor cannot compile runs eager, with one log line saying why.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

log = logging.getLogger("gp_activations.fusion")

#: marker subfolder of the kernel cache: one empty file per function compiled into it
_INDEX = "gp-activations-fused"
#: a process that compiled nothing yet pays dynamo/inductor's start-up on its first compile
_STARTED = False
#: compile time of each function key in this process (seconds), for the training records
COMPILE_SECONDS: dict = {}


# ---------------------------------------------------------------------------------------------
# Layout: the compiled function runs on x's memory in storage order
# ---------------------------------------------------------------------------------------------
def call_in_memory_order(fn, x: torch.Tensor, params: Sequence[torch.Tensor],
                         per_channel: bool) -> torch.Tensor:
    """``fn(x, *params)`` for an elementwise ``fn``, called on a contiguous view of ``x``'s
    storage so that the output and the gradient keep ``x``'s layout (channels_last stays
    channels_last).  Per-channel ``params`` have shape ``(C,)`` for channel dimension 1.
    Tensors that are no permutation of a dense layout (a strided slice) take the direct call."""
    params = list(params)
    if x.dim() < 2:
        return fn(x, *params)
    order = None if x.is_contiguous() else sorted(range(x.dim()), key=lambda d: -x.stride(d))
    xv = x if order is None else x.permute(order)
    if not xv.is_contiguous():
        if per_channel:
            params = [p.view((-1,) + (1,) * (x.dim() - 2)) for p in params]
        return fn(x, *params)
    if per_channel:
        c = 1 if order is None else order.index(1)
        y = fn(xv.reshape(-1, xv.shape[c], math.prod(xv.shape[c + 1:])),
               *[p.view(-1, 1) for p in params])
    else:
        y = fn(xv.reshape(-1), *params)
    y = y.view(xv.shape)
    return y if order is None else y.permute([order.index(d) for d in range(x.dim())])


# ---------------------------------------------------------------------------------------------
# Partitioning: on the CPU, save what is expensive to recompute
# ---------------------------------------------------------------------------------------------
def _partitioner():
    # a module of its own, imported when the first function compiles (inductor's import is
    # heavy), whose class inductor can pickle into its cache key
    from ._partition import SaveTranscendentals

    return SaveTranscendentals()


# ---------------------------------------------------------------------------------------------
# Compilation, with an eager fallback
# ---------------------------------------------------------------------------------------------
class FusedFunction:
    """A compiled elementwise function that falls back to its eager form, once and for good,
    when inductor cannot compile it (one log line says why).  An error the eager form raises
    too is the function's own and propagates."""

    def __init__(self, eager, key: str, label: str = "activation"):
        self.eager = eager
        self.key = key
        self.label = label
        self.fallback: Optional[str] = None  # why it runs eager, once it does
        self._compiled = self._compile()
        self._first = True

    def _compile(self):
        return torch.compile(self.eager, fullgraph=True, dynamic=True,
                             options={"custom_partitioner_fn": _partitioner()})

    def __call__(self, *args):
        if self.fallback is not None:
            return self.eager(*args)
        if not self._first:
            return self._compiled(*args)
        global _STARTED
        started = time.perf_counter()
        try:
            out = self._first_call(args)
        except Exception as exc:  # noqa: BLE001 -- inductor/dynamo failures have many types
            out = self.eager(*args)  # raises if the function itself is at fault
            self.fallback = _one_line(exc)
            log.warning("fused %s could not be compiled, running eager: %s", self.label,
                        self.fallback)
            return out
        self._first = False
        _STARTED = True
        COMPILE_SECONDS[self.key] = time.perf_counter() - started
        _mark_compiled(self.key)
        return out

    def _first_call(self, args):
        """Compile and run.  A backend failure (not a tracing one) is retried once in a fresh
        kernel cache: where that cures it (a corrupt cache entry: "file too short", unpickling
        errors) it is one warning and the process keeps the fresh cache; where it does not,
        the old cache is kept and the failure is the function's."""
        from torch._dynamo import exc as dynamo_exc

        try:
            return self._compiled(*args)
        except (dynamo_exc.Unsupported, dynamo_exc.UserError):
            raise  # dynamo cannot trace the function: no cache is involved
        except Exception as exc:  # noqa: BLE001
            old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            if not old:
                raise
            fresh = tempfile.mkdtemp(prefix="gp_activations_inductor_")
            self._switch_cache(fresh)
            try:
                out = self._compiled(*args)
            except Exception:  # noqa: BLE001
                self._switch_cache(old)
                raise exc from None
            warnings.warn(f"kernel cache {old} is unusable ({_one_line(exc)}); using a fresh one "
                          f"in {fresh}", RuntimeWarning, stacklevel=3)
            return out

    def _switch_cache(self, directory: str) -> None:
        from torch._inductor.utils import clear_caches

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
        clear_caches()  # inductor's in-memory caches of paths in the previous directory
        torch._dynamo.reset()
        self._compiled = self._compile()


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}"


def function_key(source: str) -> str:
    """A short stable name of a generated function (its source text)."""
    return hashlib.sha256(source.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# The kernel cache
# ---------------------------------------------------------------------------------------------
def cache_root() -> str:
    """The kernel cache in use: ``TORCHINDUCTOR_CACHE_DIR`` where set, else
    ``$XDG_CACHE_HOME/gp-activations/inductor`` (``~/.cache/...``), shared by every run."""
    directory = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if directory:
        return directory
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gp-activations", "inductor")


def use_cache_dir(directory: Optional[str] = None) -> str:
    """Make ``directory`` (default :func:`cache_root`) inductor's on-disk kernel cache
    (``TORCHINDUCTOR_CACHE_DIR``) and return it.  An unwritable or unusable directory gives a
    warning and a fresh one, never a failed candidate."""
    directory = directory or cache_root()
    try:
        os.makedirs(os.path.join(directory, _INDEX), exist_ok=True)
        probe = os.path.join(directory, _INDEX, f".probe-{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        fresh = tempfile.mkdtemp(prefix="gp_activations_inductor_")
        warnings.warn(f"kernel cache {directory} is not usable ({exc.strerror or exc}); using a "
                      f"fresh one in {fresh}", RuntimeWarning, stacklevel=2)
        os.makedirs(os.path.join(fresh, _INDEX), exist_ok=True)
        directory = fresh
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    return str(directory)


def _mark_compiled(key: str) -> None:
    try:
        os.makedirs(os.path.join(cache_root(), _INDEX), exist_ok=True)
        open(os.path.join(cache_root(), _INDEX, key), "w").close()
    except OSError:  # a read-only cache still serves; the next decision just says "cold"
        pass


def cache_used() -> bool:
    """Whether anything was compiled into the current kernel cache (its start-up is cheaper)."""
    try:
        return any(os.scandir(os.path.join(cache_root(), _INDEX)))
    except OSError:
        return False


def compiled_before(key: str) -> bool:
    """Whether this function was compiled into the current kernel cache (a warm compile)."""
    return os.path.exists(os.path.join(cache_root(), _INDEX, key))


# ---------------------------------------------------------------------------------------------
# The cost model: fuse where it pays
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostModel:
    """Per-call forward+backward time of an activation site on ``n`` elements, eager vs fused,
    and what compiling costs; seconds.  An eager op costs a fixed ``eager_per_op`` plus, per
    element, a memory pass (``eager_per_element``) and its arithmetic (``per_cost_unit`` times
    the function's :attr:`~gp_activations.Activation.estimated_cost`, in ReLU units: a
    transcendental is dearer than a multiply); the fused call costs ``fused_per_call`` plus
    ``fused_fraction`` of that per-element work.  CPU constants fitted to
    ``benchmarks/activation_overhead.py --sizes`` on this project's 2-vCPU machine (one thread;
    the fused time within 30 % from 4 k to 1 M elements, the eager one within 2x: cache-resident
    tensors run faster per element than the model says, so it can overrate fusing mid-sized
    cheap functions); CUDA constants are estimates (launch latency, HBM bandwidth), not measured
    here."""

    eager_per_op: float  # fixed cost of one eager op (dispatch + autograd), fwd+bwd
    eager_per_element: float  # one eager op's memory passes over one element, fwd+bwd
    per_cost_unit: float  # arithmetic per element and ReLU unit of estimated cost, fwd+bwd
    fused_per_call: float  # fixed cost of one compiled call (guards, AOT wrapper), fwd+bwd
    fused_fraction: float  # fused per-element time / eager per-element time
    compile_cold: float  # a function new to the kernel cache
    compile_warm: float  # one compiled into the cache before
    compile_start: float  # dynamo/inductor's first compile in a process
    compile_start_new_cache: float  # ... into a cache nothing was compiled into yet

    def _per_element(self, ops: int, cost: float) -> float:
        return ops * self.eager_per_element + cost * self.per_cost_unit

    def eager(self, ops: int, cost: float, n: float) -> float:
        return ops * self.eager_per_op + n * self._per_element(ops, cost)

    def fused(self, ops: int, cost: float, n: float) -> float:
        return self.fused_per_call + self.fused_fraction * n * self._per_element(ops, cost)

    def saving(self, ops: int, cost: float, sizes: Sequence[float], steps: float) -> float:
        """Seconds the fused function saves over ``steps`` training steps, ``sizes`` being the
        element counts of each site's call in one step."""
        return steps * sum(self.eager(ops, cost, n) - self.fused(ops, cost, n) for n in sizes)

    def compile_cost(self, warm: bool, started: bool, cache_used: bool) -> float:
        start = 0.0 if started else (self.compile_start if cache_used else self.compile_start_new_cache)
        return (self.compile_warm if warm else self.compile_cold) + start


COST_MODELS = {
    "cpu": CostModel(eager_per_op=12e-6, eager_per_element=0.8e-9, per_cost_unit=0.2e-9,
                     fused_per_call=150e-6, fused_fraction=0.45, compile_cold=1.0,
                     compile_warm=0.1, compile_start=2.0, compile_start_new_cache=10.0),
    "cuda": CostModel(eager_per_op=15e-6, eager_per_element=3e-12, per_cost_unit=0.0,
                      fused_per_call=40e-6, fused_fraction=0.3, compile_cold=3.0,
                      compile_warm=0.3, compile_start=3.0, compile_start_new_cache=15.0),
}


@dataclass(frozen=True)
class Decision:
    fuse: bool
    reason: str
    saving: float = 0.0  # predicted seconds saved over the training
    compile: float = 0.0  # predicted compile seconds


def decide(activation, sizes: Sequence[float], steps: float, device: str = "cpu") -> Decision:
    """Whether fusing ``activation`` pays in a training of ``steps`` steps whose activation
    sites see ``sizes`` elements per step: the predicted saving must exceed the compile time."""
    program = activation.program
    if not program.worth_fusing:
        return Decision(False, "a single built-in operator: eager is one kernel already")
    model = COST_MODELS.get(torch.device(device).type, COST_MODELS["cpu"])
    key = function_key(program.source)
    warm = compiled_before(key) or key in COMPILE_SECONDS
    saving = model.saving(program.kernel_count, activation.estimated_cost, sizes, steps)
    cost = 0.0 if key in COMPILE_SECONDS else model.compile_cost(warm, _STARTED, cache_used())
    fuse = saving > cost
    how = "compiled in this process" if key in COMPILE_SECONDS else ("warm" if warm else "cold")
    return Decision(fuse, f"predicted saving {saving:.2f} s vs compile {cost:.2f} s ({how})",
                    saving, cost)

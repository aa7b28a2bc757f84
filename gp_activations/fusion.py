"""Fusing an activation: ``torch.compile`` of the generated function, made to pay in training.

What was found (``benchmarks/trainer_throughput.py`` has the numbers and the method; ResNet-20,
CPU, bf16 autocast, channels_last, one thread):

1. **Layout.**  Inductor gives the gradient of a compiled function's *input* contiguous (NCHW)
   strides whatever the input's own layout (its backward kernel even transposes tiles to write
   them).  Every activation sits after a BatchNorm, so a channels_last network handed
   ``native_batch_norm_backward`` an NCHW gradient for a channels_last input, and that
   mixed-layout backward ran **7x slower** (664 vs 91 ms per 3 steps) -- most of the fused
   max(mish, silu)'s 3.6 ReLU steps.  Not recompilations (there was one, static -> dynamic
   shapes), not graph breaks, not scalar loops: the kernels were one vectorised AVX-512 pass.
   Fix: :func:`call_in_memory_order` runs the elementwise function on ``x``'s storage in
   storage order (a 1-D view, or ``(outer, C, inner)`` for per-channel scalars), so the result
   and the gradient keep ``x``'s layout, and compiles with ``dynamic=True``: no recompiles
   across sites and batch sizes (one graph per view rank and grad mode).
2. **Recomputation.**  AOTAutograd's min-cut partitioner saves only ``x`` and recomputes every
   pointwise op in the backward -- right on a GPU, where pointwise ops are memory-bound, wrong
   on a CPU, where ``exp``/``log1p``/``tanh`` are compute-bound SLEEF calls: max(mish, silu)
   evaluated 8 transcendentals per element and step instead of 4.  The partitioner in
   :mod:`gp_activations._partition` marks them must-save in CPU graphs (the backward then has
   none); on CUDA the default partitioner is kept.
3. **The arithmetic.**  max(mish, silu) evaluated four transcendentals per element in the
   forward, ~23 M elements per ResNet-20 step: about half a ReLU step on this CPU.  The source
   torch.compile traces (:func:`codegen.generate` with ``fused=True``) now shares one
   ``exp(min(u, 30))`` across tanh∘softplus, sigmoid and softplus of the same operand: one
   transcendental, 1.69-1.77 -> 1.28-1.32 ReLU steps.

Fusion is decided per candidate by :func:`decide` (``fused = "auto"``): fuse when the time a
cost model says the fused kernel saves over the whole training exceeds a compile's cost.  The
decision depends on the function, the sites' tensor sizes, the steps and the device only --
never on what a process or the kernel cache has seen -- so a candidate trains the same way,
and gets the same fitness, on every executor, worker and resume.  Compiled kernels are kept
in an on-disk cache shared by every process and run (:func:`cache_root`), which makes a
function compiled before ~10x cheaper to compile again.  A function inductor cannot compile
runs eager, with one log line saying why; a corrupt or unwritable cache is a warning and a
fresh one.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

log = logging.getLogger("gp_activations.fusion")


# ---------------------------------------------------------------------------------------------
# Layout: the compiled function runs on x's memory in storage order
# ---------------------------------------------------------------------------------------------
def call_in_memory_order(fn, x: torch.Tensor, params: Sequence[torch.Tensor],
                         per_channel: bool) -> Optional[torch.Tensor]:
    """``fn(x, *params)`` for an elementwise ``fn``, called on a contiguous view of ``x``'s
    storage so that the output and the gradient keep ``x``'s layout (channels_last stays
    channels_last).  Per-channel ``params`` have shape ``(C,)`` for channel dimension 1.
    None where ``x`` has no such view (under 2-D, empty, or no permutation of a dense layout,
    e.g. a strided slice): the caller makes the direct call."""
    if x.dim() < 2 or x.numel() == 0:
        return None
    order = None if x.is_contiguous() else sorted(range(x.dim()), key=lambda d: -x.stride(d))
    xv = x if order is None else x.permute(order)
    if not xv.is_contiguous():
        return None
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
    # a module of its own, imported when the first fused function is made (inductor's import
    # is heavy), whose class inductor can pickle into its cache key
    from ._partition import SaveTranscendentals

    return SaveTranscendentals()


# ---------------------------------------------------------------------------------------------
# Compilation, with an eager fallback
# ---------------------------------------------------------------------------------------------
class FusedFunction:
    """A compiled elementwise function.  Any call that fails inside dynamo/inductor -- the
    first forward, a later graph (no-grad evaluation, another view rank) -- falls back to the
    eager form, once and for good, with one log line; an error the eager form raises too is
    the function's own and propagates.  (Backward graphs compile inside autograd, out of this
    call's reach: the trainer compiles them before the first step and calls :meth:`give_up`
    where that fails.)  A failure from a corrupt kernel cache is retried once in a fresh cache
    (a warning).  ``compile_seconds``: the time of the calls that compiled a graph, in this
    process (all callers together); each such time also goes to ``on_compile(seconds)``, called
    in the caller's thread (:meth:`gp_activations.compiled.CompileState.charge`: the clock of
    the training that made the call).  ``traced``: the function torch.compile traces;
    ``eager``: what runs instead (the same values; default ``traced``)."""

    def __init__(self, traced, eager=None, on_compile: Optional[Callable[[float], None]] = None):
        self.traced = traced
        self.eager = eager if eager is not None else traced
        self.fallback: Optional[str] = None  # why it runs eager, once it does
        self.compile_seconds = 0.0
        self._on_compile = on_compile
        self._compiled = self._compile()
        from torch._dynamo.utils import counters

        # dynamo's graph counter: a call that moves it compiled (or loaded from cache) a graph
        self._stats = counters["stats"]

    def _compile(self):
        return torch.compile(self.traced, fullgraph=True, dynamic=True,
                             options={"custom_partitioner_fn": _partitioner()})

    def __call__(self, *args):
        if self.fallback is not None:
            return self.eager(*args)
        graphs = self._stats["unique_graphs"]
        started = time.perf_counter()
        try:
            out = self._compiled(*args)
        except Exception as exc:  # noqa: BLE001 -- dynamo/inductor failures have many types
            out = self._recover(exc, args)
        if self._stats["unique_graphs"] != graphs:  # this call compiled (or loaded) a graph
            self.add_compile_seconds(time.perf_counter() - started)
        return out

    def add_compile_seconds(self, seconds: float) -> None:
        """Count ``seconds`` of compiling (a call's, or backward graphs compiled inside
        autograd, which the trainer times) to this function and to ``on_compile``."""
        self.compile_seconds += seconds
        if self._on_compile is not None:
            self._on_compile(seconds)

    def _recover(self, exc: BaseException, args):
        if _from_the_cache(exc):
            old, fresh = cache_root(), tempfile.mkdtemp(prefix="gp_activations_inductor_")
            self._switch_cache(fresh)
            try:
                out = self._compiled(*args)
            except Exception:  # noqa: BLE001 -- not the cache after all: eager below
                pass
            else:
                warnings.warn(f"kernel cache {old} is unusable ({_one_line(exc)}); using a "
                              f"fresh one in {fresh}", RuntimeWarning, stacklevel=3)
                return out
        out = self.eager(*args)  # raises if the function itself is at fault
        self.give_up(exc)
        return out

    def give_up(self, exc: BaseException) -> None:
        """Run eager from now on, saying why once."""
        self.fallback = _one_line(exc)
        log.warning("fused activation could not be compiled, running eager: %s", self.fallback)

    def _switch_cache(self, directory: str) -> None:
        from torch._inductor.utils import clear_caches

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
        clear_caches()  # inductor's in-memory caches of paths in the previous directory
        torch._dynamo.reset()
        self._compiled = self._compile()


def _from_the_cache(exc: BaseException) -> bool:
    """Whether a compile failure comes from reading the kernel cache (a truncated ``.so``, an
    unreadable pickle, a garbled generated module), judging by the exceptions in its chain:
    their types, a path in the cache named in the message, or a frame in a cached file."""
    import pickle
    import traceback

    root = os.path.realpath(cache_root())
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (ImportError, EOFError, pickle.UnpicklingError)) or root in str(exc):
            return True
        if any(os.path.realpath(f.filename).startswith(root + os.sep)
               for f in traceback.extract_tb(exc.__traceback__)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}"


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
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".gp-activations-probe-{os.getpid()}")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        fresh = tempfile.mkdtemp(prefix="gp_activations_inductor_")
        warnings.warn(f"kernel cache {directory} is not usable ({exc.strerror or exc}); using a "
                      f"fresh one in {fresh}", RuntimeWarning, stacklevel=2)
        directory = fresh
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    return str(directory)


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
    #: what a compile is charged: a new function (~1 s on this CPU) plus dynamo/inductor's
    #: start in a process (~2 s; ~10 s the first time into an empty cache, not charged).  A
    #: function compiled before compiles ~10x faster from the cache; the decision ignores it
    #: on purpose, so that it never depends on what a process or the cache has seen.
    compile_cost: float

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


COST_MODELS = {
    "cpu": CostModel(eager_per_op=12e-6, eager_per_element=0.8e-9, per_cost_unit=0.2e-9,
                     fused_per_call=150e-6, fused_fraction=0.45, compile_cost=3.0),
    "cuda": CostModel(eager_per_op=15e-6, eager_per_element=3e-12, per_cost_unit=0.0,
                      fused_per_call=40e-6, fused_fraction=0.3, compile_cost=6.0),
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
    saving = model.saving(program.kernel_count, activation.estimated_cost, sizes, steps)
    return Decision(saving > model.compile_cost,
                    f"predicted saving {saving:.2f} s vs compile {model.compile_cost:.2f} s",
                    saving, model.compile_cost)

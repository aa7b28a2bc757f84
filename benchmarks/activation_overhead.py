"""Cost of our compiled activations against the same functions hand-written in eager torch.

For ReLU, SiLU and three evolved-style expressions (4-8 operators), on a (128, 64, 32, 32)
float32 tensor, measures in one run:

* forward+backward time: hand-written eager torch, our compiled module (eager), our fused
  module (torch.compile);
* bytes saved for backward (via saved-tensor hooks);
* torch.compile time per function, cold (empty inductor cache) and warm (cache on disk,
  in-memory caches reset).

Targets: compiled <= 1.05x hand-written; fused <= 0.5x hand-written.  (On CPUs the fused
module saves its transcendentals' results for backward instead of recomputing them -- more
memory, half the SLEEF calls: gp_activations/fusion.py, finding 2; on GPUs it saves only x.)

``--sizes``: the data behind the CPU cost model of ``fused = "auto"`` -- forward+backward per
call, eager (our compiled module) vs fused, over element counts from a tiny MLP layer to a
ResNet stage, each function with one learnable scalar, next to what the model predicts.

    python benchmarks/activation_overhead.py [--reps 10] [--shape 128,64,32,32]
    python benchmarks/activation_overhead.py --sizes
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from gp_activations import Activation
from gp_activations.compiled import COMPILED

CASES = [
    # name, expression over pangaea, hand-written eager torch
    ("relu", "relu(x)", lambda x: torch.relu(x)),
    ("silu", "mul(x, sigmoid(x))", lambda x: x * torch.sigmoid(x)),
    ("swish+sin (5 ops)", "add(mul(x, sigmoid(x)), mul(0.1, sin(x)))",
     lambda x: x * torch.sigmoid(x) + 0.1 * torch.sin(x)),
    ("max(mish,silu) (6 ops)", "max(mul(x, tanh(softplus(x))), mul(x, sigmoid(x)))",
     lambda x: torch.maximum(x * torch.tanh(F.softplus(x)), x * torch.sigmoid(x))),
    ("relu-|x|gauss (7 ops)", "sub(relu(x), mul(abs(x), gauss(x)))",
     lambda x: torch.relu(x) - torch.abs(x) * torch.exp(-(x * x))),
]


def fwd_bwd_ms(fns, x, grad, reps: int) -> list[float]:
    """Median forward+backward ms of each function, measured interleaved (A B C A B C ...) so
    that drifts in machine load and memory state hit all of them alike."""
    for fn in fns:
        for _ in range(3):  # warm-up (and compilation, for fused modules)
            torch.autograd.backward(fn(x), grad)
            x.grad = None
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            y = fn(x)
            torch.autograd.backward(y, grad)
            times[i].append(time.perf_counter() - t0)
            x.grad = None
            del y
    return [1000 * statistics.median(t) for t in times]


def saved_bytes(fn, x) -> int:
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(seen.values())


def compile_seconds(expression: str, x) -> float:
    COMPILED.forget_fused()
    t0 = time.perf_counter()
    module = Activation.from_string(expression).module(fused=True)
    y = module(x)
    y.sum().backward()
    x.grad = None
    return time.perf_counter() - t0


def size_sweep(reps: int) -> None:
    """Measured eager/fused per-call time over sizes, beside the cost model's prediction."""
    from gp_activations.fusion import COST_MODELS

    model = COST_MODELS["cpu"]
    print(f"forward+backward per call, us (measured / cost model), {torch.get_num_threads()} "
          f"thread(s); one learnable scalar each")
    print(f"{'function':24s} {'elements':>9s} {'eager':>15s} {'fused':>15s} {'fused/eager':>12s}")
    for name, expression, _hand in CASES[1:]:
        act = Activation.from_string(expression, params=[0])
        ops, cost = act.program.kernel_count, act.estimated_cost
        eager, fused = act.module(), act.module(fused=True)
        for n in (4096, 32768, 131072, 1048576):
            x = torch.randn(n // 256, 16, 16, requires_grad=True)
            g = torch.randn_like(x)
            n_reps = reps * (20 if n < 200_000 else 2)
            te, tf = fwd_bwd_ms([eager, fused], x, g, n_reps)
            pe, pf = 1e3 * model.eager(ops, cost, n), 1e3 * model.fused(ops, cost, n)
            print(f"{name:24s} {n:9d} {1e3 * te:6.0f} / {1e3 * pe:6.0f} {1e3 * tf:6.0f} / "
                  f"{1e3 * pf:6.0f} {tf / te:5.2f} / {pf / pe:4.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--shape", default="128,64,32,32")
    parser.add_argument("--sizes", action="store_true", help="the cost model's data (see above)")
    args = parser.parse_args(argv)
    if args.sizes:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gp_act_inductor_")
        torch.set_num_threads(1)
        size_sweep(args.reps)
        return 0
    shape = tuple(int(s) for s in args.shape.split(","))
    cache = tempfile.mkdtemp(prefix="gp_act_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold start: an empty kernel cache

    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    small = torch.randn(64, 8, 4, 4, requires_grad=True)
    mb = x.numel() * x.element_size() / 2**20
    print(f"input {shape} float32 ({mb:.1f} MiB), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {args.reps}")

    from torch import _dynamo

    first_compile = None
    rows = []
    for name, expression, hand in CASES:
        act = Activation.from_string(expression)
        compiled = act.module()
        t_cold = compile_seconds(expression, small)
        if first_compile is None and act.program.worth_fusing:
            first_compile = t_cold
        _dynamo.reset()
        t_warm = compile_seconds(expression, small)
        fused = act.module(fused=True)
        t_hand, t_comp, t_fused = fwd_bwd_ms([hand, compiled, fused], x, grad, args.reps)
        rows.append((name, act.operator_count, t_hand, t_comp, t_fused,
                     saved_bytes(hand, x), saved_bytes(compiled, x), saved_bytes(fused, x),
                     fused.fused, t_cold, t_warm))
        print(f"  measured {name}", file=sys.stderr)

    x_bytes = x.numel() * x.element_size()
    print()
    print(f"{'function':24s} {'ops':>3s} {'hand ms':>8s} {'compiled':>15s} {'fused':>15s} "
          f"{'saved MiB hand/comp/fused':>26s} {'compile cold/warm s':>20s}")
    for (name, ops, th, tc, tf, sh, sc, sf, is_fused, cold, warm) in rows:
        fused_note = "" if is_fused else " (eager)"
        print(f"{name:24s} {ops:3d} {th:8.1f} {tc:7.1f} ({tc / th:4.2f}x) {tf:7.1f} ({tf / th:4.2f}x)"
              f" {sh / 2**20:8.0f}/{sc / 2**20:5.0f}/{sf / 2**20:5.0f}{'*' if sf <= x_bytes else ' '}"
              f"      {cold:6.2f} / {warm:5.2f}{fused_note}")
    print("\n* = the fused module saves only x for backward.  The first cold compile includes "
          f"torch.compile's one-time start ({first_compile:.1f} s).")
    print("ReLU stays eager when fused (a single built-in op; compiled ReLU is slower).\n"
          "Targets: compiled <= 1.05x hand-written, fused <= 0.5x and saving only x.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

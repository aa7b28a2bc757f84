"""What each built-in operator costs in an eager training step, on plain torch and on
``gp_activations.kernels``, measured side by side.

For every operator of the built-in registry (protected form, and its fast form where it has
one): forward + backward time on one activation site of the cnn1d fitness network (100 x 25 x
19 fp32 = 47.5 k elements, one thread), with the generated code's ``torch`` bound to plain
torch and to the kernels' proxy, relative to ReLU.  The kernels replace ``clamp``,
``nan_to_num``, ``maximum``, ``minimum`` and ``where`` by versions with the same values and
gradients whose backward passes avoid boolean kernels (``where`` / ``masked_fill``: 150-170 us here).

    python benchmarks/eager_kernels.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gp_activations import kernels
from gp_activations.operators import REGISTRY

SHAPE = (100, 25, 19)


def per_call(fn, repeat: int) -> float:
    """Seconds per forward + backward of ``fn(x, y)`` (both operands need gradients)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).requires_grad_()
    y = torch.randn(SHAPE, generator=g).requires_grad_()
    w = torch.ones(SHAPE)
    for _ in range(20):
        fn(x, y).backward(w)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(x, y).backward(w)
    return (time.perf_counter() - t0) / repeat


def compiled(source: str, torch_module):
    # our own operator templates, not user text
    return eval(f"lambda x, y: {source}", {"torch": torch_module})  # noqa: S307


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    relu = per_call(lambda x, y: torch.relu(x), args.repeat)
    print(f"torch {torch.__version__}, 1 thread; one cnn1d site {SHAPE}, forward + backward; "
          f"ReLU {relu * 1e6:.1f} us\n")
    print(f"{'operator':18s} {'plain torch':>12s} {'kernels':>9s} {'speed-up':>9s}")
    rows = []
    for name, op in REGISTRY.items():
        if op.params or op.user_defined:
            continue
        for fast in (False, True):
            if fast and not op.fast:
                continue
            source = op.render(["x", "y"][: op.arity], (), fast=fast)
            plain = per_call(compiled(source, torch), args.repeat)
            ours = per_call(compiled(source, kernels.TORCH), args.repeat)
            rows.append((name + (" (fast)" if fast else ""), plain, ours))
    for label, plain, ours in sorted(rows, key=lambda r: r[1] / r[2], reverse=True):
        print(f"{label:18s} {plain / relu:11.2f}x {ours / relu:8.2f}x {plain / ours:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

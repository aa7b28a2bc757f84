"""Does output normalisation help?  (issue 19, the levers)  Each function trained plain and
normalised -- (f(x) - E f(Z)) / std f(Z), Z ~ N(0, 1), as AQuaSurF normalises its candidates --
with the same seeds, on each network; paired by seed.

    python benchmarks/normalization.py --seeds 5 --out normalization.json     # ~25 min, 1 thread
    python benchmarks/normalization.py --quick                                  # seconds

Each row: the function, the network, the plain and the normalised test accuracy (mean ± std
over the seeds, the dataset's full "train" preset), their paired difference and its paired-t p.
Expectation before measuring: where a batch norm follows the activation through a linear layer
(resnet1d) an affine change of the activation's output is largely absorbed; in the
networks without normalisation layers (cnn1d, mlp) it changes what the next layer sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gp_activations import zoo  # noqa: E402
from gp_activations.statistics import format_p, paired_t, summarize  # noqa: E402
from gp_activations.train import train  # noqa: E402

FUNCTIONS = ("relu", "silu", "gelu", "tanh")
NETWORKS = (("mnist1d_hard", "resnet1d"), ("mnist1d", "cnn1d"))


def measure(functions, networks, seeds: int, epochs=None, log=print) -> list:
    rows = []
    for dataset, model in networks:
        for name in functions:
            act = zoo.resolve(name, "pangaea")
            runs = {}
            for label, fn in (("plain", act), ("normalised", act.normalized())):
                accs = []
                for seed in range(seeds):
                    extra = {} if epochs is None else {"epochs": epochs}
                    started = time.perf_counter()
                    result = train(fn, dataset, model, seed=seed, split="test", device="cpu",
                                   **extra)
                    accs.append(result.accuracy)
                    log(f"{model:9s} {name:6s} {label:10s} seed {seed}: {result.accuracy:.4f} "
                        f"({time.perf_counter() - started:.1f} s)")
                runs[label] = accs
            plain, normed = summarize(runs["plain"]), summarize(runs["normalised"])
            diffs = [b - a for a, b in zip(runs["plain"], runs["normalised"])]
            rows.append({"dataset": dataset, "model": model, "function": name,
                         "normalization": act.normalized().normalization.to_dict(),
                         "plain": runs["plain"], "normalised": runs["normalised"],
                         "plain_mean": plain.mean, "plain_std": plain.std,
                         "normalised_mean": normed.mean, "normalised_std": normed.std,
                         "difference": sum(diffs) / len(diffs),
                         "p": paired_t(runs["normalised"], runs["plain"])})
    return rows


def table(rows: list) -> str:
    lines = [f"{'network':9s} {'function':8s} {'plain':>15s} {'normalised':>15s} "
             f"{'diff':>7s} {'p (paired)':>10s}"]
    for r in rows:
        lines.append(f"{r['model']:9s} {r['function']:8s} "
                     f"{100 * r['plain_mean']:7.2f} ± {100 * r['plain_std']:4.2f} "
                     f"{100 * r['normalised_mean']:7.2f} ± {100 * r['normalised_std']:4.2f} "
                     f"{100 * r['difference']:+7.2f} {format_p(r['p']):>10s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--functions", nargs="+", default=list(FUNCTIONS))
    ap.add_argument("--models", nargs="+", default=[m for _, m in NETWORKS],
                    help="networks to measure (resnet1d: mnist1d_hard; cnn1d: mnist1d)")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: cnn1d, relu and silu, 2 seeds, 1 epoch")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    networks = [n for n in NETWORKS if n[1] in args.models]
    if args.quick:
        rows = measure(["relu", "silu"], [("mnist1d", "cnn1d")], 2, epochs=1)
    else:
        rows = measure(args.functions, networks, args.seeds)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

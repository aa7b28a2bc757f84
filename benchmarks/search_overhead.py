"""What the search costs beyond training, and how it scales with workers.

Runs the same small MNIST-1D search (same seed, so the same candidates) with the serial,
process and Ray executors and reports, in one run:

* the share of wall time spent outside training (screening, dedup, SQLite, scheduling, worker
  start-up, workers idle at generation boundaries), i.e.
  1 - (training time summed over candidates) / (workers x wall time);
* dedup hits (candidates not trained because an equivalent one was);
* evaluations per minute, and the speed-up over serial.

Also serial with successive halving and with the surrogate (trainings = halving's rung
trainings; the surrogate's feature computation and fitting count as outside training).

And serial with ``fused = false`` beside the default ``fused = "auto"`` (the cost model
decides per candidate whether torch.compile pays; its compile time counts as training), and
serial as the search ran before issue 12: fused off and eager activations on plain torch
kernels (``gp_activations.kernels`` off: boolean masks in the backward passes of clamp,
nan_to_num, maximum, minimum and where).

Targets: <= 5 % outside training (serial, also with halving and the surrogate); >= 1.7x serial
with 2 workers.

    python benchmarks/search_overhead.py [--generations 3] [--epochs 6] [--rows serial,before]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from gp_activations.compiled import COMPILED
from gp_activations.search import SearchConfig, run_search
from gp_activations.search.store import RunStore


ROWS = ("serial", "process", "ray", "threads", "halving", "surrogate", "fused-off", "before")


def measure(executor: str, workers: int, threads: int, args, root: str, label: str = "",
            **extra) -> dict:
    out = os.path.join(root, f"{executor}-{workers}x{threads}{label.replace(' ', '-')}")
    shutil.rmtree(out, ignore_errors=True)
    config = SearchConfig(dataset="mnist1d", population=args.population, generations=args.generations,
                          param_variants=1, epochs=args.epochs, executor=executor, workers=workers,
                          threads=threads, seed=0, init_zoo=True, **extra)
    t0 = time.perf_counter()
    result = run_search(config, out=out, progress=False)
    wall = time.perf_counter() - t0
    store = RunStore.open(out, readonly=True)
    trained = store.candidates(trained=True)
    rungs = store.rung_runs()
    if rungs:  # halving: every rung is a training of its own
        train_s = sum(r.metrics["wall_time"] for r in rungs if r.metrics and "wall_time" in r.metrics)
    else:
        train_s = sum(c.metrics["wall_time"] for c in trained if c.metrics and "wall_time" in c.metrics)
    fitness = {(c.expression, c.params): c.fitness for c in store.candidates()}
    store.close()
    return {"label": f"{executor} ({workers} worker{'s' if workers > 1 else ''} x {threads} thread)"
                     + label, "wall": wall, "trainings": len(rungs) or len(trained),
            "train_s": train_s, "workers": workers,
            "dedup": result.counts["duplicates"] + result.dedup_hits, "fitness": fitness}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"which rows to run (serial is always run): {','.join(ROWS)}")
    args = parser.parse_args(argv)
    rows = set(args.rows.split(",")) | {"serial"}
    if rows - set(ROWS):
        parser.error(f"unknown rows: {', '.join(sorted(rows - set(ROWS)))}")
    root = tempfile.mkdtemp(prefix="gpa-bench-")
    # Serial runs train in this process: load MNIST-1D now so that its ~3 s generation is not
    # counted as the first candidate's training (workers load it during their start-up).
    from gp_activations.train import get_dataset, resolve_device

    get_dataset("mnist1d", resolve_device("cpu"))
    runs = [measure("serial", 1, 1, args, root)]
    if "process" in rows:
        runs.append(measure("process", 2, 1, args, root))
    if "ray" in rows and not args.skip_ray:
        runs.append(measure("ray", 2, 1, args, root))
    if "threads" in rows:
        runs.append(measure("serial", 1, 2, args, root))
    if "halving" in rows:
        runs.append(measure("serial", 1, 1, args, root, " + halving", fidelity="halving"))
    if "surrogate" in rows:
        runs.append(measure("serial", 1, 1, args, root, " + surrogate", surrogate="forest",
                            surrogate_min=8))
    if "fused-off" in rows:
        runs.append(measure("serial", 1, 1, args, root, ", fused off", fused=False))
    if "before" in rows:
        COMPILED.set_kernels(False)
        try:
            runs.append(measure("serial", 1, 1, args, root, ", before issue 12", fused=False))
        finally:
            COMPILED.set_kernels(True)
    base = runs[0]
    print(f"\nMNIST-1D search: population {args.population}, {args.generations} generations, "
          f"{args.epochs:g} epochs per candidate\n")
    print(f"{'executor':46s} {'wall s':>7s} {'trainings':>9s} {'evals/min':>9s} {'vs serial':>9s} "
          f"{'outside training':>16s} {'dedup hits':>10s}")
    for r in runs:
        per_min = 60 * r["trainings"] / r["wall"]
        outside = 1 - r["train_s"] / (r["workers"] * r["wall"])
        speedup = per_min / (60 * base["trainings"] / base["wall"])
        print(f"{r['label']:46s} {r['wall']:7.1f} {r['trainings']:9d} {per_min:9.1f} {speedup:8.2f}x "
              f"{100 * outside:15.1f}% {r['dedup']:10d}")
    same = all(r["fitness"] == base["fitness"] for r in runs if r["label"].endswith("x 1 thread"))
    # (halving and the surrogate train other candidates: they are not compared here)
    print(f"\nsame candidates and fitness for every executor at 1 thread per evaluation: {same}")
    for suffix, what in (("fused off", "fused = auto (the default) vs off"),
                         ("before issue 12", "the default vs fused off on plain torch kernels "
                                             "(the search before issue 12)")):
        other = next((r for r in runs if r["label"].endswith(suffix)), None)
        if other is not None:
            print(f"{what}, serial: {other['wall'] / base['wall']:.2f}x the evaluations per "
                  f"minute; same fitness: {other['fitness'] == base['fitness']}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build (or continue building) the tabular benchmark: every function of ``space.py`` trained.

    python benchmarks/tabular/build.py --out runs/tabular            # build / resume
    python benchmarks/tabular/build.py --out runs/tabular --csv benchmarks/tabular/mnist1d_cnn1d.csv

Every training is one line of ``OUT/journal.jsonl``, appended and flushed the moment it
finishes, so an interrupted build (Ctrl-C, ``kill -9``) loses nothing and a rerun trains only
the cells that are missing.  The trainings are the search's own (``worker.evaluate_task`` on
the process executor, threads = 1), with the fitness budget of ``experiments/mnist1d.toml``
(the default search: cnn1d, 12 epochs, fitness seed 0, validation split), so that
``gp-activations train --act EXPR --budget fitness --epochs 12 --seed 0 --split val
--threads 1`` reproduces any row's ``fitness``.

Columns (accuracies; empty = not trained, ``nan`` = the training failed):

``fitness``       the fitness: 12 epochs, seed 0, validation split -- every function;
``fitness_e4``    4 epochs (the same schedule shape), seed 0 -- every function: successive
                  halving's first rung;
``fitness_s1``,   12 epochs with seeds 1 and 2 -- a fixed random subset (``--noise``
``fitness_s2``    functions): the fitness's seed noise;
``test``          the full schedule (30 epochs), seed 0, test split -- the same subset.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import space  # noqa: E402

CONFIG = HERE.parent.parent / "experiments" / "mnist1d.toml"
COLUMNS = ("fitness", "fitness_e4", "fitness_s1", "fitness_s2", "test")


def processor() -> str:
    """The CPU model and torch's kernel set on it: the table's numbers are reproducible to the
    digit only on the same pair (other SIMD paths round differently, and trainings diverge)."""
    import torch

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} / {torch.backends.cpu.get_cpu_capability()}"


def _columns():
    """{column: (train config dict, seed, split)} -- the search's fitness budget and its variants."""
    from gp_activations.search.config import SearchConfig
    from gp_activations.train import default_config

    fit = SearchConfig.from_toml(CONFIG).train_config()
    short = fit.replace(epochs=4) if hasattr(fit, "replace") else type(fit)(**{**fit.to_dict(), "epochs": 4})
    full = default_config("mnist1d", "train", model="cnn1d")
    return {"fitness": (fit.to_dict(), 0, "val"), "fitness_e4": (short.to_dict(), 0, "val"),
            "fitness_s1": (fit.to_dict(), 1, "val"), "fitness_s2": (fit.to_dict(), 2, "val"),
            "test": (full.to_dict(), 0, "test")}


def read_journal(path: Path) -> dict:
    """{(expression, column): entry} of the finished trainings (a torn last line is skipped)."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[(entry["expression"], entry["column"])] = entry
    return done


def plan(functions, noise: int, seed: int = 0):
    """[(expression, column)] in build order: the fitness of all first, then the rest."""
    subset = sorted(random.Random(seed).sample(range(len(functions)), min(noise, len(functions))))
    cells = [(f[1], "fitness") for f in functions]
    cells += [(f[1], "fitness_e4") for f in functions]
    for column in ("fitness_s1", "fitness_s2", "test"):
        cells += [(functions[i][1], column) for i in subset]
    return cells


def build(out: Path, workers: int, noise: int, limit=None) -> None:
    from gp_activations.search.executors import make_executor

    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.jsonl"
    functions = space.functions()
    done = read_journal(journal)
    columns = _columns()
    todo = [c for c in plan(functions, noise) if c not in done][:limit]
    print(f"{len(functions)} functions; {len(done)} trainings done, {len(todo)} to go", flush=True)
    if not todo:
        return
    base = {"primitives": "pangaea", "dataset": "mnist1d", "model": "cnn1d", "data": None,
            "fitness": None, "data_dir": None, "verify": True, "download": False,
            "device": "cpu", "threads": 1, "params": []}
    tasks = []
    for i, (expression, column) in enumerate(todo):
        train, seed, split = columns[column]
        tasks.append({**base, "id": i, "expression": expression, "train": train, "seed": seed,
                      "split": split})
    meta = out / "meta.json"
    if not meta.exists():
        meta.write_text(json.dumps({"started_at": time.time(), "machine": platform.platform(),
                                    "processor": processor(), "cpus": os.cpu_count(),
                                    "workers": workers}))
    started = time.time()
    count = [0]
    with open(journal, "a") as fh:
        def on_result(result):
            expression, column = todo[result["id"]]
            entry = {"expression": expression, "column": column, "status": result["status"],
                     "accuracy": result["fitness"], "error": result.get("error", ""),
                     "seconds": (result["finished_at"] or 0) - (result["started_at"] or 0)}
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            count[0] += 1
            if count[0] % 50 == 0:
                print(f"{count[0]}/{len(todo)} in {time.time() - started:.0f} s", flush=True)

        executor = make_executor("process", workers=workers, threads=1, timeout=600, gpus=0,
                                 warmup=tasks[0])
        try:
            executor.run(tasks, lambda task: None, on_result)
        finally:
            executor.close()
    print(f"{count[0]} trainings in {time.time() - started:.0f} s", flush=True)


def write_meta(out: Path, path: Path, done: dict) -> None:
    """``<table>.json``: what each column is (read by the ``lookup`` fitness) and how it was built."""
    columns = {name: {"epochs": train["epochs"], "seed": seed, "split": split}
               for name, (train, seed, split) in _columns().items()}
    started = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    meta = {"dataset": "mnist1d", "model": "cnn1d", "primitives": "pangaea", "columns": columns,
            "space": {"unary": list(space.UNARY), "binary": list(space.BINARY),
                      "functions": len(space.functions())},
            "command": "python benchmarks/tabular/build.py --out runs/tabular && python "
                       "benchmarks/tabular/build.py --out runs/tabular --csv " + str(path),
            "machine": started.get("machine"), "processor": started.get("processor"),
            "cpus": started.get("cpus"),
            "workers": started.get("workers"), "trainings": len(done),
            "training_seconds": round(sum(e["seconds"] for e in done.values()), 1),
            "wall_seconds": round(max(0.0, (out / "journal.jsonl").stat().st_mtime
                                      - started.get("started_at", 0)), 1) if started else None}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def write_csv(out: Path, path: Path) -> int:
    """The table as CSV (one row per function) and its sidecar JSON; returns the row count."""
    functions = space.functions()
    done = read_journal(out / "journal.jsonl")
    write_meta(out, path, done)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["expression", "shape", *COLUMNS, "seconds"])
        for shape, expression, _key in functions:
            cells = []
            for column in COLUMNS:
                entry = done.get((expression, column))
                if entry is None:
                    cells.append("")
                elif entry["status"] != "done" or entry["accuracy"] is None:
                    cells.append("nan")
                else:
                    cells.append(f"{entry['accuracy']:.4f}")
            fit = done.get((expression, "fitness"))
            writer.writerow([expression, shape, *cells,
                             "" if fit is None else f"{fit['seconds']:.2f}"])
    return len(functions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/tabular", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--noise", type=int, default=240, help="functions with seeds 1-2 and test")
    parser.add_argument("--limit", type=int, default=None, help="train at most this many cells")
    parser.add_argument("--csv", type=Path, default=None, help="write the table here (no training)")
    args = parser.parse_args(argv)
    if args.csv:
        n = write_csv(args.out, args.csv)
        print(f"wrote {n} rows to {args.csv}")
        return 0
    build(args.out, args.workers, args.noise, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())

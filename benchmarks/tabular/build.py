"""Build (or continue building) a tabular benchmark: every function of ``space.py`` trained.

    python benchmarks/tabular/build.py --out runs/tabular                 # build / resume
    python benchmarks/tabular/build.py --out runs/tabular --csv           # write the table
    python benchmarks/tabular/build.py --config experiments/mnist1d_resnet1d.toml \\
        --journal benchmarks/tabular/mnist1d_hard_resnet1d.journal.jsonl --workers 1
    python benchmarks/tabular/build.py --config experiments/mnist1d_resnet1d.toml \\
        --journal benchmarks/tabular/mnist1d_hard_resnet1d.journal.jsonl --csv

``--config`` is a search config (default ``experiments/mnist1d.toml``: cnn1d, the shipped
``mnist1d_cnn1d.csv``); the table is of its dataset and model, named ``DATASET_MODEL.csv`` (and
``.json``, its sidecar) in this folder unless ``--csv PATH`` says otherwise.

Every training is one line of the journal (``OUT/journal.jsonl``, or ``--journal PATH`` -- a
path in the repository, so that the journal is committed and a fresh checkout resumes it),
appended and flushed the moment it finishes, so an interrupted build (Ctrl-C, SIGTERM,
``kill -9``) loses at most the trainings in flight and a rerun trains only the cells that are
missing.  Each session of the build adds one ``{"session": ...}`` line (machine, processor,
workers, start time) to the journal.  The trainings are the search's own
(``worker.evaluate_task`` on the process executor, threads = 1), with the config's fitness
budget, so that ``gp-activations train --dataset D --model M --act EXPR --budget fitness
--epochs E --seed 0 --split val --threads 1`` reproduces any row's ``fitness``.

Build order: the functions in a fixed random order (a permutation seeded by ``--order-seed``,
default 0; the CSV's ``order`` column), the ``fitness`` of every function first, then the
noise columns, then the first rung (with ``--top N``: the best N functions' test accuracy and
seeds 1-2 come first, once the fitness column is full) -- so the functions with a fitness at
any point of an interrupted build are a uniform random sample of the space (the same on every machine), plus
the two references ReLU and SiLU, whose fitness is trained before all others.

Columns (accuracies; empty = not trained, ``nan`` = the training failed), for a fitness budget
of E epochs (cnn1d: 12, resnet1d: 8):

``fitness``       E epochs, seed 0, validation split -- every function;
``fitness_eR``    R = E/3 epochs (halving's first rung, as the search's default rungs -- or the
                  config's first rung), seed 0 -- every function (cnn1d: ``fitness_e4``,
                  resnet1d: ``fitness_e2.667``);
``fitness_s1``,   E epochs with seeds 1 and 2 -- a fixed random subset (``--noise``
``fitness_s2``    functions, sampled with seed 0; cnn1d 240, resnet1d 50): the fitness's seed
                  noise;
``test``          the full schedule (the dataset's "train" preset), seed 0, test split -- the
                  same subset.

``--top N`` adds the best N functions by fitness (ties broken in build order) to the subset
with seeds 1-2 and the test split: how far the space's best lie above the references on the
full schedule, and whether their fitness was luck (the resnet1d table: ``--top 100``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import random
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import space  # noqa: E402

CONFIG = ROOT / "experiments" / "mnist1d.toml"
#: The random subset with seeds 1-2 and the test split (the cnn1d table's 240).
NOISE = 240
#: Trained first (their fitness), so that even a partial table compares against them.
REFERENCES = ("relu(x)", "mul(x, sigmoid(x))")  # ReLU, SiLU


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


@functools.lru_cache(maxsize=None)
def _functions() -> tuple:
    """The space's functions (screened and deduplicated once per process)."""
    return tuple(space.functions())


def load_config(path=CONFIG):
    from gp_activations.search.config import SearchConfig

    return SearchConfig.from_toml(path)


def table_name(cfg) -> str:
    """``DATASET_MODEL``: the stem of the table's files (``mnist1d_hard_resnet1d``)."""
    return f"{cfg.dataset}_{cfg.model}"


def column_specs(cfg) -> dict:
    """{column: (train config dict, seed, split)} in column order: the config's fitness budget,
    halving's first rung, two more seeds, the full schedule on the test split."""
    from gp_activations.train import default_config

    fit = cfg.train_config()
    rung = cfg.rung_list()[0]["epochs"]
    full = default_config(cfg.dataset, "train", model=cfg.model)
    return {"fitness": (fit.to_dict(), 0, "val"),
            f"fitness_e{rung:g}": (fit.replace(epochs=rung).to_dict(), 0, "val"),
            "fitness_s1": (fit.to_dict(), 1, "val"), "fitness_s2": (fit.to_dict(), 2, "val"),
            "test": (full.to_dict(), 0, "test")}


def order(n: int, seed: int = 0) -> list:
    """The build order of ``n`` functions: a seeded permutation of their indices (any prefix is
    a uniform random sample)."""
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return perm


def noise_subset(n: int, noise: int, seed: int = 0) -> set:
    """The functions trained with seeds 1, 2 and on the test split (the cnn1d table's 240)."""
    return set(random.Random(seed).sample(range(n), min(noise, n)))


def references(functions) -> list:
    """The indices of ``REFERENCES`` in ``functions`` (matched by function, not by spelling)."""
    from gp_activations.activation import Activation
    from gp_activations.search.screening import function_key

    index = {key: i for i, (_shape, _expr, key) in enumerate(functions)}
    keys = [function_key(Activation.from_string(e, "pangaea")) for e in REFERENCES]
    return [index[k] for k in keys if k in index]


def top_functions(functions, done: dict, top: int, order_seed: int = 0) -> list:
    """The indices of the ``top`` functions with the best fitness (ties in build order), once
    every function has its fitness -- ``[]`` before that, or where ``top`` is 0.  A failed
    training is no candidate."""
    entries = [done.get((expression, "fitness")) for _shape, expression, _key in functions]
    if not top or any(e is None for e in entries):
        return []
    rank = {i: r for r, i in enumerate(order(len(functions), order_seed))}
    scored = [i for i, e in enumerate(entries) if e["status"] == "done" and e["accuracy"] is not None]
    scored.sort(key=lambda i: (-entries[i]["accuracy"], rank[i]))
    return scored[:top]


def plan(functions, columns, noise: int, order_seed: int = 0, top: int = 0, done=None):
    """[(expression, column)] in build order: each column over the functions in the seeded
    order -- the fitness of all first (the references ReLU and SiLU before the rest); then,
    with ``top``, the best ``top`` by fitness (known once the fitness column is full; in fitness
    order): the full schedule's test accuracy, then seeds 1 and 2; then the random noise
    subset's columns; last the first rung (every function again, the column least needed)."""
    names = list(columns)
    perm = order(len(functions), order_seed)
    subset = noise_subset(len(functions), noise)
    first = references(functions)
    cells = [(functions[i][1], names[0]) for i in first + [i for i in perm if i not in first]]
    best = top_functions(functions, done or {}, top, order_seed)
    for column in (names[4], names[2], names[3]):
        cells += [(functions[i][1], column) for i in best]
    for column in names[2:]:
        cells += [(functions[i][1], column) for i in perm if i in subset and i not in best]
    cells += [(functions[i][1], names[1]) for i in perm]
    return cells


def read_journal(path: Path):
    """({(expression, column): entry} of the finished trainings, [session records]); a torn
    last line is skipped."""
    done, sessions = {}, []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "session" in entry:
                sessions.append(entry["session"])
            elif "expression" in entry:
                done[(entry["expression"], entry["column"])] = entry
    return done, sessions


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def build(cfg, journal: Path, workers: int, noise: int, limit=None, order_seed: int = 0,
          executor: str = "process", threads: int = 1, top: int = 0) -> int:
    """Train the missing cells (at most ``limit``); returns how many were trained.  With
    ``top``, the fitness column is trained first on its own, and the rest is planned once it is
    full (the best functions are known only then)."""
    functions = _functions()
    columns = column_specs(cfg)
    total = 0
    while True:
        done, _ = read_journal(journal)
        missing = [c for c in plan(functions, columns, noise, order_seed, top, done)
                   if c not in done]
        phase = missing
        if top and not top_functions(functions, done, top, order_seed):
            phase = [c for c in missing if c[1] == "fitness"]
        todo = phase if limit is None else phase[:max(limit - total, 0)]
        print(f"{len(functions)} functions; {len(done)} trainings done, {len(missing)} to go, "
              f"{len(todo)} in this pass ({table_name(cfg)}, journal {journal})", flush=True)
        if not todo:
            return total
        trained = _train(cfg, journal, todo, columns, workers, executor, threads)
        total += trained
        if trained < len(todo) or phase is missing:  # stopped, or nothing left to re-plan
            return total


def _train(cfg, journal: Path, todo: list, columns: dict, workers: int, executor: str,
           threads: int) -> int:
    """Train the cells ``todo``, each one journal line the moment it finishes; returns how many
    finished (fewer than ``todo`` where the build was stopped)."""
    from gp_activations.search.executors import make_executor, run_jobs
    from gp_activations.search.jobs import Job, JobKey, JobKind

    journal.parent.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, (expression, column) in enumerate(todo):
        train, seed, split = columns[column]
        jobs.append(Job(JobKey(JobKind.CANDIDATE, i), expression, cfg.primitives
                        if isinstance(cfg.primitives, str) else "pangaea",
                        dataset=cfg.dataset, model=cfg.model, data=cfg.data,
                        train=train, seed=seed, device="cpu", threads=threads, split=split,
                        data_dir=cfg.data_dir))
    started = time.time()
    count = [0]
    signal.signal(signal.SIGTERM, _stop)  # kill PID stops as cleanly as Ctrl-C
    torn = journal.exists() and journal.stat().st_size and not journal.read_bytes().endswith(b"\n")
    with open(journal, "a") as fh:
        if torn:  # a line cut by kill -9: end it, so that the next line stands on its own
            fh.write("\n")
        fh.write(json.dumps({"session": {
            "started_at": started, "machine": platform.platform(), "processor": processor(),
            "cpus": os.cpu_count(), "workers": workers, "threads": threads}}) + "\n")
        fh.flush()

        def on_result(result):
            expression, column = todo[result.key.id]
            entry = {"expression": expression, "column": column, "status": str(result.status),
                     "accuracy": result.fitness, "error": result.error or "",
                     "seconds": round((result.finished_at or 0) - (result.started_at or 0), 3),
                     "finished_at": round(result.finished_at or time.time(), 3)}
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            count[0] += 1
            if count[0] % 10 == 0:
                print(f"{count[0]}/{len(todo)} in {time.time() - started:.0f} s", flush=True)

        runner = make_executor(executor, workers=workers, threads=threads, timeout=1800, gpus=0,
                               warmup=jobs[0].to_wire())
        try:
            run_jobs(runner, jobs, lambda job: None, on_result)
        except KeyboardInterrupt:
            print(f"stopped: {count[0]} trainings this session, all in {journal}", flush=True)
        finally:
            runner.close()
    print(f"{count[0]} trainings in {time.time() - started:.0f} s", flush=True)
    return count[0]


def _cell(entry) -> str:
    if entry is None:
        return ""
    if entry["status"] != "done" or entry["accuracy"] is None:
        return "nan"
    return f"{entry['accuracy']:.4f}"


def write_table(cfg, journal: Path, path: Path, noise: int, order_seed: int = 0,
                config_path=None, top: int = 0) -> dict:
    """The table as CSV (one row per function of the space, in the space's order; empty cells
    where nothing was trained yet) and its sidecar ``<table>.json``: what each column is (read by
    the ``lookup`` fitness), how it was built, and -- for an unfinished build -- ``partial`` with
    the counts of trained cells.  Returns the sidecar."""
    functions = _functions()
    done, sessions = read_journal(journal)
    specs = column_specs(cfg)
    names = list(specs)
    rank = {functions[i][1]: r for r, i in enumerate(order(len(functions), order_seed))}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["expression", "shape", *names, "seconds", "order"])
        for shape, expression, _key in functions:
            fit = done.get((expression, "fitness"))
            writer.writerow([expression, shape, *(_cell(done.get((expression, c))) for c in names),
                             "" if fit is None else f"{fit['seconds']:.2f}", rank[expression]])
    random_subset = noise_subset(len(functions), noise)
    best = top_functions(functions, done, top, order_seed)
    subset = len(random_subset | set(best))
    expected = {c: (len(functions) if i < 2 else subset) for i, c in enumerate(names)}
    filled = {c: sum((e, c) in done for e in (f[1] for f in functions)) for c in names}
    try:
        rel_config = Path(config_path).resolve().relative_to(ROOT) if config_path else None
    except ValueError:
        rel_config = config_path
    try:
        rel_journal = journal.resolve().relative_to(ROOT)
    except ValueError:
        rel_journal = journal
    try:
        rel_path = path.resolve().relative_to(ROOT)
    except ValueError:
        rel_path = path
    flags = (f" --config {rel_config}" if rel_config else "") + f" --journal {rel_journal}" \
        + (f" --top {top}" if top else "") + (f" --noise {noise}" if noise != NOISE else "")
    wall = 0.0
    times = sorted(e.get("finished_at", 0) for e in done.values() if e.get("finished_at"))
    starts = sorted(s["started_at"] for s in sessions)
    for k, start in enumerate(starts):  # each session: its start to its last training
        end = starts[k + 1] if k + 1 < len(starts) else float("inf")
        inside = [t for t in times if start <= t < end]
        wall += (max(inside) - start) if inside else 0.0
    last = sessions[-1] if sessions else {}
    meta = {"dataset": cfg.dataset, "model": cfg.model,
            "primitives": cfg.primitives if isinstance(cfg.primitives, str) else "pangaea",
            "columns": {name: {"epochs": train["epochs"], "seed": seed, "split": split}
                        for name, (train, seed, split) in specs.items()},
            "space": {"unary": list(space.UNARY), "binary": list(space.BINARY),
                      "functions": len(functions)},
            "order": {"seed": order_seed,
                      "references": [functions[i][1] for i in references(functions)],
                      "note": "the references' fitness first, then every function in a seeded "
                      "random order (the CSV's 'order' column): the functions with a fitness "
                      "in a partial table are a uniform random sample of the space (a prefix "
                      "of that order) plus the references"},
            "noise_functions": len(random_subset),
            **({"top_functions": {"count": top, "trained": len(best), "note": "the best "
                "functions by fitness (ties in build order), with seeds 1-2 and the test "
                "accuracy besides the random noise subset; 'trained' is 0 until the fitness "
                "column is full"}} if top else {}),
            "command": f"python benchmarks/tabular/build.py{flags} --workers 1 && python "
                       f"benchmarks/tabular/build.py{flags} --csv {rel_path}",
            "machine": last.get("machine"), "processor": last.get("processor"),
            "processors": sorted({s.get("processor") for s in sessions if s.get("processor")}),
            "cpus": last.get("cpus"), "workers": last.get("workers"),
            "sessions": len(sessions), "trainings": len(done),
            "training_seconds": round(sum(e["seconds"] for e in done.values()), 1),
            "wall_seconds": round(wall, 1)}
    if filled != expected:
        meta["partial"] = {"functions_with_fitness": filled[names[0]],
                           "of": len(functions), "cells": filled, "expected": expected,
                           "note": "an unfinished build: empty cells are not trained yet (a "
                                   "lookup of one fails: 'not in the lookup table: no <column> "
                                   "for <expression>'); continue it with 'command'"}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _count(text: str) -> int:
    """A whole number >= 0 (argparse: anything else is one line and exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the search config whose dataset, model and fitness budget the "
                             "table is of (default experiments/mnist1d.toml)")
    parser.add_argument("--out", default="runs/tabular", type=Path,
                        help="folder of the journal (OUT/journal.jsonl) unless --journal")
    parser.add_argument("--journal", type=Path, default=None, help="the journal's path")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--executor", default="process", choices=("process", "serial"))
    parser.add_argument("--noise", type=_count, default=NOISE,
                        help="a random subset of this many functions with seeds 1-2 and test "
                             f"(default {NOISE})")
    parser.add_argument("--top", type=_count, default=0,
                        help="also the best N functions by fitness with seeds 1-2 and test "
                             "(planned once every function has its fitness)")
    parser.add_argument("--order-seed", type=int, default=0, help="the build order's seed")
    parser.add_argument("--limit", type=int, default=None, help="train at most this many cells")
    parser.add_argument("--csv", type=Path, nargs="?", const=True, default=None,
                        help="write the table (no training): to PATH, or to "
                             "benchmarks/tabular/DATASET_MODEL.csv")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    journal = args.journal or args.out / "journal.jsonl"
    if args.csv:
        path = HERE / f"{table_name(cfg)}.csv" if args.csv is True else args.csv
        meta = write_table(cfg, journal, path, args.noise, args.order_seed, args.config, args.top)
        part = meta.get("partial")
        print(f"wrote {meta['space']['functions']} rows to {path}"
              + (f" (partial: {part['functions_with_fitness']} of {part['of']} functions "
                 f"with a fitness)" if part else ""))
        return 0
    build(cfg, journal, args.workers, args.noise, args.limit, args.order_seed, args.executor,
          args.threads, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Transfer: the functions found by several runs, each trained on every task, against baselines.

``gp-activations transfer RUN... --tasks mnist1d/cnn1d,mnist1d/mlp,mnist1d_hard/resnet1d``
takes each run's top functions (with their best placement of learnable scalars), adds the
baselines, and trains every one on every task under the task's full schedule for N seeds,
scored on the **test** split -- the paper's question of specialised vs general functions.

Every training is a row of ``OUT/transfer.sqlite`` committed as it finishes, keyed by
function, seed and protocol (the schedule, dataset and model), so an interrupted transfer
resumes without redoing any; a training that ``gp-activations evaluate`` already did in one of
the runs under the same protocol is copied, not repeated.  The table (``OUT/transfer.md``,
``OUT/transfer.csv``) gives mean ± std per function and task, and Welch's t-test against ReLU
and against the best baseline of that task.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from . import zoo
from .errors import UserError, did_you_mean
from .search.store import TRANSFER_DB as DB_NAME  # noqa: F401 -- the file's name, re-exported
from .search.store import Status, TransferStore
from .tables import Column, Table, code, p_value, percent_pm, with_params

@dataclass
class Function:
    label: str  # "resnet1d #1" or a baseline's name
    kind: str  # "found" or "baseline"
    expression: str
    primitives: str
    params: list
    found_on: str = ""  # the task(s) the run searched

    @property
    def key(self) -> tuple:
        return (self.expression, self.primitives, json.dumps(self.params))


@dataclass
class Cell:
    accuracies: list
    failed: int
    mean: float
    std: float
    p_vs_relu: Optional[float] = None
    p_vs_best: Optional[float] = None
    best: bool = False  # the best baseline of its task (the "vs best" reference)
    mean_vs_relu_up: bool = False  # mean above ReLU's
    beats_best: bool = False  # mean above the best baseline's


@dataclass
class TransferTable:
    tasks: list  # names "dataset/model"
    functions: list  # Function
    cells: dict = field(default_factory=dict)  # (label, task) -> Cell
    best_baseline: dict = field(default_factory=dict)  # task -> label
    seeds: int = 0

    def markdown(self) -> str:
        table = Table(Column("function"), Column("found on"), *(Column(t, ">") for t in self.tasks))
        for fn in self.functions:
            name = fn.label if fn.kind == "baseline" else f"{fn.label} {code(_short(fn))}"
            table.add(name, fn.found_on or "--", *(
                _cell_text(self.cells.get((fn.label, task)), fn.label == "relu")
                for task in self.tasks))
        return "\n".join([
            table.markdown(), "",
            f"Test accuracy (%), mean ± std over {self.seeds} seeds (n < {self.seeds}: seeds that "
            f"diverged are left out and counted as failed).  ▲/▼: better/worse than ReLU, "
            f"Welch's t-test p < 0.05; **bold**: better than the task's best baseline ("
            + ", ".join(f"{t}: {self.best_baseline.get(t, 'n/a')}" for t in self.tasks)
            + ") with p < 0.05; p-values in transfer.csv."])

    def text(self) -> str:
        col = max(18, *(len(t) for t in self.tasks))
        table = Table(Column("function", width=12, fit=True),
                      *(Column(t, ">", col) for t in self.tasks))
        for fn in self.functions:
            table.add(fn.label, *(
                _cell_text(self.cells.get((fn.label, task)), fn.label == "relu", plain=True)
                for task in self.tasks))
        lines = [table.text(),
                 "(test accuracy %, mean ± std; +/-: better/worse than ReLU, p < 0.05; "
                 "!: better than the task's best baseline, p < 0.05)"]
        lines += [f"  {fn.label}: {with_params(fn.expression, fn.params)}  (found on "
                  f"{fn.found_on})" for fn in self.functions if fn.kind == "found"]
        return "\n".join(lines)

    def csv(self) -> str:
        """``transfer.csv``: one row per function and task, the numbers in full."""
        table = Table("function", "kind", "found_on", "expression", "params", "task", "n",
                      "failed", "mean", "std", "p_vs_relu", "p_vs_best_baseline",
                      "best_baseline", "accuracies")
        for fn in self.functions:
            for task in self.tasks:
                c = self.cells[(fn.label, task)]
                table.add(fn.label, fn.kind, fn.found_on, fn.expression, json.dumps(fn.params),
                          task, len(c.accuracies), c.failed, f"{c.mean:.6f}", f"{c.std:.6f}",
                          p_value(c.p_vs_relu), p_value(c.p_vs_best),
                          self.best_baseline.get(task, ""),
                          " ".join(f"{a:.6f}" for a in c.accuracies))
        return table.csv()


def _short(fn: Function) -> str:
    text = fn.expression if len(fn.expression) <= 60 else fn.expression[:57] + "..."
    return with_params(text, fn.params, " @ ")


def _cell_text(c: Optional[Cell], is_relu: bool, plain: bool = False) -> str:
    if c is None:
        return "n/a"
    if not c.accuracies:
        return f"failed ({c.failed})"
    text = percent_pm(c.mean, c.std)
    if c.failed:
        text += f" ({c.failed} failed)"
    if not is_relu and c.p_vs_relu is not None and c.p_vs_relu < 0.05:
        text += ("+" if plain else " ▲") if c.mean_vs_relu_up else ("-" if plain else " ▼")
    if c.p_vs_best is not None and c.p_vs_best < 0.05 and c.beats_best:
        text = (text + "!") if plain else f"**{text}**"
    return text


def parse_tasks(text) -> list[dict]:
    """``"mnist1d/cnn1d,mnist1d_hard"`` -> [{name, dataset, model}]; one line on a bad entry."""
    from .data import dataset_names, get_dataset_info
    from .models import MODELS

    entries = [e.strip() for e in (text.split(",") if isinstance(text, str) else text) if e.strip()]
    if not entries:
        raise UserError("--tasks is empty; give DATASET/MODEL pairs, e.g. "
                        "--tasks mnist1d/cnn1d,mnist1d/mlp,mnist1d_hard/resnet1d")
    out = []
    for entry in entries:
        dataset, _, model = entry.partition("/")
        try:
            info = get_dataset_info(dataset)
        except UserError:
            raise UserError(f"--tasks: {entry!r}: unknown dataset {dataset!r}"
                            f"{did_you_mean(dataset, dataset_names())} (known: "
                            f"{', '.join(dataset_names())})") from None
        model = model or info.default_model
        if model not in MODELS:
            raise UserError(f"--tasks: {entry!r}: unknown model {model!r}"
                            f"{did_you_mean(model, MODELS)} (known: {', '.join(MODELS)})")
        name = f"{info.name}/{model}"
        if any(t["name"] == name for t in out):
            raise UserError(f"--tasks: {name} is listed twice")
        out.append({"name": name, "dataset": info.name, "model": model})
    return out


def _found_functions(runs: Sequence, top: int) -> list[Function]:
    from .search.config import SearchConfig
    from .search.ranking import ranked_functions
    from .search.store import RunStore

    out, seen_labels = [], set()
    for run in runs:
        store = RunStore.open(run, readonly=True)
        try:
            cfg = SearchConfig.from_dict(store.config(), where=f"{run} config")
            ranked, _ = ranked_functions(store, top, cfg.variant_fitness, cfg.allow_linear,
                                         race=True)
        finally:
            store.close()
        if not ranked:
            raise UserError(f"{run} has no finished candidates to transfer yet; run or resume "
                            f"its search first")
        if cfg.normalize:
            raise UserError(f"{run} normalised its functions (normalize = true): transfer "
                            f"trains plain functions only, so it would not test what the run "
                            f"found; evaluate it with `gp-activations evaluate {run}` instead")
        found_on = " + ".join(t["name"] for t in cfg.task_list())
        name = Path(run).resolve().name
        for rank, item in enumerate(ranked, 1):
            cand = item["candidate"]
            label = f"{name} #{rank}"
            if label in seen_labels:
                raise UserError(f"two runs are named {name!r}; give run directories with "
                                f"different names")
            seen_labels.add(label)
            out.append(Function(label, "found", cand.expression, cand.primitives,
                                list(cand.params), found_on))
    return out


def _protocol(task: dict, epochs: Optional[float]) -> tuple[str, object]:
    from .evaluate import protocol_key
    from .train import default_config

    train_cfg = default_config(task["dataset"], "train", task["model"], epochs=epochs,
                               per_channel=False, fused=False, threads=1)
    return protocol_key(train_cfg.to_dict(), task["dataset"], task["model"]), train_cfg


def _copy_from_runs(store: TransferStore, runs: Sequence, wanted: dict) -> int:
    """Copy the finished ``final`` rows of the runs that match a wanted (function, seed,
    protocol); returns how many were copied."""
    from .search.store import RunStore

    copied = 0
    for run in runs:
        run_store = RunStore.open(run, readonly=True)
        try:
            for r in run_store.final_trainings(status="done"):
                key = (r.expression, r.primitives, json.dumps(list(r.params)), r.seed, r.protocol)
                if key in wanted and store.copy_done(key, r.accuracy, str(run), r.finished_at):
                    copied += 1
        finally:
            run_store.close()
    return copied


def run_transfer(runs: Sequence, tasks, out, *, top: int = 1, seeds: int = 10,
                 baselines: Optional[Sequence[str]] = None, epochs: Optional[float] = None,
                 executor: str = "serial", workers: int = 1, device: str = "auto",
                 task_timeout: Optional[float] = None, data_dir: Optional[str] = None,
                 progress: bool = True, into_runs: bool = False) -> TransferTable:
    """Train each run's top functions and the baselines on every task; return the table.
    The table goes to ``out``; ``into_runs`` also copies ``transfer.md`` into each run (where
    ``gp-activations report RUN`` includes it)."""
    from .evaluate import DEFAULT_BASELINES, parse_baselines

    if not runs:
        raise UserError("transfer needs at least one run directory")
    if top < 1 or seeds < 2:
        raise UserError(f"--top must be >= 1 and --seeds >= 2 (a t-test needs two), got "
                        f"{top} and {seeds}")
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise UserError(f"--epochs must be a positive, finite number, got {epochs!r}")
    tasks = parse_tasks(tasks) if not (tasks and isinstance(tasks[0], dict)) else tasks
    names = parse_baselines(baselines or DEFAULT_BASELINES)
    functions = _found_functions(runs, top)
    functions += [Function(n, "baseline", zoo.get(n).expression, "pangaea",
                           list(zoo.get(n).params)) for n in names]
    from .train import check_model

    for task in tasks:
        check_model(task["model"], task["dataset"], data_dir=data_dir)
    protocols = {t["name"]: _protocol(t, epochs) for t in tasks}
    out = Path(out)
    store = TransferStore(out)
    try:
        wanted = {(*fn.key, s, protocols[t["name"]][0]) for fn in functions for t in tasks
                  for s in range(seeds)}
        _copy_from_runs(store, runs, wanted)
        work, scheduled = [], set()
        with store.transaction():
            store.reset_in_flight()
            for task in tasks:
                protocol, train_cfg = protocols[task["name"]]
                for fn in functions:
                    for seed in range(seeds):
                        row = store.row(fn.key, seed, protocol)
                        if row is not None and row.finished:
                            continue
                        rid = store.schedule(fn.key, seed, protocol)
                        if rid not in scheduled:  # a function two runs found trains once
                            scheduled.add(rid)
                            work.append((rid, task, fn, seed, train_cfg))
        if work:
            _train(store, work, executor, workers, device, task_timeout, progress, data_dir)
        table = _summarize(store, tasks, functions, protocols, seeds)
    finally:
        store.close()
    _write(out, table, runs, tasks, seeds, epochs, top,
           None if baselines is None else ",".join(names), into_runs)
    return table


def _train(store, work, executor, workers, device, task_timeout, progress, data_dir) -> None:
    from .search.executors import default_task_timeout, device_slots, execute
    from .search.jobs import Job, JobKey, JobKind

    device, gpus = device_slots(device)
    # the longest trainings first: the run then ends on short ones, so workers idle less
    work = sorted(work, key=lambda w: -w[4].epochs * (3 if w[1]["model"] == "resnet1d" else 1))
    jobs = [Job(JobKey(JobKind.TRANSFER, rid), fn.expression, fn.primitives, tuple(fn.params),
                dataset=task["dataset"], model=task["model"], train=train_cfg.to_dict(),
                seed=seed, device=device, threads=1, split="test", data_dir=data_dir)
            for rid, task, fn, seed, train_cfg in work]

    def on_result(result):
        accuracy = (result.metrics or {}).get("accuracy") if result.ok else None
        store.finish(result.key.id, result.ok, accuracy, result.error)

    execute(jobs, lambda job: store.start(job.key.id), on_result, executor=executor,
            workers=workers, threads=1,
            timeout=task_timeout or default_task_timeout(executor, work[0][4]), gpus=gpus,
            progress=dict(total=len(jobs), unit="run", desc="transfer", disable=not progress))


def _summarize(store, tasks, functions, protocols, seeds) -> TransferTable:
    from .statistics import summarize, welch_p

    table = TransferTable([t["name"] for t in tasks], list(functions), seeds=seeds)
    for task in tasks:
        protocol = protocols[task["name"]][0]
        for fn in functions:
            rows = [store.row(fn.key, s, protocol) for s in range(seeds)]
            accs = [r.accuracy for r in rows if r is not None and r.status == Status.DONE]
            failed = sum(1 for r in rows if r is not None and r.status == Status.FAILED)
            table.cells[(fn.label, task["name"])] = Cell(
                accs, failed, summarize(accs).mean, summarize(accs).std)
        base = [fn for fn in functions if fn.kind == "baseline"
                and table.cells[(fn.label, task["name"])].accuracies]
        relu = table.cells.get(("relu", task["name"]))
        best = max(base, key=lambda fn: table.cells[(fn.label, task["name"])].mean, default=None)
        if best is not None:
            table.best_baseline[task["name"]] = best.label
            table.cells[(best.label, task["name"])].best = True
        for fn in functions:
            c = table.cells[(fn.label, task["name"])]
            if relu is not None and fn.label != "relu":
                c.p_vs_relu = welch_p(c.accuracies, relu.accuracies)
                c.mean_vs_relu_up = c.mean > relu.mean
            if best is not None and fn.label != best.label:
                ref = table.cells[(best.label, task["name"])]
                c.p_vs_best = welch_p(c.accuracies, ref.accuracies)
                c.beats_best = c.mean > ref.mean
    return table


def _write(out: Path, table: TransferTable, runs, tasks, seeds, epochs, top, baselines,
           into_runs: bool = False) -> None:
    """``OUT/transfer.csv`` and ``OUT/transfer.md``; with ``into_runs`` (``--into-runs``) also
    ``RUN/transfer.md`` in every run, for its report -- a run is not written otherwise."""
    with open(out / "transfer.csv", "w", newline="") as fh:
        fh.write(table.csv())
    command = ("gp-activations transfer " + " ".join(str(r) for r in runs) + " --tasks "
               + ",".join(t["name"] for t in tasks) + f" --seeds {seeds}"
               + (f" --top {top}" if top != 1 else "")
               + (f" --baselines {baselines}" if baselines else "")
               + (f" --epochs {epochs:g}" if epochs else "") + f" --out {out}"
               + (" --into-runs" if into_runs else ""))
    text = ("# Transfer: found functions on every task\n\n" + table.markdown() + "\n\n"
            "Reproduce with:\n\n```\n" + command + "\n```\n")
    (out / "transfer.md").write_text(text)
    for run in runs if into_runs else ():  # `report RUN` includes the latest one it was given
        try:
            (Path(run) / "transfer.md").write_text(text)
        except OSError:
            pass  # a read-only run: the table is in OUT

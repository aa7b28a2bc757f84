"""Final evaluation: retrain the found functions and the baselines, several seeds, test set.

The search's fitness is a brief-training estimate on the validation split.  The claim users
care about is measured here: the top-K functions of a run (each with its best placement of
learnable scalars) and the baseline activations are retrained under the full schedule with N
seeds each and scored on the held-out **test** set.  Every training is a row of the run's
``final`` table, committed as it finishes, so an interrupted evaluation resumes without
redoing any (rows are keyed by label, seed and protocol -- the training schedule, model and
dataset -- so a different ``--epochs`` adds rows instead of mixing results).

Statistics: mean ± sample std per activation, and Welch's t-test (unequal variances) of each
against the reference -- ReLU, or the baseline ``reference`` (``--reference silu``) names.
Written to ``RUN/results.csv`` and ``RUN/results.tex`` (booktabs).

Evaluations that decide (``max_seeds``, ``--max-seeds N``): ``seeds`` is then the minimum.
After the minimum seeds of every activation, each comparison with the reference (each found function,
each baseline) gets more seeds, one look at a time, until
:class:`~gp_activations.statistics.SequentialTest` (a group-sequential Welch t-test with
O'Brien-Fleming-type alpha spending: the false-positive rate over all looks stays at ``alpha``)
calls it *different* or ``max_seeds`` is reached (*undecided at max*).  Each round trains the
next look's seeds of every undecided comparison together (the reference's seeds are shared: it gets as
many as the longest-running comparison needs).  Nothing but the ``final`` rows is stored: the
decisions, and the seeds each activation needs, are replayed from the stored accuracies
(:func:`_replay`), so an interrupted evaluation resumes without retraining, and ``report``
reads the same table back.  The table gives, per comparison, the decision, the seeds per arm
it needed, the look's nominal significance level and the smallest difference that look could
detect with 80 % power (:func:`~gp_activations.statistics.min_detectable_difference` at the
pooled std of the two arms' seeds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import zoo
from .data import get_dataset_info
from .errors import UserError
from .models import MODELS
from .search.config import SearchConfig, is_object_label, object_label
from .search.ranking import ranked_functions
from .search.store import RunStore
from .statistics import SequentialTest, Status, min_detectable_difference
from .statistics import summarize as summarize_values
from .statistics import format_p, welch_p  # noqa: F401 -- re-exported
from .tables import (Column, Table, code, expression_latex, number, p_value, percent_pm,
                     tex_escape, with_params)

DEFAULT_BASELINES = ("relu", "silu", "gelu", "elu", "selu", "softplus", "mish", "tanh")


@dataclass
class ResultRow:
    label: str
    kind: str  # "found" or "baseline"
    expression: str
    params: list
    accuracies: list
    mean: float
    std: float
    p_vs_ref: Optional[float]  # vs the reference (ReLU unless ``reference`` says otherwise)
    primitives: str = "pangaea"
    failed: int = 0  # seeds whose training diverged, timed out or crashed
    best: bool = False
    equals: Optional[str] = None  # a found function equal to this baseline (trained once, as it)
    linear: bool = False  # an affine function (only ranked with allow_linear)
    # a sequential evaluation (max_seeds): the comparison with the reference (None for the
    # reference itself and for fixed-seed evaluations); p_vs_ref is then the deciding look's
    decision: Optional[str] = None  # "different", "undecided at max", "more seeds" (unfinished)
    decided_at: Optional[int] = None  # seeds per arm at that look
    level: Optional[float] = None  # that look's nominal significance level
    min_detectable: Optional[float] = None  # difference detected with 80 % power at that look
    reference: str = "relu"  # the baseline of every p-value

    @property
    def display_label(self) -> str:
        return self.label + (f" = {self.equals}" if self.equals else "") + \
            (" (linear)" if self.linear else "")

    @property
    def n(self) -> int:
        return len(self.accuracies)


def parse_baselines(text, reference: str = "relu") -> list[str]:
    """The baselines' zoo names, the ``reference`` (of every p-value) among them."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:
        raise UserError(f"unknown baseline {unknown[0]!r}; zoo activations: {', '.join(zoo.names())}")
    if reference not in names:
        names.insert(0, reference)
    return names


def check_reference(name) -> str:
    """``--reference``: a zoo name (the baseline every p-value compares with)."""
    if not isinstance(name, str) or name not in zoo.names():
        raise UserError(f"--reference {name!r} is not a zoo activation; give one of "
                        f"{', '.join(zoo.names())} (e.g. --reference silu)")
    return name


def protocol_key(train_config: dict, dataset: str, model, test_size=None) -> str:
    """The key of a training protocol (schedule, dataset, model; a test split of another size):
    rows of the same protocol are the same experiment."""
    keys = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup",
            "label_smoothing", "per_channel")
    values = {k: train_config[k] for k in keys}
    if float(values["epochs"]).is_integer():  # --epochs 20 (20.0) is the preset's 20: same rows
        values["epochs"] = int(values["epochs"])
    if test_size is not None:  # (absent otherwise: the keys of earlier runs stay the same)
        values["test_size"] = int(test_size)
    return json.dumps({"dataset": dataset, "model": model, **values}, sort_keys=True)


def evaluate_run(run_dir, *, top: Optional[int] = None, seeds: Optional[int] = None,
                 epochs: Optional[float] = None, baselines: Optional[Sequence[str]] = None,
                 model=None, dataset: Optional[str] = None, data=None,
                 executor: Optional[str] = None, workers: Optional[int] = None,
                 device: Optional[str] = None, data_dir: Optional[str] = None,
                 task_timeout: Optional[float] = None, progress: bool = True,
                 max_seeds: Optional[int] = None, alpha: Optional[float] = None,
                 reference: Optional[str] = None) -> list[ResultRow]:
    """Retrain the top found functions and the baselines for several seeds; return the table.

    ``reference``: the zoo baseline every p-value compares with (default: the run's
    ``[evaluate]`` reference, else ``"relu"``; ``"silu"`` asks whether a found function beats
    SiLU).  ``max_seeds``: a sequential evaluation (see the module docstring): ``seeds`` is the
    minimum, each comparison with the reference gets more seeds until it is decided at level
    ``alpha`` (default 0.05) or has ``max_seeds``.

    Defaults come from the run's ``[evaluate]`` table, then: top 3, 5 seeds, the eight
    :data:`DEFAULT_BASELINES`, the dataset's full schedule.  ``model``/``dataset`` other than
    the run's own evaluate a *transfer*: the target's own preset schedule is used (the run's
    ``[evaluate]`` epochs and training overrides describe the run's own model), and the results
    go to ``results_<dataset>_<model>.csv/.tex``.

    A run that :func:`~gp_activations.search.run_search` made from Python objects
    (``model=make_model, data=load_data``) is evaluated by passing the same objects here:
    ``model`` may be a registered name, a ``file.py:function`` reference or a callable taking
    an activation factory; ``data`` anything :func:`~gp_activations.data.as_dataset` accepts.
    """
    store = RunStore.open(run_dir)
    try:
        plan = _plan(store, run_dir, top, seeds, epochs, baselines, model, dataset, data,
                     max_seeds, alpha, reference)
        protocol, entries, seeds = plan["protocol"], plan["entries"], plan["seeds"]
        test = plan["sequential"]
        _record_protocol(store, protocol, seeds, plan["own"], plan["test_split"], plan["flags"],
                         [e[0] for e in entries], test, plan["reference"])
        trained = [e for e in entries if e[0] not in plan["aliases"]]
        labels = [e[0] for e in trained]

        def run(pending, done_before):
            _run_trainings(store, plan["cfg"], pending, plan["train_cfg"], plan["dataset"],
                           plan["model_obj"], plan["data_obj"], executor, workers, device, data_dir, task_timeout,
                           progress, done_before, plan["test_size"])

        if test is None:
            _schedule_rows(store, protocol, trained, seeds)
            pending = sorted(store.final_trainings(protocol, status="pending", seeds=seeds,
                                                   labels=labels), key=lambda r: r.id)
            if pending:
                run(pending, len(labels) * seeds - len(pending))
        else:
            _run_sequential(store, protocol, trained, test, run, plan["reference"])
        rows = summarize(store, protocol, [e[0] for e in entries], seeds)
        stem = "results" if plan["own"] else f"results_{plan['dataset']}_{plan['model']}"
        write_results(Path(run_dir), rows, plan["train_cfg"].epochs, plan["dataset"],
                      plan["model"], stem)
        return rows
    finally:
        store.close()


def evaluate_tasks(run_dir, **kwargs) -> list[tuple[str, list[ResultRow]]]:
    """A multi-task run's evaluation: :func:`evaluate_run` on each of its tasks in turn (each
    with its own full schedule), as ``[(task name, rows), ...]``; a single-task run gives one."""
    store = RunStore.open(run_dir, readonly=True)
    try:
        cfg = SearchConfig.from_dict(store.config(), where=f"{run_dir} config")
    finally:
        store.close()
    if not cfg.multi_task:
        rows = evaluate_run(run_dir, **kwargs)
        return [(cfg.task_list()[0]["name"], rows)]
    return [(task["name"], evaluate_run(run_dir, dataset=task["dataset"], model=task["model"],
                                        **kwargs)) for task in cfg.task_list()]


def _plan(store, run_dir, top, seeds, epochs, baselines, model, dataset, data=None,
          max_seeds=None, alpha=None, reference=None) -> dict:
    """Validate everything and decide the schedule before any row is stored."""
    cfg = SearchConfig.from_dict(store.config(), where=f"{run_dir} config")
    ev = cfg.evaluate or {}
    top = ev.get("top", 3) if top is None else top
    seeds = ev.get("seeds", 5) if seeds is None else seeds
    if top < 0 or seeds < 1:
        raise UserError(f"--top must be >= 0 and --seeds >= 1 (got {top}, {seeds})")
    if max_seeds == 0:  # --max-seeds 0: a fixed number of seeds, whatever [evaluate] says
        max_seeds, alpha = None, alpha
    else:
        max_seeds = ev.get("max_seeds") if max_seeds is None else max_seeds
        alpha = ev.get("alpha") if alpha is None and max_seeds is not None else alpha
    sequential = _sequential_design(seeds, max_seeds, alpha)
    reference = check_reference(reference or ev.get("reference") or "relu")
    baselines = parse_baselines(baselines or ev.get("baselines") or DEFAULT_BASELINES, reference)
    model_obj, model = _check_target(cfg, run_dir, model, dataset, data)
    found = (ranked_functions(store, top, cfg.variant_fitness, cfg.allow_linear, race=True)[0]
             if top else [])
    if top and not found:
        raise UserError(f"{run_dir} has no finished candidates to evaluate yet; run or resume the "
                        f"search first (gp-activations search --out {run_dir} --resume)")
    custom = (bool(cfg.data) or data is not None) and not dataset
    dataset, model, own = _resolve_target(cfg, dataset, model, custom)
    train_cfg = _train_config(cfg, ev, dataset, model, epochs, own, custom)
    # the run's larger test split, where it is evaluated on its own dataset
    test_size = (cfg.test_size if cfg.test_size is not None and not cfg.data and not custom
                 and dataset == get_dataset_info(cfg.dataset).name else None)
    if model_obj is None or isinstance(model_obj, str):
        model_obj = model
    if data is None and custom:
        data = cfg.data
    entries, aliases = _entries(found, baselines, cfg)
    return {"cfg": cfg, "seeds": seeds, "sequential": sequential, "reference": reference,
            "dataset": dataset, "model": model, "own": own,
            "test_split": _test_split(data if custom else dataset, test_size), "flags": aliases,
            "test_size": test_size,
            "aliases": {k for k, v in aliases.items() if v["trained_as"]},
            "model_obj": model_obj, "data_obj": data if custom else None,
            "train_cfg": train_cfg, "entries": entries,
            "protocol": protocol_key(train_cfg.to_dict(), dataset, model, test_size)}


def _check_target(cfg: SearchConfig, run_dir, model, dataset, data) -> tuple:
    """What to evaluate on must be given where the run cannot say (a multi-task run, a fitness
    function, Python objects); returns the model as given and its label."""
    if cfg.multi_task and not (dataset or model):
        raise UserError(f"{run_dir} searched {len(cfg.tasks)} tasks "
                        f"({', '.join(t['name'] for t in cfg.task_list())}): evaluate each with "
                        f"evaluate_tasks({str(run_dir)!r}), or give dataset= and model=")
    if cfg.fitness and not (dataset and model):
        raise UserError(f"{run_dir} was searched with a fitness function ({cfg.fitness}), not a "
                        f"dataset and model: give --dataset and --model to evaluate its functions")
    model_obj = model
    if model is not None and not isinstance(model, str):
        if not callable(model):
            raise UserError(f"model must be a registered name, 'file.py:function' or a callable "
                            f"taking an activation factory, got {type(model).__name__}")
        model = object_label(model)
    given = {"model": model_obj, "data": data}
    for key in ("model", "data"):
        stored = getattr(cfg, key)
        if is_object_label(stored) and given[key] is None and not (dataset and model):
            raise UserError(f"{run_dir} was searched with a Python {key} object ({stored}); pass the "
                            f"same objects: evaluate_run({str(run_dir)!r}, model=..., data=...) "
                            f"(or give another dataset and model)")
    return model_obj, model


def _resolve_target(cfg: SearchConfig, dataset, model, custom: bool) -> tuple:
    """(dataset, model, own): the names evaluated on, and whether they are the run's own."""
    run_dataset = cfg.dataset if cfg.data else get_dataset_info(cfg.dataset).name
    dataset = run_dataset if custom else get_dataset_info(dataset or cfg.dataset).name
    default_model = None if custom else get_dataset_info(dataset).default_model
    run_model = cfg.model or (None if cfg.data else get_dataset_info(run_dataset).default_model)
    model = model or (run_model if dataset == run_dataset else None) or default_model
    if model is not None and ":" not in str(model) and model not in MODELS and not is_object_label(model):
        raise UserError(f"unknown model {model!r}; known models: {', '.join(MODELS)}")
    return dataset, model, (dataset, model) == (run_dataset, run_model) and not cfg.multi_task


def _train_config(cfg: SearchConfig, ev: dict, dataset, model, epochs, own: bool, custom: bool):
    """The full schedule: the target's preset (with the run's ``[evaluate]`` overrides on its
    own model), or for a user's data the search's own schedule run to the end."""
    from .train import default_config

    overrides = dict(ev.get("train", {})) if own else {}
    if epochs is None and own:
        epochs = ev.get("epochs")
    overrides.update(epochs=epochs, per_channel=cfg.per_channel, fused=cfg.fused, threads=cfg.threads)
    if custom:  # no preset for a user's data: the search's own schedule, run to the end
        return cfg.train_config().replace(chance_check=False, blowup_limit=None,
                                          **{k: v for k, v in overrides.items() if v is not None})
    return default_config(dataset, "train", model, **overrides)


def _entries(found: list, baselines: list, cfg: SearchConfig) -> tuple[list, dict]:
    """The table's entries ``(label, kind, expression, primitives, params, candidate_id)``:
    the found functions, then the baselines; and the flagged found functions (equal to a
    baseline, or affine) -- one equal to a baseline that is trained anyway is trained once
    (unless the run normalises its functions: then it is not that baseline)."""
    entries, aliases = [], {}
    for rank, item in enumerate(found, 1):
        cand = item["candidate"]
        label = f"found #{rank}"
        entries.append((label, "found", cand.expression, cand.primitives, list(cand.params),
                        cand.id))
        equals = cfg.baseline_equal(item["equals"])
        if equals or item["linear"]:
            aliases[label] = {"equals": equals, "linear": item["linear"],
                              "expression": cand.expression, "primitives": cand.primitives,
                              "params": list(cand.params),
                              "trained_as": equals if equals in baselines else None}
    for name in baselines:
        act = zoo.get(name)
        entries.append((name, "baseline", act.expression, "pangaea", list(act.params), None))
    return entries, aliases


def _test_split(source, test_size=None) -> str:
    """Where the test split of ``source`` (a dataset name, a user's data) comes from."""
    from .data import describe_test_split
    from .references import resolve_reference

    if isinstance(source, str) and ":" in source:
        source = resolve_reference(source)
    return describe_test_split(source, test_size)


def _sequential_design(seeds: int, max_seeds, alpha) -> Optional[SequentialTest]:
    """The stopping rule of ``--max-seeds`` (None without it); bad input is one line."""
    if max_seeds is None:
        if alpha is not None:
            raise UserError(f"--alpha {alpha} is the level of a sequential evaluation: give "
                            f"--max-seeds too (or leave --alpha out)")
        return None
    if isinstance(max_seeds, bool) or not isinstance(max_seeds, int):
        raise UserError(f"--max-seeds must be a whole number of seeds, got {max_seeds!r}")
    if seeds < 2:
        raise UserError(f"--seeds {seeds} is the minimum of a sequential evaluation and must be "
                        f"at least 2 (a t-test needs two seeds per activation)")
    if max_seeds < seeds:
        raise UserError(f"--max-seeds {max_seeds} cannot hold the minimum of --seeds {seeds}: "
                        f"give --max-seeds >= {seeds}")
    alpha = 0.05 if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    return SequentialTest(float(alpha), seeds, max_seeds)


def _record_protocol(store, protocol: str, seeds: int, own: bool, test_split: str,
                     flags: dict, labels: list, test: Optional[SequentialTest] = None,
                     reference: str = "relu") -> None:
    """Remember, per protocol, how many seeds were asked for, where its test split comes from,
    the labels in table order, the flagged found functions (``found #1 = silu``: trained
    once, as the baseline) and the reference of the p-values -- :func:`summarize` and the
    report read them back.  A sequential evaluation also records its design (``sequential``:
    alpha, min_seeds, max_seeds)."""
    protocols = store.get_meta("final_protocols", {})
    protocols[protocol] = {"seeds": seeds, "own": own, "test_split": test_split,
                           "flags": flags, "labels": labels, "reference": reference}
    if test is not None:
        protocols[protocol]["sequential"] = {"alpha": test.alpha, "min_seeds": test.min_seeds,
                                             "max_seeds": test.max_seeds}
    store.set_meta("final_protocols", protocols)


# ---------------------------------------------------------------------------------------------
# sequential evaluation


def _sequential_test(design: dict) -> SequentialTest:
    return SequentialTest(design["alpha"], design["min_seeds"], design["max_seeds"])


@dataclass
class _Replay:
    targets: dict  # label -> seeds 0..n-1 it needs (so far)
    complete: bool  # every needed seed has finished and no comparison can get another look


def _replay(records: dict, labels: Sequence[str], test: SequentialTest,
            ref: str = "relu") -> _Replay:
    """The seeds each trained label needs, from the stored trainings ``{label: [rows]}``.

    Starts from ``test.min_seeds`` for every label and replays the rounds: while all the seeds
    needed so far have finished, every undecided comparison (label vs the reference ``ref``)
    asks for its next look -- its own seeds and the reference's (a failed seed has no accuracy and is made up by another,
    within ``max_seeds``).  Stops at the first round whose seeds are not all finished
    (``complete=False``: train them) or when nothing asks for more (``complete=True``)."""
    finished = {label: {} for label in labels}  # label -> {seed: accuracy or None (failed)}
    for label in labels:
        for r in records.get(label, []):
            if r.status == "done" and r.accuracy is not None:
                finished[label][r.seed] = r.accuracy
            elif r.status in ("done", "failed"):
                finished[label][r.seed] = None
    targets = {label: test.min_seeds for label in labels}
    while True:
        if any(seed not in finished[label] for label in labels for seed in range(targets[label])):
            return _Replay(targets, False)
        accs = {label: [finished[label][s] for s in range(targets[label])
                        if finished[label][s] is not None] for label in labels}
        want = dict(targets)
        for label in labels:
            if label == ref:
                continue
            d = test.decide(accs[label], accs[ref])
            if d.status is Status.MORE_SEEDS:
                want[label] = min(test.max_seeds,
                                  targets[label] + max(0, d.next_n - len(accs[label])))
                want[ref] = max(want[ref], min(
                    test.max_seeds, targets[ref] + max(0, d.next_n - len(accs[ref]))))
        if want == targets:
            return _Replay(targets, True)
        targets = want


def _run_sequential(store, protocol: str, trained: list, test: SequentialTest, run,
                    ref: str = "relu") -> None:
    """Rounds: schedule the seeds :func:`_replay` asks for, train those not finished (all
    labels of a round together, through ``run``), until every comparison is decided or at
    ``max_seeds``.  Finished rows are never retrained, so a resumed evaluation replays the
    rounds it had done and trains only what is missing."""
    labels = [e[0] for e in trained]
    while True:
        records = {}
        for r in store.final_trainings(protocol, seeds=test.max_seeds, labels=labels):
            records.setdefault(r.label, []).append(r)
        state = _replay(records, labels, test, ref)
        if state.complete:
            return
        for label, kind, expr, prims, params, cid in trained:
            store.schedule_final(label, kind, expr, prims, params, cid, state.targets[label],
                                 protocol)
        pending = sorted((r for r in store.final_trainings(protocol, status="pending",
                                                           labels=labels)
                          if r.seed < state.targets[r.label]), key=lambda r: (r.seed, r.id))
        if not pending:  # pragma: no cover - _replay asked for a seed schedule_final did not make
            raise RuntimeError(f"sequential evaluation: no training to run for {state.targets}")
        run(pending, sum(state.targets.values()) - len(pending))


def _decision_fields(test: SequentialTest, accs: list, ref: list, complete: bool) -> dict:
    """The row fields of one comparison with the reference, from its seeds and the reference's."""
    d = test.decide(accs, ref)
    status = d.status
    if status is Status.MORE_SEEDS and complete:  # max_seeds trained, too many failed
        status = Status.UNDECIDED_AT_MAX
    n = d.n if d.look else min(len(accs), len(ref))
    level = d.boundary if d.boundary is not None else test.boundaries[-1]
    mdd = None
    if n >= 2:
        std = math.sqrt((summarize_values(accs[:n]).std ** 2 + summarize_values(ref[:n]).std ** 2)
                        / 2.0)
        mdd = min_detectable_difference(std, n, level)
    return {"p_vs_ref": d.p, "decision": status.value, "decided_at": n, "level": level,
            "min_detectable": mdd}


def _schedule_rows(store, protocol, entries, seeds) -> None:
    for label, kind, expr, prims, params, cid in entries:
        store.schedule_final(label, kind, expr, prims, params, cid, seeds, protocol)


def _run_trainings(store, cfg, pending, train_cfg, dataset, model, data, executor, workers,
                   device, data_dir, task_timeout, progress, done_before, test_size=None) -> None:
    from .search.executors import default_task_timeout, device_slots, execute
    from .search.jobs import Job, JobKey, JobKind

    device, gpus = device_slots(device or cfg.device)
    kind = executor or cfg.executor
    jobs = [Job(JobKey(JobKind.FINAL, row.id), row.expression, row.primitives, tuple(row.params),
                dataset=dataset, model=model, data=data, train=train_cfg.to_dict(),
                seed=row.seed, device=device, threads=cfg.threads, split="test",
                data_dir=data_dir or cfg.data_dir, verify=cfg.verify, download=cfg.download,
                normalize=cfg.trains_normalized(row.kind == "found"),  # as the search trained it
                test_size=test_size)
            for row in pending]

    def on_result(result):
        metrics = result.metrics or {}
        accuracy = metrics.get("accuracy") if result.ok else None
        store.finish_final(result.key.id, str(result.status), accuracy,
                           {**metrics, "error": result.error})

    execute(jobs, lambda job: store.start_final(job.key.id), on_result, executor=kind,
            workers=workers or cfg.workers, threads=cfg.threads,
            timeout=task_timeout or cfg.task_timeout or default_task_timeout(kind, train_cfg),
            gpus=gpus, ray_address=cfg.ray_address, run_dir=store.run_dir,
            progress=dict(total=done_before + len(jobs), initial=done_before, unit="run",
                          desc="evaluate", disable=not progress))


def summarize(store: RunStore, protocol: str, labels: Sequence[str],
              seeds: Optional[int] = None) -> list[ResultRow]:
    """One row per label: statistics over seeds ``0..seeds-1`` (all stored seeds if None).

    Seeds whose training failed (diverged, timed out) are not averaged in; they are counted
    in ``failed`` so that an unstable activation cannot hide behind its good seeds."""
    rows = []
    by_label = {}
    recorded = store.get_meta("final_protocols", {}).get(protocol, {})
    flags = recorded.get("flags", {})
    ref = recorded.get("reference", "relu")  # (earlier evaluations: always ReLU)
    design = recorded.get("sequential")
    test = _sequential_test(design) if design else None
    for r in store.final_trainings(protocol, seeds=test.max_seeds if test else seeds):
        by_label.setdefault(r.label, []).append(r)
    if test is not None:  # the seeds each label needed, replayed from the stored accuracies
        trained = [lb for lb in labels if not flags.get(lb, {}).get("trained_as")]
        state = _replay(by_label, trained, test, ref)
        by_label = {lb: [r for r in recs if r.seed < state.targets.get(lb, 0)]
                    for lb, recs in by_label.items()}
    ref_accs = [r.accuracy for r in by_label.get(ref, [])
                if r.status == "done" and r.accuracy is not None]
    for label in labels:
        flag = flags.get(label, {})
        recs = by_label.get(flag.get("trained_as") or label, [])
        if not recs:
            continue
        accs = [r.accuracy for r in recs if r.status == "done" and r.accuracy is not None]
        summary = summarize_values(accs)
        is_ref = (flag.get("trained_as") or label) == ref  # (a found function equal to it too)
        extra = {"p_vs_ref": None if is_ref else welch_p(accs, ref_accs)}
        if test is not None and not is_ref:
            extra = _decision_fields(test, accs, ref_accs, state.complete)
        rows.append(ResultRow(label, "found" if flag else recs[0].kind,
                              flag.get("expression", recs[0].expression),
                              flag.get("params", list(recs[0].params)), accs, summary.mean,
                              summary.std, primitives=flag.get("primitives", recs[0].primitives),
                              failed=sum(r.status == "failed" for r in recs),
                              equals=flag.get("equals"), linear=bool(flag.get("linear")),
                              reference=ref, **extra))
    finite = [r for r in rows if not math.isnan(r.mean)]
    if finite:
        max(finite, key=lambda r: r.mean).best = True
    return rows


def _sequential(rows: Sequence[ResultRow]) -> bool:
    return any(r.decision is not None for r in rows)


def write_results(run_dir: Path, rows: Sequence[ResultRow], epochs, dataset, model,
                  stem: str = "results") -> None:
    """``stem.csv`` and ``stem.tex``.  A sequential evaluation appends the columns decision,
    seeds_needed (per arm, at the deciding look), level (that look's nominal significance
    level) and min_detectable (accuracy difference, as a fraction like mean)."""
    with open(run_dir / f"{stem}.csv", "w", newline="") as fh:
        fh.write(csv_table(rows).csv())
    (run_dir / f"{stem}.tex").write_text(latex_table(rows, epochs, dataset, model))


_CSV_COLUMNS = ("label", "kind", "expression", "params", "n", "mean", "std", "p_vs_relu", "best",
                "accuracies", "failed")  # p_vs_<reference>: p_vs_silu with --reference silu
_SEQUENTIAL_CSV_COLUMNS = ("decision", "seeds_needed", "level", "min_detectable")


def csv_table(rows: Sequence[ResultRow]) -> Table:
    """``results.csv``: every row's numbers in full (accuracies as fractions)."""
    sequential = _sequential(rows)
    columns = [f"p_vs_{_reference(rows)}" if c == "p_vs_relu" else c for c in _CSV_COLUMNS]
    table = Table(*columns, *(_SEQUENTIAL_CSV_COLUMNS if sequential else ()))
    for r in rows:
        seq = ([r.decision or "", number(r.decided_at, "d", ""), number(r.level, ".6g", ""),
                number(r.min_detectable, ".6f", "")] if sequential else [])
        table.add(r.display_label, r.kind, r.expression, json.dumps(r.params), r.n,
                  f"{r.mean:.6f}", f"{r.std:.6f}", number(r.p_vs_ref, ".6g", ""), int(r.best),
                  " ".join(f"{a:.6f}" for a in r.accuracies), r.failed, *seq)
    return table


def _reference(rows: Sequence[ResultRow]) -> str:
    """The reference of a table's p-values (``relu`` unless the evaluation chose another)."""
    return rows[0].reference if rows else "relu"


_TITLES = {"relu": "ReLU", "silu": "SiLU", "gelu": "GELU", "elu": "ELU", "selu": "SELU",
           "mish": "Mish", "softplus": "softplus", "tanh": "tanh"}


def reference_title(rows: Sequence[ResultRow]) -> str:
    """The reference of a table's p-values as a title ("ReLU", "SiLU", ...)."""
    name = _reference(rows)
    return _TITLES.get(name, name)


def _points(fraction: Optional[float]) -> Optional[float]:
    """An accuracy difference in percentage points (None stays None)."""
    return None if fraction is None else 100 * fraction


def _function_tex(r: ResultRow) -> str:
    if r.kind == "baseline":
        return tex_escape(r.label)
    return f"${expression_latex(r.expression, r.primitives, r.params)}$"


def latex_table(rows: Sequence[ResultRow], epochs, dataset, model) -> str:
    """``results.tex``: a booktabs table of test accuracy (%), best mean in bold."""
    sequential = _sequential(rows)
    caption = (rf"Test accuracy (\%) on {tex_escape(dataset)} / {tex_escape(model)}, "
               rf"{epochs:g} epochs, mean $\pm$ std over seeds; $p$: Welch's $t$-test against "
               rf"{tex_escape(reference_title(rows))}. Best mean in bold.")
    if sequential:
        caption += (r" Seeds were added until a group-sequential test (alpha spending) decided"
                    r" or the maximum was reached; $p$ is that of the deciding look, MDD the"
                    r" smallest difference (points) it detects with 80\% power.")
    table = Table(Column("Activation"), Column("Function"), Column("Accuracy", ">"),
                  Column("$n$", ">"),
                  Column(rf"$p$ vs.\ {tex_escape(reference_title(rows))}", ">"),
                  *((Column("Decision"), Column("MDD")) if sequential else ()))
    for r in rows:
        seq = (["--" if r.decision is None else f"{r.decision} ({r.decided_at})",
                number(_points(r.min_detectable), ".2f", "--")] if sequential else [])
        table.add(tex_escape(r.display_label), _function_tex(r),
                  percent_pm(r.mean, r.std, pm=r" $\pm$ ", bold="latex" if r.best else ""),
                  r.n, p_value(r.p_vs_ref, "--"), *seq)
    return table.latex(caption)


def markdown_table(rows: Sequence[ResultRow]) -> str:
    """The report's table: test accuracy (%) mean ± std, the best mean in bold."""
    table = Table(Column("activation"), Column("test accuracy (%)", ">"), Column("n", ">"),
                  Column(f"p vs {reference_title(rows)}", ">"), Column("function"))
    for r in rows:
        table.add(r.display_label, percent_pm(r.mean, r.std, bold="markdown" if r.best else ""),
                  r.n, p_value(r.p_vs_ref), with_params(code(r.expression), r.params, " @ "))
    return table.markdown()


_SEQUENTIAL_NOTE = ("(sequential: seeds added until Welch's t-test vs {ref}, with alpha spending "
                    "over the looks, is below the look's level -- different -- or the maximum is "
                    "reached; p, seeds and level are those of the deciding look; min. diff: the "
                    "smallest difference, in points, that look detects with 80 % power)")


def format_table(rows: Sequence[ResultRow]) -> str:
    """The console's table: test accuracy (%) mean ± std (* the best mean), seeds, failed
    seeds, p vs the reference (and a sequential evaluation's decision), the function."""
    sequential = _sequential(rows)
    table = Table(Column("activation", width=12, fit=True),
                  Column("test accuracy", ">", 17, sep=" "), Column("n", ">", 3, sep=" "),
                  Column(f"p vs {_reference(rows)}", ">", 10, sep=" "),
                  *((Column("level", ">", 8, sep=" "), Column("decision", width=16),
                     Column("seeds", ">", 5, sep=" "), Column("min. diff", ">", 9, sep=" "))
                    if sequential else ()),
                  Column("function"))
    for r in rows:
        seq = ([number(r.level, ".2g", ""), r.decision or "", number(r.decided_at, "d", ""),
                number(_points(r.min_detectable), ".2f", "")]
               if sequential else [])
        table.add(r.display_label,
                  percent_pm(r.mean, r.std, "7.2f", "5.2f") + (" *" if r.best else "  "),
                  f"{r.n:3d}" + (f" ({r.failed} failed)" if r.failed else ""),
                  p_value(r.p_vs_ref), *seq, with_params(r.expression, r.params))
    return "\n".join([table.text(), "(* best mean)"] + ([_SEQUENTIAL_NOTE.format(ref=_reference(rows))] if sequential else []))

"""A search's configuration resolved once, before the driver starts.

:func:`resolve_plan` reads the config (a new run's, or the stored one of a resumed run with
the allowed changes applied), checks everything that can reject it -- the search space, the
initial expressions, the strategy, the model and dataset, references to user code -- and
returns a :class:`SearchPlan`: the typed objects the driver works with (primitive set,
toolbox, strategy, fidelity settings, surrogate, the job template).  Nothing after it climbs
back into the config, the zoo or data loading; nothing before it writes to the run directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import operators
from ..activation import Activation
from ..errors import UserError
from ..primitive_sets import ActivationPrimitiveSet, load_primitive_set
from ..references import resolve_reference
from .config import SearchConfig, is_object_label, object_label
from .evolution import make_toolbox
from .executors import device_slots
from .fidelities import Aggregate, FidelityKind, Rung, Task
from .jobs import Job, JobKey, JobKind
from .store import RunStore, is_run_dir
from .strategies import Strategy, make_strategy

#: Config keys that may change when a run is resumed (everything else defines the run).
RESUME_OVERRIDABLE = {"generations", "budget", "executor", "workers", "ray_address", "task_timeout",
                      "race_top", "race_min_seeds", "race_max_seeds", "race_alpha",
                      "race_baselines", "race_epochs", "race_screen"}


#: Race settings that choose its entrants and their schedule: fixed once a race has started
#: (more seeds, ``race_max_seeds``, or another ``race_alpha`` may still change).
RACE_DEFINING = {"race_top", "race_screen", "race_baselines", "race_epochs"}


@dataclass(frozen=True, eq=False)
class SearchPlan:
    """What a search runs with, resolved and checked."""

    config: SearchConfig
    pset: ActivationPrimitiveSet
    toolbox: Any
    strategy: Strategy
    fidelity: FidelityKind
    rungs: tuple  # of Rung (halving), else ()
    tasks: tuple  # of Task (multi-task), else ()
    aggregate: Aggregate
    surrogate: Any  # a Surrogate or None
    base_job: Job  # every job's template: task, schedule, seed, device
    gpus: int
    stored_config: dict  # what the run directory records

    @property
    def multi_task(self) -> bool:
        return bool(self.tasks)

    def is_reference(self, row) -> bool:
        """Plain ``relu(x)`` of the built-in ReLU operator: the reference every table (and the
        multi-task normalisation) compares with."""
        return row.expression == "relu(x)" and not row.params and \
            self.pset.operators.get("relu") is operators.get("relu")


def stored_or_new_config(config: SearchConfig, out, resume: bool, overrides: Optional[dict]):
    """(config, store or None, changed keys): a resumed run's stored config with the allowed
    changes applied (a change to a key that defines the run is an error), else ``config``."""
    run_dir = Path(out)
    if not resume:
        return config, None, {}
    if not is_run_dir(run_dir):
        raise UserError(f"--resume: {run_dir} is not a search run (no run.sqlite); start one "
                        f"with --out {run_dir}")
    store = RunStore.open(run_dir)
    store.lock()  # before anything is written: a live search may own this run
    stored = store.config()
    # None leaves a key as stored -- except generations, where None means "no limit (until
    # the budget is spent)"
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)
                if f.default is not dataclasses.MISSING}
    # (a key a run made before it existed does not store: its value is the field's default)
    changed = {k: v for k, v in (overrides or {}).items()
               if (v is not None or k == "generations") and stored.get(k, defaults.get(k)) != v}
    fixed = sorted(set(changed) - RESUME_OVERRIDABLE)
    if fixed:
        store.unlock()
        raise UserError(f"--resume: {fixed[0]!r} defines the run and cannot change "
                        f"(only {', '.join(sorted(RESUME_OVERRIDABLE))} can)")
    raced = sorted(set(changed) & RACE_DEFINING)
    if raced and store.get_meta("race_entrants"):
        store.unlock()
        raise UserError(f"--resume: this run's final race has started (its entrants are "
                        f"stored), so {raced[0]!r} cannot change now: resume with the race's "
                        f"settings ({raced[0]} = {stored.get(raced[0], defaults.get(raced[0]))!r}), "
                        f"or search again into a new --out")
    return SearchConfig.from_dict({**stored, **changed}, where="stored config"), store, changed


def resolve_plan(config: SearchConfig, *, model=None, data=None, fitness=None,
                 check_task: bool = True) -> SearchPlan:
    """Check and resolve ``config`` (with a caller's Python ``model``/``data``/``fitness``
    objects, which take the place of the config's references)."""
    cfg = config
    model = model if model is not None else cfg.model
    data = data if data is not None else cfg.data
    fitness = fitness if fitness is not None else cfg.fitness
    for key, value in (("model", model), ("data", data), ("fitness", fitness)):
        if is_object_label(value):
            raise UserError(f"this run was started from Python with a {key} object; resume it "
                            f"from Python passing the same {key}=")
        if isinstance(value, str) and ":" in value:
            resolve_reference(value)  # a typo fails now, not in every task
    pset = load_primitive_set(cfg.primitives)
    toolbox = make_toolbox(pset, max_height=cfg.max_height, max_size=cfg.max_size,
                           shapes=tuple(cfg.init_shapes), weights=cfg.mutation_weights)
    train_config = cfg.train_config()
    for text in cfg.init_expressions:  # a typo must not leave a half-made run behind
        try:
            Activation.from_string(text, pset)
        except UserError as exc:
            raise UserError(f"init_expressions: {text!r}: {exc}") from None
    strategy = make_strategy(cfg.strategy, toolbox, cfg)
    fidelity = FidelityKind(cfg.fidelity)
    rungs = tuple(Rung(r["epochs"], r["seeds"]) for r in cfg.rung_list()) \
        if fidelity is FidelityKind.HALVING else ()
    tasks = tuple(Task.from_dict(t) for t in cfg.task_list()) if cfg.multi_task else ()
    if check_task:
        _check_task(cfg, tasks, model, data, fitness)
    device, gpus = device_slots(cfg.device)
    base = Job(JobKey(JobKind.CANDIDATE, 0), expression="x", primitives=pset.spec,
               dataset=cfg.dataset, model=model, data=data, fitness=fitness,
               train=train_config.to_dict(), seed=cfg.fitness_seed, device=device,
               threads=cfg.threads, data_dir=cfg.data_dir, verify=cfg.verify,
               download=cfg.download, lookup=cfg.lookup, normalize=cfg.normalize,
               val_size=cfg.val_size, test_size=cfg.test_size)
    return SearchPlan(cfg, pset, toolbox, strategy, fidelity, rungs, tasks,
                      Aggregate(cfg.task_aggregate), _surrogate(cfg, model, data, tasks), base,
                      gpus, _storable(cfg, pset, model, data, fitness))


def _check_task(cfg: SearchConfig, tasks, model, data, fitness) -> None:
    """The model fits the dataset (each task's, in a multi-task search)."""
    from ..train import check_model

    if tasks:
        for i, task in enumerate(tasks):
            try:
                check_model(task.model, task.dataset, data_dir=cfg.data_dir, verify=cfg.verify,
                            download=cfg.download)
            except UserError as exc:
                raise UserError(f"config: tasks[{i}] ({task.name}): {exc}") from None
    elif not fitness:
        check_model(model, data if data is not None else cfg.dataset, data_dir=cfg.data_dir,
                    verify=cfg.verify, download=cfg.download)


def _surrogate(cfg: SearchConfig, model, data, tasks):
    if not cfg.surrogate:
        return None
    from .surrogate import NetworkProbe, Surrogate

    network = None
    if isinstance(model or cfg.dataset, str) and data is None and not tasks:
        try:
            network = NetworkProbe(cfg.dataset, model if isinstance(model, str) else None,
                                   data_dir=cfg.data_dir, verify=cfg.verify)
        except UserError:
            network = None  # a dataset that needs a download: probe features only
    return Surrogate(cfg.surrogate, network, seed=cfg.seed)


def _absolute(reference: str) -> str:
    path, _, attr = reference.rpartition(":")
    return f"{Path(path).expanduser().resolve()}:{attr}"


def _storable(cfg: SearchConfig, pset, model, data, fitness) -> dict:
    """The config as stored in the run: file references made absolute (so that resume and
    evaluate work from any directory), Python objects named but not stored."""
    values = cfg.to_dict()
    for key, obj in (("model", model), ("data", data), ("fitness", fitness)):
        if obj is not None and not isinstance(obj, str):
            values[key] = object_label(obj)
        elif isinstance(obj, str) and ".py:" in obj:
            values[key] = _absolute(obj)
    values["primitives"] = pset.spec  # a built-in name, an absolute path or module:attr
    if values.get("lookup"):  # resume, evaluate and report work from any directory
        values["lookup"] = str(Path(values["lookup"]).expanduser().resolve())
    if ".py:" in values.get("strategy", ""):
        values["strategy"] = _absolute(values["strategy"])
    return values

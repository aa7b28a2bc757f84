"""The search's configuration: one dataclass, read from TOML and overridden by flags.

A TOML file holds :class:`SearchConfig` fields at the top level, the training budget in a
``[train]`` table (any :class:`~gp_activations.train.TrainConfig` field) and mutation weights
in ``[mutation_weights]``::

    dataset = "mnist1d"
    population = 16
    generations = 8
    executor = "process"
    workers = 2

    [train]
    epochs = 8

Unknown keys and values of the wrong type are reported as one line naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError, did_you_mean, unknown_keys
from ..train import TrainConfig
from .evolution import MUTATIONS, SHAPES


class _ConfigChecks:
    """SearchConfig's validation: every check that can reject a config, one line each (the
    fields live on :class:`SearchConfig`)."""

    def _check_split_sizes(self) -> None:
        if self.val_size is None and self.test_size is None:
            return
        if self.tasks is not None or self.data is not None or self.fitness is not None:
            raise UserError("config: val_size / test_size size a built-in dataset's splits "
                            "(mnist1d_hard); they do not combine with 'tasks', 'data' or "
                            "'fitness'")
        from ..data import check_split_sizes

        try:
            check_split_sizes(self.dataset, self.val_size, self.test_size)
        except UserError as exc:
            raise UserError(f"config: {exc}") from None

    def validate(self) -> None:
        from .strategies import check_strategy_name

        check_strategy_name(self.strategy)
        choices = {"selection": ("softmax", "tournament"), "fidelity": ("full", "halving"),
                   "variant_fitness": ("best", "plain"), "executor": ("serial", "process", "ray"),
                   "task_aggregate": ("mean", "min")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"config: {key!r} must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, key)!r}{did_you_mean(getattr(self, key), allowed)}")
        if not (isinstance(self.fused, bool) or self.fused == "auto"):
            raise UserError(f"config: 'fused' must be true, false or \"auto\", got {self.fused!r}")
        self._check_split_sizes()
        positive = ("population", "workers", "threads", "max_height", "max_size",
                    "tournament_size")
        if self.generations is not None and self.generations < 1:
            raise UserError(f"config: 'generations' must be >= 1, got {self.generations!r}")
        if self.generations is None and self.budget is None:
            raise UserError("config: without 'generations' a search needs a 'budget' (else it "
                            "never ends); give one of them")
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"config: {key!r} must be >= 1, got {getattr(self, key)!r}")
        for key in ("offspring", "budget"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"config: {key!r} must be >= 1, got {value!r}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"config: 'epochs' must be a positive, finite number, got {self.epochs!r}")
        if not self.temperature > 0:
            raise UserError(f"config: 'temperature' must be positive, got {self.temperature!r}")
        if not 0 <= self.crossover <= 1:
            raise UserError(f"config: 'crossover' must be in [0, 1], got {self.crossover!r}")
        if self.elitism < 0 or self.param_variants < 0 or self.max_params < 1:
            raise UserError("config: 'elitism' and 'param_variants' must be >= 0, 'max_params' >= 1")
        if not self.init_shapes or any(sh not in SHAPES for sh in self.init_shapes):
            bad = next((sh for sh in self.init_shapes if sh not in SHAPES), None)
            raise UserError(f"config: 'init_shapes' must be a non-empty list of {', '.join(SHAPES)}"
                            + (f"; got {bad!r}" if bad else ""))
        for name, weight in self.mutation_weights.items():
            if name not in MUTATIONS:
                raise UserError(f"config: unknown mutation {name!r} in 'mutation_weights'"
                                f"{did_you_mean(name, MUTATIONS)} "
                                f"(known: {', '.join(MUTATIONS)})")
            if not isinstance(weight, (int, float)) or weight < 0:
                raise UserError(f"config: mutation_weights.{name} must be a number >= 0")
        if self.mutation_weights and not any(
                self.mutation_weights.get(m, 1.0 if m != "subtree" else 0.0) > 0 for m in MUTATIONS):
            raise UserError("config: every mutation weight is 0; at least one must be positive")
        self._validate_tasks()
        self.train_config()  # validates the [train] table
        self._validate_evaluate()
        self._validate_fidelity()
        self._validate_surrogate()
        self._validate_race()

    def _validate_fidelity(self) -> None:
        if self.rungs and self.fidelity != "halving":
            raise UserError("config: 'rungs' are for fidelity = \"halving\"; set it or remove them")
        if self.fidelity != "halving":
            return
        if not (math.isfinite(self.eta) and self.eta > 1):
            raise UserError(f"config: 'eta' must be a number > 1 (the share promoted per rung "
                            f"is 1/eta), got {self.eta!r}")
        if self.tasks is not None or self.fitness is not None:
            raise UserError("config: fidelity = \"halving\" needs the trainer's epochs: it does "
                            "not combine with 'tasks' or a 'fitness' function")
        self.rung_list()

    def _validate_surrogate(self) -> None:
        from .surrogate import SURROGATES

        if self.surrogate is not None and self.surrogate not in SURROGATES:
            raise UserError(f"config: 'surrogate' must be one of {', '.join(SURROGATES)}, got "
                            f"{self.surrogate!r}{did_you_mean(self.surrogate, SURROGATES)}")
        if not (math.isfinite(self.surrogate_pool) and self.surrogate_pool >= 1):
            raise UserError(f"config: 'surrogate_pool' must be >= 1, got {self.surrogate_pool!r}")
        if not 0 <= self.surrogate_explore <= 1:
            raise UserError(f"config: 'surrogate_explore' must be in [0, 1], got "
                            f"{self.surrogate_explore!r}")
        if self.surrogate_min < 2:
            raise UserError(f"config: 'surrogate_min' must be >= 2, got {self.surrogate_min!r}")
        if self.lookup is not None:
            from ..tabular import load_table

            if self.tasks is not None or self.fitness is not None or self.data is not None:
                raise UserError("config: 'lookup' reads one table's fitness: it does not "
                                "combine with 'tasks', 'fitness' or 'data'")
            if self.param_variants:
                raise UserError("config: a lookup table holds plain functions only; set "
                                "param_variants = 0 (--param-variants 0)")
            if self.normalize:
                raise UserError("config: a lookup table holds unnormalised functions' "
                                "fitness; set normalize = false (drop --normalize)")
            if self.val_size is not None or self.test_size is not None:
                raise UserError("config: a lookup table holds fitness on the dataset's own "
                                "splits; drop val_size / test_size")
            table = load_table(self.lookup)  # missing or malformed: one line, now
            table.check_task(self.dataset, self.model)
            budgets = ([(r["epochs"], s) for r in self.rung_list() for s in range(r["seeds"])]
                       if self.fidelity == "halving" else [(self.train_config().epochs, 0)])
            for epochs, seed in budgets:  # every training the search will ask the table for
                table.column(epochs, self.fitness_seed + seed)

    def _validate_tasks(self) -> None:
        if self.tasks is None:
            return
        if not self.tasks:
            raise UserError("config: 'tasks' is empty; list at least one {dataset, model} table "
                            "(or leave 'tasks' out for a single-task search)")
        for key in ("model", "data", "fitness"):
            if getattr(self, key) is not None:
                raise UserError(f"config: give each task's model in its 'tasks' entry, not a "
                                f"top-level {key!r} (a multi-task search uses registered datasets "
                                f"and models)")
        known = {"dataset": str, "model": str, "weight": (int, float), "epochs": (int, float),
                 "train": dict}
        seen = set()
        for i, entry in enumerate(self.tasks):
            where = f"config: tasks[{i}]"
            if not isinstance(entry, dict):
                raise UserError(f"{where} must be a table like {{dataset = \"mnist1d\", model = "
                                f"\"cnn1d\"}}, got {entry!r}")
            _check_table(entry, known, f"{where}:", f"{where}: {{key!r}}")
            if "dataset" not in entry:
                raise UserError(f"{where} has no 'dataset' (e.g. dataset = \"mnist1d\")")
            names = _dataset_names()
            from ..data import get_dataset_info

            try:
                info = get_dataset_info(entry["dataset"])
            except UserError:
                raise UserError(f"{where}: unknown dataset {entry['dataset']!r}"
                                f"{did_you_mean(entry['dataset'], names)} (known: "
                                f"{', '.join(names)})") from None
            from ..models import MODELS

            model = entry.get("model", info.default_model)
            if model not in MODELS:
                raise UserError(f"{where}: unknown model {model!r}{did_you_mean(model, MODELS)} "
                                f"(known: {', '.join(MODELS)})")
            weight = entry.get("weight", 1.0)
            if not (math.isfinite(weight) and weight > 0):
                raise UserError(f"{where}: 'weight' must be a positive number, got {weight!r}")
            epochs = entry.get("epochs", 1.0)
            if not (math.isfinite(epochs) and epochs > 0):
                raise UserError(f"{where}: 'epochs' must be a positive, finite number, got {epochs!r}")
            if (info.name, model) in seen:
                raise UserError(f"{where}: {info.name}/{model} is listed twice")
            seen.add((info.name, model))
        if self.task_aggregate == "min" and any(e.get("weight", 1.0) != 1.0 for e in self.tasks):
            raise UserError("config: task weights apply to task_aggregate = \"mean\" only; "
                            "remove them or use the mean")
        self.dataset = get_dataset_info(self.tasks[0]["dataset"]).name
        self.task_list()  # validates each task's [train] table

    def _validate_race(self) -> None:
        if self.race_screen and not self.race_top:
            raise UserError(f"config: race_screen ({self.race_screen}) screens the entrants of "
                            f"a final race: set race_top too (how many of them race)")
        if not self.race_top:
            return
        if self.race_top < 2:
            raise UserError(f"config: race_top must be 0 (no race) or >= 2 (a race needs two "
                            f"functions to compare), got {self.race_top}")
        if self.race_min_seeds < 2 or self.race_max_seeds < self.race_min_seeds:
            raise UserError(f"config: a race needs race_min_seeds >= 2 and race_max_seeds >= "
                            f"race_min_seeds (its budget must hold the minimum seeds), got "
                            f"{self.race_min_seeds} and {self.race_max_seeds}")
        if self.race_screen and self.race_screen <= self.race_top:
            raise UserError(f"config: race_screen must be 0 (no screen) or more than race_top "
                            f"({self.race_top}: the screen picks the race's entrants among "
                            f"more functions), got {self.race_screen}")
        if not (0 < self.race_alpha < 1):
            raise UserError(f"config: race_alpha must be in (0, 1), got {self.race_alpha!r}")
        if self.race_epochs is not None and not (math.isfinite(self.race_epochs)
                                                 and self.race_epochs > 0):
            raise UserError(f"config: race_epochs must be a positive number, got "
                            f"{self.race_epochs!r}")
        from .. import zoo

        for name in self.race_baselines:
            if name not in zoo.names():
                raise UserError(f"config: race_baselines: unknown zoo function {name!r}"
                                f"{did_you_mean(name, zoo.names())}")
        if self.lookup or self.tasks is not None:
            raise UserError("config: the final race trains its functions: it does not run "
                            "with 'lookup' or 'tasks' (set race_top = 0)")

    def _validate_evaluate(self) -> None:
        ev = self.evaluate
        known = {"top": int, "seeds": int, "epochs": (int, float), "baselines": (list, str),
                 "train": dict, "max_seeds": int, "alpha": float, "reference": str}
        _check_table(ev, known, "config:", "config: [evaluate] {key!r}", " in [evaluate]")
        if ev.get("top", 0) < 0 or ev.get("seeds", 1) < 1 or not (
                math.isfinite(ev.get("epochs", 1)) and ev.get("epochs", 1) > 0):
            raise UserError("config: [evaluate] needs top >= 0, seeds >= 1 and a finite epochs > 0")
        from .. import zoo

        if "max_seeds" in ev and not 2 <= ev.get("seeds", 5) <= ev["max_seeds"]:
            raise UserError(f"config: [evaluate] max_seeds {ev['max_seeds']} must hold the minimum "
                            f"seeds {ev.get('seeds', 5)}, and seeds must be at least 2")
        if "alpha" in ev and ("max_seeds" not in ev or not 0 < ev["alpha"] < 1):
            raise UserError(f"config: [evaluate] alpha {ev['alpha']!r} is the level of an "
                            f"evaluation that decides: set max_seeds too, and 0 < alpha < 1")
        if "reference" in ev and ev["reference"] not in zoo.names():
            raise UserError(f"config: [evaluate] reference {ev['reference']!r} is not a zoo "
                            f"activation{did_you_mean(ev['reference'], zoo.names())}")
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(ev.get("train", {})) - fields
        if unknown:
            key = sorted(unknown)[0]
            raise UserError(f"config: unknown key {key!r} in [evaluate.train]{did_you_mean(key, fields)}")


@dataclass
class SearchConfig(_ConfigChecks):
    """Every knob of a search.  The defaults make a modest serial run on mnist1d / cnn1d;
    ``experiments/mnist1d.toml`` (what ``make run`` uses) tunes them for 2 CPU workers."""

    # task
    dataset: str = "mnist1d"
    model: Optional[str] = None  # registered name or "module:function" / "file.py:function"
    data: Optional[str] = None  # "module:function" returning a Dataset or tensors
    fitness: Optional[str] = None  # "module:function(activation, seed) -> float | dict"
    data_dir: Optional[str] = None
    verify: bool = True
    download: bool = False
    primitives: str = "pangaea"
    # several tasks at once (a "general" function): [{dataset, model, weight, epochs, train}];
    # fitness = the weighted mean (or the min) over tasks of accuracy / ReLU's accuracy there
    tasks: Optional[list] = None
    task_aggregate: str = "mean"  # or "min"
    # evolution
    # "evolution", "random" (the same space and budget, no selection) or "module:Class"
    # (a gp_activations.search.strategies.Strategy subclass)
    strategy: str = "evolution"
    population: int = 16
    offspring: Optional[int] = None  # new functions per generation (default: population)
    generations: Optional[int] = 8  # None: until the budget is spent
    budget: Optional[int] = None  # maximum number of candidates trained
    # successive halving within a generation: every new candidate trains the first rung, the
    # best 1/eta of a rung go on to the next; fitness = the mean of the highest rung reached
    fidelity: str = "full"  # or "halving"
    eta: float = 3.0
    rungs: list = field(default_factory=list)  # [{epochs, seeds}], default [E/3, E] epochs
    # surrogate pre-screening: each generation proposes surrogate_pool times the functions it
    # trains and trains the predicted best (plus an exploration share drawn at random)
    surrogate: Optional[str] = None  # "forest" (random forest) or "ridge"
    surrogate_pool: float = 4.0
    surrogate_explore: float = 0.25
    surrogate_min: int = 16  # finished functions before the surrogate starts filtering
    lookup: Optional[str] = None  # a tabular benchmark CSV: fitness is read, not trained
    selection: str = "softmax"  # or "tournament"
    temperature: float = 0.02  # softmax temperature, in units of accuracy
    tournament_size: int = 3
    elitism: int = 2  # the best parents always survive
    crossover: float = 0.0  # probability that an offspring comes from cxOnePoint
    mutation_weights: dict = field(default_factory=dict)
    max_height: int = 6
    max_size: int = 24
    init_zoo: bool = True  # generation 0 = the 12 plain zoo functions + random trees up to population
    init_shapes: list = field(default_factory=lambda: list(SHAPES))  # random trees' shapes
    init_expressions: list = field(default_factory=list)  # extra seeds (pangaea-style text)
    # learnable parameters
    param_variants: int = 3  # parametric variants per new function, besides the plain one
    max_params: int = 3  # learnable scalars per variant (1..max_params, random)
    variant_fitness: str = "best"  # "best" variant or the "plain" function's fitness
    allow_linear: bool = False  # rank affine functions (x, 2x + 1) as discoveries (flagged)
    per_channel: bool = False
    # output normalisation (AQuaSurF's): every candidate trains as (f(x) - shift) / scale, the
    # constants making its output zero-mean, unit-variance under N(0, 1) inputs
    normalize: bool = False
    # mnist1d_hard's validation / test split sizes (default 1,000 / 4,000; up to 200,000,
    # generated once and cached): larger splits tell close functions apart
    val_size: Optional[int] = None
    test_size: Optional[int] = None
    # screening
    max_forward_cost: float = 400.0  # reject trees estimated slower than this many ReLUs (0: off)
    # evaluation
    epochs: Optional[float] = None  # fitness epochs (shortcut for train.epochs)
    train: dict = field(default_factory=dict)
    # defaults of `gp-activations evaluate`: top, seeds, epochs, baselines, train (overrides of
    # the dataset's full "train" schedule, e.g. lr or weight_decay)
    evaluate: dict = field(default_factory=dict)
    fitness_seed: int = 0  # every candidate trains with the same seed and data order
    # the final race (after the last generation): the top race_top functions and the
    # race_baselines train the full schedule on the validation split, seeds added to those
    # within reach of the leader until a paired test separates them (0: no race)
    race_top: int = 0
    race_min_seeds: int = 3
    race_max_seeds: int = 10
    race_alpha: float = 0.05
    race_baselines: list = field(default_factory=lambda: ["silu", "gelu", "relu"])
    race_epochs: Optional[float] = None  # default: the dataset's full schedule
    # screen a wider field first: the top race_screen functions train one seed of the race's
    # schedule, and the best race_top of them by that accuracy race (0: no screen)
    race_screen: int = 0
    executor: str = "serial"  # serial, process or ray
    workers: int = 1
    threads: int = 1  # CPU threads per evaluation (fixed so that executors agree exactly)
    device: str = "auto"
    # torch.compile each candidate's activation: true, false, or "auto" -- where the cost
    # model predicts that it pays back its compile time (gp_activations.fusion.decide)
    fused: typing.Union[bool, str] = "auto"
    task_timeout: Optional[float] = None  # seconds before a worker is killed (None: auto)
    ray_address: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        # Type-check here too (not only in from_dict), so that SearchConfig(population="ten")
        # is the same one-line UserError as in a TOML file rather than a TypeError in validate.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name], "config"))
        self.validate()

    # -- validation ------------------------------------------------------------------------
    def rung_list(self) -> list:
        """Halving's rungs as [{"epochs": float, "seeds": int}], cheapest first."""
        budget = self.train_config().epochs
        rungs = self.rungs or [{"epochs": round(budget / 3, 3)}, {"epochs": budget}]
        out = []
        for i, rung in enumerate(rungs):
            if not isinstance(rung, dict):
                raise UserError(f"config: rungs[{i}] must be a table like {{epochs = 4}}, got {rung!r}")
            _check_table(rung, {"epochs": (int, float), "seeds": int}, f"config: rungs[{i}]:",
                         f"config: rungs[{i}] {{key!r}}")
            epochs = float(rung.get("epochs", budget))
            seeds = rung.get("seeds", 1)
            if not (math.isfinite(epochs) and 0 < epochs <= budget):
                raise UserError(f"config: rungs[{i}]: epochs = {epochs:g} exceeds the fitness "
                                f"budget of {budget:g} epochs (or is not positive); a rung trains "
                                f"at most the budget")
            if seeds < 1:
                raise UserError(f"config: rungs[{i}]: 'seeds' must be >= 1, got {seeds!r}")
            if out and (epochs < out[-1]["epochs"] or seeds < out[-1]["seeds"]
                        or (epochs, seeds) == (out[-1]["epochs"], out[-1]["seeds"])):
                raise UserError(f"config: rungs[{i}] must train longer or with more seeds than "
                                f"rungs[{i - 1}]")
            out.append({"epochs": epochs, "seeds": int(seeds)})
        if len(out) < 2:
            raise UserError("config: halving needs at least two rungs")
        return out

    # Output normalisation (normalize) applies to the search's own functions; the baselines of
    # the race and of evaluate are the known functions and train plain.  The three rules, here
    # once for the search, the race, the results, evaluate and the report.
    def trains_normalized(self, found: bool) -> bool:
        """Whether a function trains as (f - shift) / scale: a found one where the run
        normalises, a baseline never."""
        return bool(self.normalize) and found

    def baseline_equal(self, equals: Optional[str]) -> Optional[str]:
        """The zoo baseline a found function equals, as this run sees it: none where the run
        normalises (normalised, it is not that baseline any more)."""
        return None if self.normalize else equals

    def as_trained(self, activation):
        """A found function's :class:`~gp_activations.activation.Activation` as the search
        trained it (normalised where the run normalises)."""
        return activation.normalized() if self.normalize else activation

    def task_list(self) -> list:
        """The tasks of a multi-task search as dicts: name ("dataset/model"), dataset, model,
        weight and train (its TrainConfig as a dict: the dataset's fitness preset for that
        model, then the search's [train] and epochs, then the task's own train and epochs).
        A single-task search is the one task it has."""
        from ..data import get_dataset_info
        from ..train import default_config

        if self.tasks is None:
            model = self.model or (_default_model(self.dataset) if self.dataset in _dataset_names()
                                   and not self.data else None)
            name = f"{self.dataset}/{model}" if isinstance(model, str) else self.dataset
            return [{"name": name, "dataset": self.dataset, "model": model, "weight": 1.0,
                     "train": self.train_config().to_dict()}]
        out = []
        for i, entry in enumerate(self.tasks):
            info = get_dataset_info(entry["dataset"])
            model = entry.get("model", info.default_model)
            overrides = self._train_overrides("[train]", self.train)
            own = entry.get("train", {})
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            unknown = sorted(set(own) - known)
            if unknown:
                raise UserError(f"config: unknown key {unknown[0]!r} in tasks[{i}].train"
                                f"{did_you_mean(unknown[0], known)}")
            overrides.update(own)  # the task's own settings have the last word
            if "epochs" in entry:
                overrides["epochs"] = entry["epochs"]
            try:
                train = default_config(info.name, "fitness", model, **overrides)
            except TypeError as exc:
                raise UserError(f"config: tasks[{i}]: bad value in train: {exc}") from None
            out.append({"name": f"{info.name}/{model}", "dataset": info.name, "model": model,
                        "weight": float(entry.get("weight", 1.0)), "train": train.to_dict()})
        return out

    @property
    def multi_task(self) -> bool:
        return self.tasks is not None

    @property
    def n_offspring(self) -> int:
        return self.offspring or self.population

    def train_config(self) -> TrainConfig:
        """The fitness budget: the dataset's "fitness" preset, then [train], then epochs."""
        from ..train import default_config

        overrides = self._train_overrides("[train]", self.train)
        try:
            model = self.model
            if self.tasks:  # the first task's (the driver trains each task with its own)
                model = self.tasks[0].get("model")
            if model is None and self.dataset in _dataset_names():
                model = _default_model(self.dataset)
            return default_config(self.dataset, "fitness", model, **overrides)
        except TypeError as exc:
            raise UserError(f"config: bad value in [train]: {exc}") from None

    def _train_overrides(self, where: str, table: dict) -> dict:
        overrides = dict(table)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = unknown_keys(overrides, known)
        if unknown:
            raise UserError(f"config: unknown key {unknown[0]!r} in {where}"
                            f"{did_you_mean(unknown[0], known)} (known: {', '.join(sorted(known))})")
        if self.epochs is not None:
            overrides["epochs"] = self.epochs
        overrides.setdefault("per_channel", self.per_channel)
        overrides.setdefault("fused", self.fused)
        overrides.setdefault("threads", self.threads)
        return overrides

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "SearchConfig":
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            if key not in known:
                raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, known)} "
                                f"(known: {', '.join(sorted(known))})")
            clean[key] = coerce(key, value, hints[key], where)
        return cls(**clean)

    @classmethod
    def from_toml(cls, path, overrides: Optional[dict] = None) -> "SearchConfig":
        """The config of a TOML file, ``overrides`` (flags) on top.  Relative paths in the file
        (model, data, fitness, strategy, primitives, lookup, data_dir) are relative to the
        file's directory; those among ``overrides`` stay relative to the current directory."""
        path = Path(path)
        values = load_toml(path)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        if "tasks" in values and "dataset" in values:  # given by the user, not a default
            raise UserError(f"{path}: 'dataset' and 'tasks' are both given; a multi-task search "
                            f"takes each dataset from its 'tasks' entry")
        return cls.from_dict(values, where=str(path))

    def replace(self, **changes) -> "SearchConfig":
        return SearchConfig.from_dict({**self.to_dict(), **changes})


#: Config keys whose values may name a file (or, for data_dir, a directory).
PATH_KEYS = ("model", "data", "fitness", "strategy", "primitives", "lookup", "data_dir")


def load_toml(path) -> dict:
    """A config file's values as written -- keys checked, relative paths made absolute
    against the file's directory (:func:`resolve_paths`).  Every way of failing to read it (a
    missing file, a directory, no permission, not UTF-8, bad TOML) is one line naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory; give a TOML file "
                        f"(e.g. experiments/mnist1d.toml)") from None
    except UnicodeDecodeError as exc:
        from ..errors import unicode_error_message

        raise UserError(unicode_error_message(exc, f"config file {path}")) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        from ..errors import os_error_message

        exc.filename = None
        raise UserError(os_error_message(exc, f"config file {path}", verb="read")) from None
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    for key in values:
        if key not in known:
            raise UserError(f"{path}: unknown key {key!r}{did_you_mean(key, known)} "
                            f"(known: {', '.join(sorted(known))})")
    return resolve_paths(values, path.expanduser().resolve().parent)


def resolve_paths(values: dict, base) -> dict:
    """``values`` with the relative paths among :data:`PATH_KEYS` made absolute against
    ``base`` (a config file's directory): ``file.py:function`` references, ``.py`` search
    spaces, the lookup table and the data directory.  Registered names (``cnn1d``,
    ``pangaea``, ``evolution``) and ``module:attr`` references are left as they are."""
    base = Path(base)

    def absolute(text: str) -> str:
        p = Path(text).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    out = dict(values)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        if key in ("lookup", "data_dir"):
            out[key] = absolute(value)
        elif ".py:" in value:  # file.py:function
            file, _, attr = value.rpartition(":")
            out[key] = f"{absolute(file)}:{attr}"
        elif key == "primitives" and _looks_like_path(value):
            out[key] = absolute(value)
    return out


def _looks_like_path(text: str) -> bool:
    """A primitives value that load_primitive_set reads as a file (not a built-in name)."""
    from ..primitive_sets import builtin_names

    text = text.strip()
    return text not in builtin_names() and ":" not in text and (
        text.endswith(".py") or os.sep in text or text.startswith("."))


def _check_table(table: dict, known: dict, prefix: str, typed: str, within: str = "") -> None:
    """Every key of ``table`` known and of its type in ``known`` (bools are not numbers); the
    error names the key: "{prefix} unknown key 'x'{within}..." or "{typed} has the wrong type"."""
    for key, value in table.items():
        if key not in known:
            raise UserError(f"{prefix} unknown key {key!r}{within}{did_you_mean(key, known)} "
                            f"(known: {', '.join(known)})")
        if isinstance(value, bool) or not isinstance(value, known[key]):
            raise UserError(typed.format(key=key) + f" has the wrong type: {value!r}")


def coerce(key: str, value, hint, where: str):
    """Check ``value`` against the field's type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    expected = hint if isinstance(hint, type) else typing.get_origin(hint) or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise UserError(f"{where}: {key!r} must be an integer, got {value!r}")
    if isinstance(expected, type) and not isinstance(value, expected):
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                 dict: "a table", list: "a list"}
        raise UserError(f"{where}: {key!r} must be {names.get(expected, expected.__name__)}, "
                        f"got {value!r}")
    return value


def _dataset_names():
    from ..data import dataset_names

    return dataset_names()


def _default_model(dataset: str) -> str:
    from ..data import get_dataset_info

    return get_dataset_info(dataset).default_model


def object_label(obj) -> str:
    """How a run names a Python object it was given (the object itself is not stored)."""
    return f"<python object {getattr(obj, '__qualname__', type(obj).__name__)}>"


def is_object_label(value) -> bool:
    return isinstance(value, str) and value.startswith("<python object")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["SearchConfig", "SHAPES"]

"""A tabular benchmark: fitness looked up instead of trained (``lookup = "table.csv"``).

The table (``benchmarks/tabular/``) holds, for every function of a fixed space, accuracies
measured by real trainings at given budgets and seeds; a sidecar ``<table>.json`` says which
(dataset, model, epochs, seed, split) each column is.  A search with ``lookup`` set runs its
whole machinery -- strategy, screening, store, halving, surrogate -- but each "training" reads
the table, so a strategy can be simulated over many seeds in seconds.

Rows are matched by the search's functional fingerprint, so ``mul(x, sigmoid(x))`` finds the
row of ``sigmul``-written SiLU; a function the table lacks (or one with learnable scalars:
the table is of plain functions) fails with the reason, as a training would.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError

_TABLES: dict = {}


@dataclass(frozen=True)
class Column:
    name: str
    epochs: float
    seed: int
    split: str


class Table:
    def __init__(self, path: Path, meta: dict, rows: dict, expressions: dict):
        self.path, self.meta = path, meta
        self.dataset, self.model = meta["dataset"], meta["model"]
        self.columns = {name: Column(name, float(c["epochs"]), int(c["seed"]), c["split"])
                        for name, c in meta["columns"].items()}
        self.rows = rows  # function_key -> {column: accuracy (nan = failed) or None}
        self.expressions = expressions  # function_key -> expression

    def __len__(self) -> int:
        return len(self.rows)

    def check_task(self, dataset: str, model: Optional[str]) -> None:
        if dataset != self.dataset or (model is not None and model != self.model):
            raise UserError(f"lookup: {self.path} is a table of {self.dataset}/{self.model}, the "
                            f"search is on {dataset}/{model}; use that dataset and model")

    def column(self, epochs: float, seed: int, split: str = "val") -> Column:
        for col in self.columns.values():
            if math.isclose(col.epochs, epochs) and col.seed == seed and col.split == split:
                return col
        have = ", ".join(f"{c.name} ({c.epochs:g} epochs, seed {c.seed}, {c.split})"
                         for c in self.columns.values())
        raise UserError(f"lookup: {self.path} has no column for {epochs:g} epochs, seed {seed}, "
                        f"{split} split (it has {have})")

    def accuracy(self, act, epochs: float, seed: int, split: str = "val") -> float:
        """The accuracy of ``act`` at that budget; LookupError (with the reason) if absent."""
        from .search.screening import function_key

        col = self.column(epochs, seed, split)
        if act.params:
            raise LookupError(f"not in the lookup table: {act.expression} has learnable scalars "
                              f"(the table is of plain functions; use param_variants = 0)")
        row = self.rows.get(function_key(act))
        if row is None:
            raise LookupError(f"not in the lookup table: {act.expression} is outside its space")
        value = row.get(col.name)
        if value is None:
            raise LookupError(f"not in the lookup table: no {col.name} for {act.expression}")
        return value


def load_table(path) -> Table:
    """The table at ``path`` (cached per process); a missing or malformed one is a UserError."""
    path = Path(path).expanduser()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        raise UserError(f"lookup: table {path} not found (build one with "
                        f"benchmarks/tabular/build.py, or give the path of the shipped "
                        f"benchmarks/tabular/mnist1d_cnn1d.csv)") from None
    key = (str(path.resolve()), stamp)
    if key not in _TABLES:
        _TABLES[key] = _read(path)
    return _TABLES[key]


def _read(path: Path) -> Table:
    from .activation import Activation
    from .search.screening import function_key

    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        columns = meta["columns"]
        for c in columns.values():
            float(c["epochs"]), int(c["seed"]), str(c["split"])
        meta["dataset"], meta["model"]  # noqa: B018 -- required keys
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"lookup: {meta_path} (the table's column definitions) is missing or "
                        f"malformed: {exc}") from None
    rows, expressions = {}, {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("expression", *columns) if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"lookup: {path} lacks the column {missing[0]!r}")
            for line, record in enumerate(reader, 2):
                try:
                    act = Activation.from_string(record["expression"], meta.get("primitives", "pangaea"))
                    values = {c: None if record[c] in ("", None) else float(record[c]) for c in columns}
                except (UserError, ValueError, TypeError, AttributeError) as exc:
                    raise UserError(f"lookup: {path} line {line}: {exc}") from None
                fk = function_key(act)
                rows[fk] = values
                expressions[fk] = record["expression"]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"lookup: cannot read {path}: {exc}") from None
    if not rows:
        raise UserError(f"lookup: {path} has no rows")
    return Table(path, meta, rows, expressions)


def lookup_task(job) -> dict:
    """A worker's "training" of ``job`` (a :class:`~gp_activations.search.jobs.Job`) read from
    its table: the status, fitness, metrics and error of a training."""
    from .activation import Activation

    table = load_table(job.lookup)
    act = Activation.from_string(job.expression, job.primitives, list(job.params))
    epochs = float(job.train["epochs"])
    try:
        accuracy = table.accuracy(act, epochs, int(job.seed), job.split)
    except LookupError as exc:
        return {"status": "failed", "fitness": None, "error": str(exc).strip("'\""),
                "metrics": {"lookup": str(table.path)}}
    if math.isnan(accuracy):
        return {"status": "failed", "fitness": None, "metrics": {"lookup": str(table.path)},
                "error": "diverged: the table's training failed"}
    return {"status": "done", "fitness": accuracy, "error": "",
            "metrics": {"accuracy": accuracy, "lookup": str(table.path), "epochs_done": epochs}}

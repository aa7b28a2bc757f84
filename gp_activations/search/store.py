"""The run directory's SQLite database: every candidate, the config, the populations.

One file, ``RUN/run.sqlite``, in WAL mode; the search driver is its only writer and commits
every result the moment it arrives, so a crash or ``kill -9`` loses nothing that finished.
Everything is stored as SQL values and JSON text -- nothing is pickled.  Nothing outside this
module writes SQL: readers get frozen records (:class:`Candidate`, :class:`FinalTraining`,
:class:`RungRun`) with a :class:`Status`, one method per query.  ``RunStore.open(run,
readonly=True)`` is the open of ``report`` and ``export``; a writable open of a format-1 run
migrates it in place (two added columns/tables, nothing rewritten).

Tables:
``meta``        key/value JSON: the run's config, format version, counters.
``candidates``  one row per candidate (a function with one placement of learnable scalars):
                ``id, function_id, expression, primitives, params, dedup_key, function_key,
                status (pending|running|done|failed|rejected), fitness, generation, parent_ids,
                mutation, origin, duplicate_of, error, created_at, started_at, finished_at,
                metrics`` (JSON: the training record).
``generations`` one row per generation: ``state`` (created|done) and the evolution RNG state
                (JSON) saved after the generation's candidates were created.
``population``  which functions (by ``function_id``) survived each generation, ranked.
``task_runs``   a multi-task search's trainings, one row per (candidate, task) as it finishes;
                ReLU's reference trainings are ``candidate_id = 0``.
``rung_runs``   successive halving's trainings (``fidelity = "halving"``): one row per
                (candidate, rung, seed) as it finishes.
``final``       final evaluation results (``gp-activations evaluate``): one row per training.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
import time
from dataclasses import dataclass, fields as dc_fields
from pathlib import Path
from typing import Iterable, Optional, Union

from ..errors import UserError
from .jobs import JobStatus

DB_NAME = "run.sqlite"
FORMAT_VERSION = 2  # 2: candidates.predicted, rung_runs


class Status(str, enum.Enum):
    """A candidate's state (a ``str``, so it compares equal to its stored text)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in Status)


class GenerationState(str, enum.Enum):
    """``created``: its candidates are stored; ``done``: evaluated, survivors chosen."""

    CREATED = "created"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


def _loads(text, default):
    return default if text in (None, "") else json.loads(text)


@dataclass(frozen=True)
class Candidate:
    """One candidate: a function with one placement of learnable scalars."""

    id: int
    function_id: Optional[int]
    expression: str
    primitives: str
    params: tuple
    dedup_key: Optional[str]
    function_key: Optional[str]
    status: Status
    fitness: Optional[float]
    generation: int
    parent_ids: tuple
    mutation: Optional[str]
    origin: Optional[str]
    duplicate_of: Optional[int]
    error: Optional[str]
    created_at: Optional[float]
    started_at: Optional[float]
    finished_at: Optional[float]
    metrics: Optional[dict]
    predicted: Optional[float] = None  # the surrogate's prediction, made before training

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Candidate":
        keys = row.keys()
        return cls(**{**{k: row[k] for k in keys if k in _CANDIDATE_FIELDS},
                      "params": tuple(_loads(row["params"], [])),
                      "parent_ids": tuple(_loads(row["parent_ids"], [])),
                      "status": Status(row["status"]), "metrics": _loads(row["metrics"], None)})

    @property
    def plain(self) -> bool:
        """The function itself, not one of its parametric variants."""
        return self.id == self.function_id

    @property
    def trained(self) -> bool:
        """The one definition of "trained": an original (not a duplicate) whose training ran
        to a result -- done, or failed after it started (a screening failure never started)."""
        return (self.duplicate_of is None and self.started_at is not None
                and self.status in (Status.DONE, Status.FAILED))

    @property
    def label(self) -> str:
        return f"{self.expression} @ params {list(self.params)}" if self.params else self.expression


_CANDIDATE_FIELDS = {f.name for f in dc_fields(Candidate)}


@dataclass(frozen=True)
class FinalTraining:
    """One training of ``gp-activations evaluate`` (a label, a seed, a protocol)."""

    id: int
    label: str
    kind: str
    expression: str
    primitives: str
    params: tuple
    candidate_id: Optional[int]
    seed: int
    protocol: str
    status: Status
    accuracy: Optional[float]
    metrics: Optional[dict]
    finished_at: Optional[float]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "FinalTraining":
        return cls(**{**dict(row), "params": tuple(_loads(row["params"], [])),
                      "status": Status(row["status"]), "metrics": _loads(row["metrics"], None)})


@dataclass(frozen=True, kw_only=True)
class _TrainingRecord:
    """A stored training below a candidate: its status typed, its metrics decoded (the fields
    every kind of training has; each kind adds its keys)."""

    status: JobStatus
    accuracy: Optional[float]
    error: Optional[str]
    metrics: Optional[dict]
    started_at: Optional[float]
    finished_at: Optional[float]

    @classmethod
    def from_row(cls, row: sqlite3.Row):
        return cls(**{**dict(row), "status": JobStatus(row["status"]),
                      "metrics": _loads(row["metrics"], None)})


@dataclass(frozen=True, kw_only=True)
class TaskRun(_TrainingRecord):
    """One task's training of a multi-task candidate (``candidate_id`` 0: ReLU's reference)."""

    candidate_id: int
    task: int
    name: str


@dataclass(frozen=True, kw_only=True)
class RungRun(_TrainingRecord):
    """One training of successive halving: a candidate's ``seed``-th seed on ``rung``."""

    candidate_id: int
    rung: int
    seed: int
    epochs: Optional[float]


@dataclass(frozen=True, kw_only=True)
class RaceRun(_TrainingRecord):
    """One training of the final race: entrant ``entrant`` (its index) on its ``seed``-th seed."""

    entrant: int
    seed: int
    label: str


@dataclass(frozen=True)
class Generation:
    generation: int
    state: GenerationState
    rng_state: Optional[str]
    created_at: Optional[float]
    finished_at: Optional[float]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Generation":
        return cls(**{**dict(row), "state": GenerationState(row["state"])})


@dataclass(frozen=True)
class Survivor:
    generation: int
    rank: int
    function_id: int
    fitness: Optional[float]


StatusArg = Union[None, str, Iterable[str]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    function_id INTEGER,
    expression TEXT NOT NULL,
    primitives TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    dedup_key TEXT,
    function_key TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed','rejected')),
    fitness REAL,
    generation INTEGER NOT NULL,
    parent_ids TEXT NOT NULL DEFAULT '[]',
    mutation TEXT,
    origin TEXT,
    duplicate_of INTEGER REFERENCES candidates(id),
    error TEXT,
    created_at REAL,
    started_at REAL,
    finished_at REAL,
    metrics TEXT,
    predicted REAL
);
CREATE INDEX IF NOT EXISTS candidates_dedup ON candidates(dedup_key);
CREATE INDEX IF NOT EXISTS candidates_function ON candidates(function_id);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates(status);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('created','done')),
    rng_state TEXT,
    created_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS population (
    generation INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    function_id INTEGER NOT NULL REFERENCES candidates(id),
    fitness REAL,
    PRIMARY KEY (generation, rank)
);
CREATE TABLE IF NOT EXISTS task_runs (
    candidate_id INTEGER NOT NULL,
    task INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done','failed')),
    accuracy REAL,
    error TEXT,
    metrics TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (candidate_id, task)
);
CREATE TABLE IF NOT EXISTS rung_runs (
    candidate_id INTEGER NOT NULL,
    rung INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done','failed')),
    accuracy REAL,
    epochs REAL,
    error TEXT,
    metrics TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (candidate_id, rung, seed)
);
CREATE TABLE IF NOT EXISTS race_runs (
    entrant INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done','failed')),
    accuracy REAL,
    error TEXT,
    metrics TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (entrant, seed)
);
CREATE TABLE IF NOT EXISTS final (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    expression TEXT NOT NULL,
    primitives TEXT NOT NULL,
    params TEXT NOT NULL,
    candidate_id INTEGER,
    seed INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    status TEXT NOT NULL,
    accuracy REAL,
    metrics TEXT,
    finished_at REAL,
    UNIQUE (label, seed, protocol)
);
"""


def is_run_dir(path) -> bool:
    return (Path(path) / DB_NAME).is_file()


class _CandidateRecords:
    """RunStore's candidates: one row per function and placement of learnable scalars."""

    # -- candidates ----------------------------------------------------------------------------
    _FIELDS = ("function_id", "expression", "primitives", "params", "dedup_key", "function_key",
               "status", "fitness", "generation", "parent_ids", "mutation", "origin",
               "duplicate_of", "error", "created_at", "started_at", "finished_at", "metrics")

    def add_candidate(self, **fields) -> int:
        """Insert a candidate (inside the caller's transaction, if any); returns its id."""
        fields.setdefault("created_at", time.time())
        for key in ("params", "parent_ids"):
            if not isinstance(fields.get(key, "[]"), str):
                fields[key] = json.dumps(list(fields[key]))
        if isinstance(fields.get("metrics"), dict):
            fields["metrics"] = json.dumps(fields["metrics"])
        unknown = set(fields) - set(self._FIELDS)
        if unknown:  # pragma: no cover - programming error
            raise KeyError(f"unknown candidate fields {unknown}")
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        cur = self.db.execute(f"INSERT INTO candidates ({cols}) VALUES ({marks})", tuple(fields.values()))
        return cur.lastrowid

    def update_candidate(self, cid: int, **fields) -> None:
        if isinstance(fields.get("metrics"), dict):
            fields["metrics"] = json.dumps(fields["metrics"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE candidates SET {sets} WHERE id = ?", (*fields.values(), cid))

    def mark_running(self, cid: int) -> None:
        with self.db:
            self.update_candidate(cid, status="running", started_at=time.time())

    def record_result(self, cid: int, status: str, fitness, metrics: Optional[dict], error: str,
                      started_at=None, finished_at=None) -> None:
        """Store a finished evaluation and copy it onto the duplicates waiting for it (one commit)."""
        with self.db:
            self.update_candidate(cid, status=status, fitness=fitness, metrics=metrics,
                                  error=error or None, finished_at=finished_at or time.time(),
                                  **({"started_at": started_at} if started_at else {}))
            self.db.execute("UPDATE candidates SET status = ?, fitness = ?, error = ?, "
                            "finished_at = ? WHERE duplicate_of = ? AND status = 'pending'",
                            (status, fitness, error or None, time.time(), cid))

    def reset_in_flight(self) -> int:
        """Evaluations that were running when the driver died are redone."""
        with self.db:
            cur = self.db.execute("UPDATE candidates SET status = 'pending', started_at = NULL "
                                  "WHERE status = 'running'")
        return cur.rowcount

    def set_predicted(self, cid: int, value: Optional[float]) -> None:
        """The surrogate's prediction for ``cid`` (inside the caller's transaction)."""
        self.update_candidate(cid, predicted=value)

    def candidate(self, cid: int) -> Optional[Candidate]:
        row = self.db.execute("SELECT * FROM candidates WHERE id = ?", (cid,)).fetchone()
        return Candidate.from_row(row) if row else None

    def candidates(self, *, status: StatusArg = None, generation: Optional[int] = None,
                   unique: bool = False, plain: Optional[bool] = None,
                   trained: Optional[bool] = None) -> list[Candidate]:
        """Candidates by id, filtered: ``status`` (one or several), ``generation``, ``unique``
        (originals only, no duplicates), ``plain`` (functions, not their variants), ``trained``
        (see :attr:`Candidate.trained`)."""
        where, args = [], []
        if status is not None:
            wanted = [str(Status(status))] if isinstance(status, str) else [str(Status(s)) for s in status]
            where.append(f"status IN ({', '.join('?' for _ in wanted)})")
            args += wanted
        if generation is not None:
            where.append("generation = ?")
            args.append(generation)
        if unique or trained:
            where.append("duplicate_of IS NULL")
        if plain is not None:
            where.append("id = function_id" if plain else "id != function_id")
        if trained is not None:
            clause = "(status IN ('done', 'failed') AND started_at IS NOT NULL)"
            where.append(clause if trained else f"NOT {clause}")
        sql = "SELECT * FROM candidates" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [Candidate.from_row(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def pending(self, generation: Optional[int] = None) -> list[Candidate]:
        return self.candidates(status=Status.PENDING, generation=generation, unique=True)

    def trained_in_order(self) -> list[Candidate]:
        """Every training that ran, in the order the results arrived."""
        return sorted(self.candidates(trained=True), key=lambda c: (c.finished_at or 0, c.id))

    def count_trainings(self) -> int:
        """Trainings done or owed: every original candidate that was or will be evaluated
        (:attr:`Candidate.trained`, or pending/running) -- not the rejected ones, nor those
        whose screening failed: they never start."""
        return self.db.execute("SELECT COUNT(*) FROM candidates WHERE duplicate_of IS NULL "
                               "AND (status IN ('pending', 'running') OR (status IN ('done', "
                               "'failed') AND started_at IS NOT NULL))").fetchone()[0]

    def count_finished(self) -> int:
        """Trainings that ran to a result (:attr:`Candidate.trained`)."""
        return self.db.execute("SELECT COUNT(*) FROM candidates WHERE duplicate_of IS NULL AND "
                               "status IN ('done', 'failed') AND started_at IS NOT NULL").fetchone()[0]

    def best_fitness(self) -> Optional[float]:
        return self.db.execute("SELECT MAX(fitness) FROM candidates WHERE status = 'done'").fetchone()[0]

    def relu_fitness(self) -> Optional[float]:
        """The fitness of plain ``relu(x)`` (the search's reference), if it was trained."""
        row = self.db.execute("SELECT fitness FROM candidates WHERE expression = 'relu(x)' AND "
                              "params = '[]' AND status = 'done' ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def function_fitness(self, function_id: int, mode: str = "best"):
        """(fitness, id of the variant that achieved it) of a function, or (None, None)."""
        if mode == "plain":
            row = self.db.execute("SELECT fitness, id FROM candidates WHERE id = ? AND status = 'done'",
                                  (function_id,)).fetchone()
        else:
            row = self.db.execute("SELECT fitness, id FROM candidates WHERE function_id = ? AND "
                                  "status = 'done' AND fitness IS NOT NULL ORDER BY fitness DESC, id "
                                  "LIMIT 1", (function_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)


class _TrainingRuns:
    """RunStore's trainings below a candidate: multi-task runs, halving's rungs, the race."""

    # -- multi-task searches -------------------------------------------------------------------
    def record_task_run(self, cid: int, task: int, name: str, status: str, accuracy, error: str,
                        metrics: Optional[dict], started_at=None, finished_at=None) -> None:
        """One task's training of a candidate (``cid = 0``: ReLU's reference), committed now."""
        with self.db:
            self.db.execute(
                "INSERT INTO task_runs(candidate_id, task, name, status, accuracy, error, metrics, "
                "started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                "(candidate_id, task) DO UPDATE SET status = excluded.status, accuracy = "
                "excluded.accuracy, error = excluded.error, metrics = excluded.metrics, "
                "started_at = excluded.started_at, finished_at = excluded.finished_at",
                (cid, task, name, str(status), accuracy, error or None,
                 json.dumps(metrics) if metrics is not None else None, started_at,
                 finished_at or time.time()))

    def task_runs(self, cid: Optional[int] = None) -> dict:
        """{task index: TaskRun} of the finished trainings of candidate ``cid`` (all of them,
        as {(cid, task): TaskRun}, when ``cid`` is None)."""
        if cid is None:
            rows = self.db.execute("SELECT * FROM task_runs ORDER BY candidate_id, task")
            return {(r["candidate_id"], r["task"]): TaskRun.from_row(r) for r in rows}
        rows = self.db.execute("SELECT * FROM task_runs WHERE candidate_id = ? ORDER BY task",
                               (cid,)).fetchall()
        return {r["task"]: TaskRun.from_row(r) for r in rows}

    # -- successive halving ----------------------------------------------------------------------
    def record_rung_run(self, cid: int, rung: int, seed: int, status: str, accuracy, epochs,
                        error: str, metrics: Optional[dict], started_at=None,
                        finished_at=None) -> None:
        """One training of successive halving, committed now (a redone one replaces it)."""
        with self.db:
            self.db.execute(
                "INSERT INTO rung_runs(candidate_id, rung, seed, status, accuracy, epochs, error, "
                "metrics, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON "
                "CONFLICT(candidate_id, rung, seed) DO UPDATE SET status = excluded.status, "
                "accuracy = excluded.accuracy, epochs = excluded.epochs, error = excluded.error, "
                "metrics = excluded.metrics, started_at = excluded.started_at, "
                "finished_at = excluded.finished_at",
                (cid, rung, seed, str(status), accuracy, epochs, error or None,
                 json.dumps(metrics) if metrics is not None else None, started_at,
                 finished_at or time.time()))

    def rung_runs(self, cid: Optional[int] = None) -> list[RungRun]:
        """The halving trainings of ``cid`` (of every candidate when None), by rung and seed."""
        if self._legacy:
            return []  # a format-1 run read as it is: no halving table
        if cid is None:
            rows = self.db.execute("SELECT * FROM rung_runs ORDER BY candidate_id, rung, seed")
        else:
            rows = self.db.execute("SELECT * FROM rung_runs WHERE candidate_id = ? ORDER BY "
                                   "rung, seed", (cid,))
        return [RungRun.from_row(r) for r in rows]

    # -- the final race ---------------------------------------------------------------------------
    def record_race_run(self, entrant: int, seed: int, label: str, status, accuracy, error: str,
                        metrics: Optional[dict], started_at=None, finished_at=None) -> None:
        """One training of the final race, committed now (a redone one replaces it)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO race_runs(entrant, seed, label, status, accuracy, error, "
                "metrics, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entrant, seed, label, str(status), accuracy, error or None,
                 json.dumps(metrics) if metrics is not None else None, started_at,
                 finished_at or time.time()))

    def race_runs(self) -> list[RaceRun]:
        """The final race's trainings, by entrant and seed (none in a run without a race)."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                               "name = 'race_runs'").fetchone():
            return []  # a run made before races, opened read-only
        return [RaceRun.from_row(r) for r in
                self.db.execute("SELECT * FROM race_runs ORDER BY entrant, seed")]

    def training_epochs(self) -> float:
        """Epochs trained by halving's rungs so far (the cost measure of a halving search)."""
        if self._legacy:
            return 0.0
        return self.db.execute("SELECT COALESCE(SUM(epochs), 0) FROM rung_runs").fetchone()[0]


class _GenerationRecords:
    """RunStore's generations, populations and summaries of the run."""

    # -- generations and populations -------------------------------------------------------------
    def generation_rows(self) -> list[Generation]:
        return [Generation.from_row(r) for r in
                self.db.execute("SELECT * FROM generations ORDER BY generation")]

    def last_generation(self) -> Optional[Generation]:
        row = self.db.execute("SELECT * FROM generations ORDER BY generation DESC LIMIT 1").fetchone()
        return Generation.from_row(row) if row else None

    def create_generation(self, generation: int, rng_state: str) -> None:
        """Mark ``generation`` created (inside the caller's transaction, with its candidates)."""
        self.db.execute("INSERT INTO generations(generation, state, rng_state, created_at) "
                        "VALUES (?, 'created', ?, ?)", (generation, rng_state, time.time()))

    def population(self, generation: Optional[int] = None) -> list[Survivor]:
        """The survivors of ``generation`` (of every generation when None), ranked."""
        if generation is None:
            rows = self.db.execute("SELECT * FROM population ORDER BY generation, rank")
        else:
            rows = self.db.execute("SELECT * FROM population WHERE generation = ? ORDER BY rank",
                                   (generation,))
        return [Survivor(**dict(r)) for r in rows]

    def finish_generation(self, generation: int, members: list[tuple[int, float]]) -> None:
        with self.db:
            self.db.execute("DELETE FROM population WHERE generation = ?", (generation,))
            self.db.executemany("INSERT INTO population(generation, rank, function_id, fitness) "
                                "VALUES (?, ?, ?, ?)",
                                [(generation, r, fid, fit) for r, (fid, fit) in enumerate(members)])
            self.db.execute("UPDATE generations SET state = 'done', finished_at = ? WHERE generation = ?",
                            (time.time(), generation))

    # -- summaries ---------------------------------------------------------------------------
    def top_functions(self, k: Optional[int] = None, mode: str = "best") -> list[dict]:
        """Functions ranked by fitness: the best variant of each (dedup'd by function)."""
        rows = self.db.execute(
            "SELECT c.function_id AS fid, MAX(c.fitness) AS fitness FROM candidates c "
            "WHERE c.status = 'done' AND c.fitness IS NOT NULL AND c.duplicate_of IS NULL "
            + ("AND c.id = c.function_id " if mode == "plain" else "")
            + "GROUP BY c.function_id ORDER BY fitness DESC, fid").fetchall()
        out = []
        for row in rows[: k if k else None]:
            fitness, best_id = self.function_fitness(row["fid"], mode)
            out.append({"function_id": row["fid"], "fitness": fitness,
                        "candidate": self.candidate(best_id)})
        return out

    def status_counts(self) -> dict:
        rows = self.db.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status").fetchall()
        counts = {s: 0 for s in STATUSES}
        counts.update({r[0]: r[1] for r in rows})
        counts["duplicates"] = self.db.execute(
            "SELECT COUNT(*) FROM candidates WHERE duplicate_of IS NOT NULL").fetchone()[0]
        return counts

    def failure_reasons(self) -> list[tuple[str, int]]:
        """(first line of the reason, count) of the failed and rejected originals, commonest first."""
        reasons: dict = {}
        for c in self.candidates(status=(Status.FAILED, Status.REJECTED), unique=True):
            reason = (c.error or str(c.status)).strip().splitlines()[0][:160]
            reasons[reason] = reasons.get(reason, 0) + 1
        return sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))


class _FinalTrainings:
    """RunStore's final trainings (``gp-activations evaluate``)."""

    # -- final evaluation ----------------------------------------------------------------------
    def final_training(self, label: str, seed: int, protocol: str) -> Optional[FinalTraining]:
        row = self.db.execute("SELECT * FROM final WHERE label = ? AND seed = ? AND protocol = ?",
                              (label, seed, protocol)).fetchone()
        return FinalTraining.from_row(row) if row else None

    def final_trainings(self, protocol: Optional[str] = None, *, status: Optional[str] = None,
                        seeds: Optional[int] = None, labels: Optional[list] = None) -> list[FinalTraining]:
        """Final trainings (by label, seed), filtered by protocol, status, ``seed < seeds`` and label."""
        where, args = [], []
        for clause, value in (("protocol = ?", protocol), ("status = ?", status),
                              ("seed < ?", seeds)):
            if value is not None:
                where.append(clause)
                args.append(value)
        if labels is not None:
            where.append(f"label IN ({', '.join('?' for _ in labels)})")
            args += list(labels)
        sql = "SELECT * FROM final" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [FinalTraining.from_row(r) for r in
                self.db.execute(sql + " ORDER BY label, seed, id", args)]

    def final_protocols_by_recency(self) -> list[str]:
        """Protocols with a finished training, the latest finished first."""
        return [r[0] for r in self.db.execute(
            "SELECT protocol FROM final WHERE status = 'done' GROUP BY protocol "
            "ORDER BY MAX(finished_at) DESC")]

    def final_labels(self, protocol: str) -> list[str]:
        """The labels of ``protocol`` in the order they were first scheduled."""
        return [r[0] for r in self.db.execute(
            "SELECT label FROM final WHERE protocol = ? GROUP BY label ORDER BY MIN(id)", (protocol,))]

    def schedule_final(self, label: str, kind: str, expression: str, primitives: str,
                       params, candidate_id, seeds: int, protocol: str) -> None:
        """Make ``seeds`` trainings of ``label`` pending under ``protocol`` (one transaction);
        those that finished before for the same function are kept, never redone -- also where
        the function had another label (the ranking moved: a longer search, a final race).
        Rows of another function under this label move aside (labelled ``unranked:
        EXPRESSION @ PARAMS``), kept for the day it is ranked again."""
        params_text = json.dumps(list(params))
        with self.db:
            self.db.execute("UPDATE final SET label = 'unranked: ' || expression || ' @ ' || params "
                            "WHERE label = ? AND protocol = ? AND (expression != ? OR params != ?)",
                            (label, protocol, expression, params_text))
            if kind == "found":  # this function's rows under another label come along
                self.db.execute("UPDATE final SET label = ? WHERE protocol = ? AND kind = 'found' "
                                "AND expression = ? AND params = ? AND label != ?",
                                (label, protocol, expression, params_text, label))
            for seed in range(seeds):
                row = self.final_training(label, seed, protocol)
                if row is not None and row.status in ("done", "failed"):
                    continue  # finished before: never redone
                if row is not None:  # in flight when interrupted
                    self.db.execute("DELETE FROM final WHERE id = ?", (row.id,))
                self.db.execute(
                    "INSERT INTO final(label, kind, expression, primitives, params, candidate_id, "
                    "seed, protocol, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                    (label, kind, expression, primitives, params_text, candidate_id, seed, protocol))

    def start_final(self, final_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE final SET status = 'running', accuracy = NULL, finished_at = "
                            "NULL WHERE id = ?", (final_id,))

    def finish_final(self, final_id: int, status: str, accuracy, metrics: dict) -> None:
        with self.db:
            self.db.execute("UPDATE final SET status = ?, accuracy = ?, metrics = ?, finished_at = ? "
                            "WHERE id = ?", (status, accuracy, json.dumps(metrics), time.time(),
                                             final_id))

    def add_final(self, record: FinalTraining) -> None:
        """Store a finished training made elsewhere (a transfer copying it back), if new."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO final(label, kind, expression, primitives, params, "
                "candidate_id, seed, protocol, status, accuracy, metrics, finished_at) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.label, record.kind, record.expression, record.primitives,
                 json.dumps(list(record.params)), record.candidate_id, record.seed,
                 record.protocol, record.status, record.accuracy,
                 None if record.metrics is None else json.dumps(record.metrics),
                 record.finished_at))


class RunStore(_CandidateRecords, _TrainingRuns, _GenerationRecords, _FinalTrainings):
    """Access to one run's database.  Use :meth:`create` or :meth:`open`."""

    def __init__(self, run_dir: Path, connection: sqlite3.Connection):
        self.run_dir = Path(run_dir)
        self.db = connection
        self.db.row_factory = sqlite3.Row
        self.readonly = False
        self._legacy = False  # an old-format run opened read-only (tables of later formats absent)

    def transaction(self):
        """``with store.transaction():`` -- the writes inside commit together (or not at all)."""
        return self.db

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir, config: dict) -> "RunStore":
        run_dir = Path(run_dir)
        if is_run_dir(run_dir):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume or "
                            f"choose another --out")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write to run directory {run_dir}: "
                            f"{exc.strerror or exc}") from None
        store = cls(run_dir, cls._connect(run_dir / DB_NAME))
        with store.db:
            store.db.executescript(_SCHEMA)
            store._set_meta("format_version", FORMAT_VERSION)
            store._set_meta("config", config)
            store._set_meta("created_at", time.time())
        return store

    @classmethod
    def open(cls, run_dir, readonly: bool = False) -> "RunStore":
        """Open a run; ``readonly`` for readers (report, export) -- nothing can be written, and
        a format-1 run is read as it is instead of being migrated."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a directory (expected a search run made with "
                            f"gp-activations search --out {run_dir})")
        if not is_run_dir(run_dir):
            raise UserError(f"{run_dir} is not a search run: {DB_NAME} is missing")
        try:
            store = cls(run_dir, cls._connect(run_dir / DB_NAME, readonly))
            version = store.get_meta("format_version")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{run_dir / DB_NAME} is not a readable run database: {exc}") from None
        store.readonly = readonly
        store._legacy = readonly and isinstance(version, int) and version < FORMAT_VERSION
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise UserError(f"{run_dir} has run format {version}; this version of gp-activations "
                            f"reads formats 1 to {FORMAT_VERSION} -- upgrade gp-activations to "
                            f"open it")
        if not readonly:
            if version < FORMAT_VERSION:
                store._migrate(version)
            with store.db:
                store.db.executescript(_SCHEMA)  # tables added by later versions
        return store

    def _migrate(self, version: int) -> None:
        """Format 1 -> 2 in place: the surrogate's ``predicted`` column (halving's
        ``rung_runs`` table comes with the schema).  Nothing existing is rewritten."""
        with self.db:
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(candidates)")}
            if "predicted" not in columns:
                self.db.execute("ALTER TABLE candidates ADD COLUMN predicted REAL")
            self._set_meta("format_version", FORMAT_VERSION)
            self._set_meta(f"migrated_from_{version}", time.time())

    @staticmethod
    def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            uri = Path(path).resolve().as_uri()
            db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30)
            try:
                db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                if os.access(Path(path).parent, os.W_OK):
                    raise
                # read-only media: a WAL database without its -shm index cannot be opened
                # normally; nobody can write there, so reading it as immutable is exact
                db.close()
                db = sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, timeout=30)
            db.execute("PRAGMA query_only=ON")
            return db
        db = sqlite3.connect(str(path), timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        self.unlock()
        self.db.close()

    # -- one search at a time ------------------------------------------------------------------
    def lock(self) -> None:
        """Claim the run for this process (a search or resume); a second one gets a UserError.

        An advisory ``flock`` on ``RUN/lock``: the kernel drops it when the process dies, so a
        killed search never leaves a stale lock behind."""
        import fcntl
        import os

        path = self.run_dir / "lock"
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise UserError(f"{self.run_dir} is in use by another search (pid {owner}); wait for "
                            f"it to finish or stop it, then --resume") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh

    def unlock(self) -> None:
        fh = getattr(self, "_lock", None)
        if fh is not None:
            fh.close()  # closing the file releases the flock
            self._lock = None

    # -- meta --------------------------------------------------------------------------------
    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                        "UPDATE SET value = excluded.value", (key, json.dumps(value)))

    def set_meta(self, key: str, value) -> None:
        """Store a JSON value: committed now, or with the caller's open transaction."""
        if self.db.in_transaction:
            self._set_meta(key, value)
        else:
            with self.db:
                self._set_meta(key, value)

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def config(self) -> dict:
        return self.get_meta("config", {})


# ---------------------------------------------------------------------------------------------
# transfer's trainings (OUT/transfer.sqlite): the same connection settings and typed records
# ---------------------------------------------------------------------------------------------
TRANSFER_DB = "transfer.sqlite"

_TRANSFER_SCHEMA = """
CREATE TABLE IF NOT EXISTS trainings (
    id INTEGER PRIMARY KEY,
    expression TEXT NOT NULL,
    primitives TEXT NOT NULL,
    params TEXT NOT NULL,
    seed INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed')),
    accuracy REAL,
    error TEXT,
    source TEXT,
    finished_at REAL,
    UNIQUE (expression, primitives, params, seed, protocol)
);
"""


@dataclass(frozen=True)
class TransferTraining:
    """One training of ``gp-activations transfer``: a function (expression, primitives,
    params as JSON text) on one seed under one protocol; ``source`` the run it was copied
    from, if it was."""

    id: int
    expression: str
    primitives: str
    params: str
    seed: int
    protocol: str
    status: Status
    accuracy: Optional[float]
    error: Optional[str]
    source: Optional[str]
    finished_at: Optional[float]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "TransferTraining":
        return cls(**{**dict(row), "status": Status(row["status"])})

    @property
    def finished(self) -> bool:
        return self.status in (Status.DONE, Status.FAILED)


class TransferStore:
    """The trainings of a transfer in ``OUT/transfer.sqlite``, keyed by function key
    ``(expression, primitives, params JSON)``, seed and protocol -- every statement here."""

    def __init__(self, out):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.db = RunStore._connect(out / TRANSFER_DB)
        self.db.row_factory = sqlite3.Row
        with self.db:
            self.db.executescript(_TRANSFER_SCHEMA)

    @contextlib.contextmanager
    def transaction(self):
        with self.db:
            yield self

    def row(self, key: tuple, seed: int, protocol: str) -> Optional[TransferTraining]:
        found = self.db.execute("SELECT * FROM trainings WHERE expression = ? AND primitives = ? "
                                "AND params = ? AND seed = ? AND protocol = ?",
                                (*key, seed, protocol)).fetchone()
        return TransferTraining.from_row(found) if found else None

    def copy_done(self, key: tuple, accuracy, source: str, finished_at) -> bool:
        """Store a run's finished training of ``key`` (expression, primitives, params, seed,
        protocol) unless one is here already; returns whether it was copied."""
        row = self.row(key[:3], key[3], key[4])
        if row is not None and row.finished:
            return False
        with self.db:
            self.db.execute("DELETE FROM trainings WHERE expression = ? AND primitives = ? AND "
                            "params = ? AND seed = ? AND protocol = ?", key)
            self.db.execute("INSERT INTO trainings(expression, primitives, params, seed, protocol, "
                            "status, accuracy, source, finished_at) VALUES (?, ?, ?, ?, ?, 'done', "
                            "?, ?, ?)", (*key, accuracy, source, finished_at))
        return True

    def reset_in_flight(self) -> None:
        """Trainings that were running when a transfer died are redone (caller's transaction)."""
        self.db.execute("UPDATE trainings SET status = 'pending' WHERE status = 'running'")

    def schedule(self, key: tuple, seed: int, protocol: str) -> int:
        """The id of the pending row of (key, seed, protocol), inserted if new (caller's
        transaction)."""
        row = self.row(key, seed, protocol)
        if row is not None:
            return row.id
        return self.db.execute("INSERT INTO trainings(expression, primitives, params, seed, "
                               "protocol, status) VALUES (?, ?, ?, ?, ?, 'pending')",
                               (*key, seed, protocol)).lastrowid

    def start(self, rid: int) -> None:
        with self.db:
            self.db.execute("UPDATE trainings SET status = 'running' WHERE id = ?", (rid,))

    def finish(self, rid: int, ok: bool, accuracy, error) -> None:
        with self.db:
            self.db.execute("UPDATE trainings SET status = ?, accuracy = ?, error = ?, "
                            "finished_at = ? WHERE id = ?",
                            (str(Status.DONE if ok else Status.FAILED), accuracy, error or None,
                             time.time(), rid))

    def trainings(self) -> list[TransferTraining]:
        return [TransferTraining.from_row(r) for r in
                self.db.execute("SELECT * FROM trainings ORDER BY id")]

    def close(self) -> None:
        self.db.close()

"""Typed work items: what a worker is asked to train, and what it answers.

A :class:`Job` is one training (or one call of a user's fitness, or one table lookup) of one
function; a :class:`JobResult` its outcome.  Both are frozen.  Each has a *wire form*, a plain
dict of strings, numbers and lists, which is what crosses a process or Ray boundary -- the
worker runs :func:`~gp_activations.search.worker.evaluate_task` on the wire form of a job and
returns the wire form of its result, so every executor runs exactly the same code.

A :class:`JobKey` says which training a job is: whose (``kind`` and ``id``: a candidate, a
final training of ``evaluate``, a row of a transfer) and which part of it (halving's ``rung``
and ``seed``, a multi-task search's ``task``).  The owner of a job -- a fidelity, evaluate,
transfer -- reads the key back as typed fields, never by parsing a string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from .. import __version__


class JobKind(str, enum.Enum):
    """Whose training a job is (a ``str``, so it travels and compares as its text)."""

    CANDIDATE = "candidate"  # a search candidate, trained once (the full fidelity)
    RUNG = "rung"  # one rung and seed of successive halving
    TASK = "task"  # one task of a multi-task search (candidate 0: ReLU's reference)
    FINAL = "final"  # a final training of ``evaluate`` (id: the store's final_trainings row)
    TRANSFER = "transfer"  # a training of ``transfer`` (id: its row in the store)
    RACE = "race"  # a seed of the final race among a search's top candidates

    def __str__(self) -> str:
        return self.value


class JobStatus(str, enum.Enum):
    """A finished job's outcome."""

    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class JobKey:
    kind: JobKind
    id: int
    rung: Optional[int] = None
    seed: Optional[int] = None
    task: Optional[int] = None

    def to_wire(self) -> dict:
        return {"kind": str(self.kind), "id": self.id, "rung": self.rung, "seed": self.seed,
                "task": self.task}

    @classmethod
    def from_wire(cls, wire: dict) -> "JobKey":
        return cls(JobKind(wire["kind"]), int(wire["id"]), wire.get("rung"), wire.get("seed"),
                   wire.get("task"))

    def __str__(self) -> str:
        parts = [f"{self.kind} {self.id}"]
        parts += [f"{name} {value}" for name, value in (("task", self.task), ("rung", self.rung),
                                                       ("seed", self.seed)) if value is not None]
        return ", ".join(parts)


@dataclass(frozen=True, eq=False)
class Job:
    """One evaluation of one function.  ``model``, ``data`` and ``fitness`` are registered names,
    ``module:function`` references or (in-process) Python objects; ``train`` is a
    :class:`~gp_activations.train.TrainConfig` as a dict; ``seed`` the training's seed."""

    key: JobKey
    expression: str
    primitives: str
    params: tuple = ()
    dataset: Optional[str] = None
    model: Any = None
    data: Any = None
    fitness: Any = None
    train: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    split: str = "val"
    data_dir: Optional[str] = None
    verify: bool = True
    download: bool = False
    lookup: Optional[str] = None
    normalize: bool = False  # train (f(x) - shift) / scale (gp_activations.normalization)
    val_size: Optional[int] = None  # mnist1d_hard's split sizes (data.load_dataset)
    test_size: Optional[int] = None

    def with_(self, **changes) -> "Job":
        return replace(self, **changes)

    def to_wire(self) -> dict:
        wire = {f.name: getattr(self, f.name) for f in fields(self)}
        wire["key"] = self.key.to_wire()
        wire["params"] = list(self.params)
        wire["train"] = dict(self.train)
        return wire

    @classmethod
    def from_wire(cls, wire: dict) -> "Job":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(wire) - known)
        if unknown:  # a newer driver's job (a Ray worker of an older version): never half-run it
            raise ValueError(f"job fields {unknown} are unknown to this worker's gp-activations "
                             f"{__version__}: install the driver's version on every worker")
        values = dict(wire)
        values["key"] = JobKey.from_wire(wire["key"])
        values["params"] = tuple(wire.get("params") or ())
        return cls(**values)


@dataclass(frozen=True, eq=False)
class JobResult:
    """What a job gave: ``fitness`` (validation or test accuracy, or the user's fitness value),
    the training record as ``metrics``, an ``error`` for a failure (or the note of a run at
    chance), and when it ran."""

    key: JobKey
    status: JobStatus
    fitness: Optional[float] = None
    metrics: Optional[dict] = None
    error: str = ""
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    pid: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.DONE

    @property
    def seconds(self) -> float:
        return (self.finished_at or 0) - (self.started_at or 0)

    def to_wire(self) -> dict:
        return {"key": self.key.to_wire(), "status": str(self.status), "fitness": self.fitness,
                "metrics": self.metrics, "error": self.error, "started_at": self.started_at,
                "finished_at": self.finished_at, "pid": self.pid}

    @classmethod
    def from_wire(cls, wire: dict) -> "JobResult":
        return cls(JobKey.from_wire(wire["key"]), JobStatus(wire["status"]), wire.get("fitness"),
                   wire.get("metrics"), wire.get("error") or "", wire.get("started_at"),
                   wire.get("finished_at"), wire.get("pid"))

    @classmethod
    def failure(cls, key: JobKey, error: str, started_at: Optional[float],
                finished_at: Optional[float]) -> "JobResult":
        return cls(key, JobStatus.FAILED, None, None, error, started_at, finished_at)

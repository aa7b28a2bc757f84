"""How a candidate's fitness is measured: fidelities, plugged into the driver like pruners.

A fidelity answers three questions, and the driver asks nothing else:

- :meth:`Fidelity.jobs` -- which trainings do this generation's candidates still need?  The
  driver runs them and asks again, until the answer is none (successive halving answers rung by
  rung);
- :meth:`Fidelity.record` -- store one finished job; which candidates may now be scorable?
- :meth:`Fidelity.score` -- a candidate's :class:`Score` once its jobs are done (None: not yet).

Everything a fidelity decides is recomputed from what it stored, so a resumed search redoes no
finished training and scores exactly the same candidates.  A new fidelity is a subclass (see
the tests for one defined there) and :func:`make_fidelity` or ``Search(..., fidelity=)`` plugs
it in; the driver is not touched.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from ..errors import UserError
from .jobs import Job, JobKey, JobKind, JobResult, JobStatus
from .store import Candidate, RunStore, Status

log = logging.getLogger("gp_activations.search")


class FidelityKind(str, enum.Enum):
    FULL = "full"
    HALVING = "halving"

    def __str__(self) -> str:
        return self.value


class Aggregate(str, enum.Enum):
    """How a multi-task search combines its tasks' normalised accuracies."""

    MEAN = "mean"
    MIN = "min"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Rung:
    """One rung of successive halving: ``seeds`` trainings of ``epochs`` epochs."""

    epochs: float
    seeds: int = 1


@dataclass(frozen=True)
class Task:
    """One entry of a multi-task search: a registered dataset and model, a weight, a schedule."""

    name: str
    dataset: str
    model: Optional[str]
    weight: float
    train: dict  # a TrainConfig as a dict

    @classmethod
    def from_dict(cls, entry: dict) -> "Task":
        return cls(entry["name"], entry["dataset"], entry["model"], float(entry["weight"]),
                   dict(entry["train"]))


@dataclass(frozen=True)
class Score:
    """A candidate's verdict: its fitness (or why it failed) and the record of its trainings."""

    status: Status
    fitness: Optional[float]
    metrics: dict = field(default_factory=dict)
    error: str = ""
    started_at: Optional[float] = None
    finished_at: Optional[float] = None


def _span(runs) -> tuple:
    started = min((r.started_at for r in runs if r.started_at), default=None)
    finished = max((r.finished_at for r in runs if r.finished_at), default=None)
    return started, finished


class Fidelity:
    """The interface (and a do-nothing base).  ``base`` is the run's job template: the task,
    schedule, seed and device every job starts from."""

    kind = "fidelity"

    def __init__(self, store: RunStore, base: Job):
        self.store, self.base = store, base

    def job(self, row: Candidate, key: JobKey, **changes) -> Job:
        return self.base.with_(key=key, expression=row.expression, params=tuple(row.params),
                               **changes)

    def jobs(self, generation: int, rows: Sequence[Candidate]) -> list[Job]:
        raise NotImplementedError

    def record(self, result: JobResult) -> Iterable[int]:
        raise NotImplementedError

    def score(self, row: Candidate) -> Optional[Score]:
        raise NotImplementedError

    def scorable(self, generation: int, rows: Sequence[Candidate]) -> Iterable[int]:
        """Candidates to score once no job is left (besides those :meth:`record` named)."""
        return [r.id for r in rows]

    def timeouts(self) -> list:
        """The TrainConfigs of this fidelity's trainings (for the executor's hang limit)."""
        return [self.base.train]


class FullFidelity(Fidelity):
    """Each candidate trains once, on the run's schedule; its accuracy is its fitness."""

    kind = FidelityKind.FULL

    def __init__(self, store: RunStore, base: Job):
        super().__init__(store, base)
        self._results: dict[int, JobResult] = {}

    def jobs(self, generation, rows):
        unscored = {c.id for c in self.store.candidates(status=(Status.PENDING, Status.RUNNING),
                                                        generation=generation, unique=True)}
        return [self.job(r, JobKey(JobKind.CANDIDATE, r.id)) for r in rows if r.id in unscored]

    def record(self, result):
        self._results[result.key.id] = result
        return [result.key.id]

    def score(self, row):
        result = self._results.pop(row.id, None)
        if result is None:
            return None
        return Score(Status.DONE if result.ok else Status.FAILED, result.fitness,
                     result.metrics, result.error, result.started_at, result.finished_at)

    def scorable(self, generation, rows):
        return []


class HalvingFidelity(Fidelity):
    """Successive halving.  Every pending candidate of a generation trains rung 0 (a short
    budget); the best ``1/eta`` of each rung (by the rung's mean accuracy, ties by id) go on to
    the next -- longer and/or more seeds.  Each training is a job of its own, committed to the
    store's ``rung_runs`` as it finishes; promotions are recomputed from those rows.  Fitness:
    the mean accuracy on the highest rung reached.  The reference (plain ReLU) always trains the
    full budget."""

    kind = FidelityKind.HALVING

    def __init__(self, store: RunStore, base: Job, rungs: Sequence[Rung], eta: float,
                 is_reference, seed: int):
        super().__init__(store, base)
        self.rungs, self.eta, self.is_reference, self.seed = list(rungs), eta, is_reference, seed

    def rung0_field(self, generation: int, rows: Sequence[Candidate]) -> list[Candidate]:
        """The generation's rung-0 field: the pending candidates and those scored before an
        interruption (so a resume promotes among exactly the same candidates)."""
        pending = {r.id for r in rows}
        return list(rows) + [c for c in self.store.candidates(generation=generation, unique=True)
                             if c.id not in pending and self.store.rung_runs(c.id)]

    def jobs(self, generation, rows):
        rows = self.rung0_field(generation, rows)
        alive = [r.id for r in rows]
        for r, rung in enumerate(self.rungs):
            if r:
                alive = self.promoted(alive, r - 1)
            work = []
            for row in rows:
                if row.id not in alive:
                    continue
                runs = self.store.rung_runs(row.id)
                if any(x.status == JobStatus.FAILED for x in runs):
                    continue  # failed on a lower rung: never promoted
                have = {(x.rung, x.seed) for x in runs}
                work += [self.job(row, JobKey(JobKind.RUNG, row.id, rung=r, seed=s),
                                  train={**self.base.train, "epochs": rung.epochs},
                                  seed=self.seed + s)
                         for s in range(rung.seeds) if (r, s) not in have]
            if work:
                return work
        return []

    @staticmethod
    def rung_mean(runs, rung: int) -> Optional[float]:
        values = [x.accuracy for x in runs if x.rung == rung and x.status == JobStatus.DONE]
        return sum(values) / len(values) if values else None

    def promoted(self, members: list, rung: int) -> list:
        """The best ``ceil(len(members) / eta)`` of ``members`` on ``rung`` (failures never),
        plus the reference."""
        scores = {}
        for cid in members:
            runs = self.store.rung_runs(cid)
            if any(x.status == JobStatus.FAILED for x in runs):
                continue
            mean = self.rung_mean(runs, rung)
            if mean is not None:
                scores[cid] = mean
        keep = max(1, math.ceil(len(members) / self.eta))
        promoted = sorted(scores, key=lambda c: (-scores[c], c))[:keep]
        promoted += [c for c in scores
                     if c not in promoted and self.is_reference(self.store.candidate(c))]
        return promoted

    def record(self, result):
        key = result.key
        epochs = self.rungs[key.rung].epochs
        self.store.record_rung_run(key.id, key.rung, key.seed, result.status, result.fitness,
                                   epochs, result.error, result.metrics, result.started_at,
                                   result.finished_at)
        log.info("candidate %d rung %d (%g epochs) seed %d: %s accuracy=%s%s", key.id, key.rung,
                 epochs, key.seed, result.status,
                 "n/a" if result.fitness is None else f"{result.fitness:.4f}",
                 f" error: {result.error}" if result.error else "")
        return []  # scored once every rung is done: a promotion may still come

    def scorable(self, generation, rows):
        return [r.id for r in self.rung0_field(generation, rows)]

    def score(self, row):
        runs = self.store.rung_runs(row.id)
        if not runs:
            return None
        top = max(x.rung for x in runs)
        summary = [{"rung": r, "epochs": self.rungs[r].epochs,
                    "seeds": sum(1 for x in runs if x.rung == r), "mean": self.rung_mean(runs, r)}
                   for r in range(top + 1)]
        first = next((x for x in runs if x.rung == top and x.status == JobStatus.DONE), None)
        record = (first.metrics or {}) if first else {}  # the top rung's training record
        metrics = {**record, "rung": top, "rungs": summary,
                   "epochs_trained": sum(x.epochs or 0 for x in runs),
                   "seconds": sum((x.finished_at or 0) - (x.started_at or 0) for x in runs)}
        started, finished = _span(runs)
        failed = [x for x in runs if x.status == JobStatus.FAILED]
        if failed:
            return Score(Status.FAILED, None, metrics, f"rung {failed[0].rung}: {failed[0].error}",
                         started, finished)
        return Score(Status.DONE, self.rung_mean(runs, top), metrics, "", started, finished)

    def timeouts(self):
        return [{**self.base.train, "epochs": rung.epochs} for rung in self.rungs]


def aggregate_fitness(per_task: list, how) -> float:
    """The multi-task fitness: the weighted mean (``how = "mean"``) or the minimum of each
    task's accuracy divided by ReLU's accuracy on that task (so ReLU scores 1.0)."""
    values = [(t["normalised"], t["weight"]) for t in per_task]
    if Aggregate(how) is Aggregate.MIN:
        return min(v for v, _ in values)
    return sum(v * w for v, w in values) / sum(w for _, w in values)


class MultiTaskFidelity(Fidelity):
    """Each candidate trains once per task; its fitness aggregates its accuracies divided by
    ReLU's on the same task.  ReLU's reference trainings (candidate id 0) go first; plain ReLU
    is scored from them.  A candidate that fails on one task is scored failed without training
    the others."""

    def __init__(self, store: RunStore, base: Job, tasks: Sequence[Task], aggregate: Aggregate,
                 is_reference, relu_expression: str):
        super().__init__(store, base)
        self.tasks, self.aggregate = list(tasks), Aggregate(aggregate)
        self.is_reference, self.relu_expression = is_reference, relu_expression

    kind = "multi-task"

    def task_job(self, index: int, key_id: int, expression: str, params=(), **changes) -> Job:
        task = self.tasks[index]
        return self.base.with_(key=JobKey(JobKind.TASK, key_id, task=index), expression=expression,
                               params=tuple(params), dataset=task.dataset, model=task.model,
                               train=task.train, **changes)

    def jobs(self, generation, rows):
        work = []
        refs = self.store.task_runs(0)
        for t in range(len(self.tasks)):
            if t not in refs or refs[t].status != JobStatus.DONE:  # a failed one is retried
                work.append(self.task_job(t, 0, self.relu_expression, primitives="pangaea"))
        for row in rows:
            if self.is_reference(row):
                continue  # plain ReLU: scored from the reference trainings
            finished = self.store.task_runs(row.id)
            if any(r.status == JobStatus.FAILED for r in finished.values()):
                continue  # failed on one task: scored without training the others
            work += [self.task_job(t, row.id, row.expression, row.params)
                     for t in range(len(self.tasks)) if t not in finished]
        return work

    def record(self, result):
        cid, t = result.key.id, result.key.task
        status, error = result.status, result.error
        if cid == 0 and result.ok and (result.metrics or {}).get("status") == "chance":
            # a normaliser at chance would inflate every candidate's fitness
            status, error = JobStatus.FAILED, f"ReLU stayed at chance: {error}"
        name = self.tasks[t].name
        self.store.record_task_run(cid, t, name, status, result.fitness, error, result.metrics,
                                   result.started_at, result.finished_at)
        if cid == 0 and status == JobStatus.FAILED:
            raise UserError(f"ReLU, the reference of the multi-task fitness, failed on {name}: "
                            f"{error} -- that task cannot normalise fitness; give it another "
                            f"schedule (train/epochs) in a new run (a resume retries the "
                            f"reference)")
        what = "ReLU reference" if cid == 0 else f"candidate {cid}"
        log.info("%s on %s: %s accuracy=%s (%.1f s)%s", what, name, status,
                 "n/a" if result.fitness is None else f"{result.fitness:.4f}", result.seconds,
                 f" error: {result.error}" if result.error else "")
        if cid == 0:  # the candidates that waited for this reference
            return [r.id for r in self.store.candidates(status=(Status.PENDING, Status.RUNNING),
                                                        unique=True)]
        return [cid]

    def scorable(self, generation, rows):
        return [r.id for r in self.store.candidates(status=(Status.PENDING, Status.RUNNING),
                                                    generation=generation, unique=True)]

    def score(self, row):
        refs = {t: r for t, r in self.store.task_runs(0).items()
                if r.status == JobStatus.DONE and r.accuracy}  # a failed one is retried first
        reference = self.is_reference(row)
        runs = refs if reference else self.store.task_runs(row.id)
        failed = [r for r in runs.values() if r.status == JobStatus.FAILED]
        n = len(self.tasks)
        if not failed and (len(runs) < n or len(refs) < n):
            return None
        per_task = []
        for t, task in enumerate(self.tasks):
            r = runs.get(t)
            entry = {"task": task.name, "weight": task.weight,
                     "status": None if r is None else str(r.status),
                     "accuracy": None if r is None else r.accuracy,
                     "relu": refs[t].accuracy if t in refs else None}
            if entry["accuracy"] is not None and entry["relu"]:
                entry["normalised"] = entry["accuracy"] / entry["relu"]
            per_task.append(entry)
        started, finished = _span(runs.values())
        metrics = {"tasks": per_task, "aggregate": str(self.aggregate),
                   "seconds": sum((r.finished_at or 0) - (r.started_at or 0)
                                  for r in runs.values()),
                   "trained_as": "relu reference" if reference else None}
        if failed:
            return Score(Status.FAILED, None, metrics, f"{failed[0].name}: {failed[0].error}",
                         started, finished)
        return Score(Status.DONE, aggregate_fitness(per_task, self.aggregate), metrics, "",
                     started, finished)

    def timeouts(self):
        return [task.train for task in self.tasks]

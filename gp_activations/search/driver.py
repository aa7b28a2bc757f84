"""The search loop: create a generation, evaluate it, keep the survivors -- resumably.

The driver decides nothing about *what* to train: a strategy (``strategies.py``) is asked for
proposals and told the results.  The driver screens, deduplicates, (optionally) pre-screens
with a surrogate, stores, trains (in one go, in halving's rungs or per task) and commits.

Each generation goes through two committed states:

1. ``created`` -- every new candidate (plain function + parametric variants) is screened and
   written as ``pending``/``rejected``/``failed`` (or as a duplicate of an earlier one) in one
   transaction, together with the evolution RNG state after creating them;
2. ``done`` -- after every pending candidate has a result (each committed as it arrives), the
   survivors are written to ``population``.

Resuming therefore never redoes finished work: ``running`` candidates go back to ``pending``, a
``created`` generation is evaluated to completion, and the next generation is created from the
saved RNG state exactly as the uninterrupted run would have.  Evolution decisions depend only
on completed generations, so the evaluation order (and the executor) cannot change them.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ..activation import Activation
from .config import SearchConfig
from .executors import default_task_timeout, make_executor, run_jobs
from .fidelities import Fidelity, FidelityKind, FullFidelity, HalvingFidelity, MultiTaskFidelity
from .fidelities import Score, aggregate_fitness  # noqa: F401 -- re-exported
from .generation import Breeder
from .jobs import Job, JobResult
from .monitor import make_monitor
from .race import race_stages
from .randomness import RandomStreams
from .plan import RESUME_OVERRIDABLE, SearchPlan, resolve_plan, stored_or_new_config  # noqa: F401
from .results import SearchResult, search_result
from .store import RunStore, Status

log = logging.getLogger("gp_activations.search")


def make_fidelity(plan: SearchPlan, store: RunStore) -> Fidelity:
    """The fidelity a plan asks for: multi-task, successive halving, or one full training."""
    if plan.multi_task:
        from .. import zoo

        return MultiTaskFidelity(store, plan.base_job, plan.tasks, plan.aggregate,
                                 plan.is_reference, zoo.get("relu").expression)
    if plan.fidelity is FidelityKind.HALVING:
        return HalvingFidelity(store, plan.base_job, plan.rungs, plan.config.eta,
                               plan.is_reference, plan.config.fitness_seed)
    return FullFidelity(store, plan.base_job)


class Search:
    """A resumable search in a run directory: create a generation, evaluate it, keep the
    survivors.  ``model``/``data``/``fitness`` may be Python objects (API use) or
    ``module:function`` references (TOML and worker processes); ``fidelity`` a factory
    ``(plan, store) -> Fidelity`` that replaces the config's; ``stages`` factories
    ``(plan, store)`` of what runs after the last generation (default: the final race when the
    config asks for one), each with ``run(run_jobs)``; ``tensorboard`` a directory for
    TensorBoard event files."""

    def __init__(self, config: SearchConfig, out, *, resume: bool = False, model=None, data=None,
                 fitness=None, progress: bool = True, overrides: Optional[dict] = None,
                 fidelity: Optional[Callable[[SearchPlan, RunStore], Fidelity]] = None,
                 stages: Optional[list] = None, tensorboard=None):
        self.run_dir = Path(out)
        self.progress = progress
        config, store, changed = stored_or_new_config(config, out, resume, overrides)
        try:
            # On resume the task comes from the stored config (a reference the run was started
            # with), not from the default config that a resuming caller passes.
            self.plan = resolve_plan(config, model=model, data=data, fitness=fitness,
                                     check_task=not resume)
        except BaseException:
            if store is not None:
                store.unlock()
            raise
        self.config = self.plan.config
        if store is None:  # everything that can reject the config ran before this
            store = RunStore.create(self.run_dir, self.plan.stored_config)
            store.lock()
        elif changed:
            store.set_meta("config", self.config.to_dict())
        self.store = store
        self.streams = RandomStreams(self.config.seed)
        self.plan.strategy.numpy_rng = self.streams.numpy
        self.breeder = Breeder(self.plan, store, self.streams)
        self.fidelity = (fidelity or make_fidelity)(self.plan, store)
        self.stages = [make(self.plan, store) for make in
                       (race_stages(self.plan) if stages is None else stages)]
        self.executor = None
        self.tensorboard = tensorboard
        self.monitor = None  # progress lines/bar and TensorBoard (search/monitor.py)
        self._log_handler = None

    @property
    def best(self) -> Optional[float]:
        """The best fitness so far."""
        return self.store.best_fitness()

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        started = time.time()
        self._start_logging()
        interrupted = False
        try:
            redo = self.store.reset_in_flight()
            if redo:
                log.info("resuming: %d interrupted evaluations will be redone", redo)
            self.monitor = make_monitor(self.run_dir, self.store,
                                        tensorboard_dir=self.tensorboard,
                                        stream=sys.stderr if self.progress else None,
                                        total=self._progress_total)
            if self._work_left():
                self._start_executor()
            self._loop()
            for stage in self.stages:  # after the last generation: the final race
                stage.run(self._run_stage_jobs)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted; finished evaluations are saved")
        except BaseException:
            log.exception("search stopped by an error")
            self._stop_logging()
            self.store.unlock()
            raise
        finally:
            if self.executor is not None:
                self.executor.close()
                self.executor = None
            if self.monitor is not None:
                self.monitor.close()
        try:
            result = search_result(self.store, self.plan, interrupted, time.time() - started)
            log.info("search %s after %.1f s: %s", "interrupted" if interrupted else "finished",
                     result.wall_time, result.counts)
            return result
        finally:
            self._stop_logging()
            self.store.unlock()

    def _loop(self) -> None:
        """created -> evaluated -> done, one generation after another, until a limit."""
        while True:
            last = self.store.last_generation()
            if last is None:
                self.streams.seed(self.config.seed)
                self._create(0)
            elif last.state == "created":
                self._evaluate(last.generation)
                self._finish_generation(last.generation)
            else:
                nxt = last.generation + 1
                if self._generations_done(nxt) or self._budget_left() <= 0:
                    return
                if self.config.generations is None and last.generation and \
                        not self._trained_in(last.generation):
                    # no generation limit, and the strategy found nothing new to train: the
                    # budget would never be spent
                    log.info("generation %d trained nothing new: stopping (the strategy has "
                             "exhausted what it can propose)", last.generation)
                    return
                self.streams.restore(last.rng_state, self.config.seed, last.generation)
                if not self._create(nxt):
                    # finished (with the same survivors) by the next pass of the loop, exactly
                    # as a resumed run would: the generation count ends the search
                    log.info("generation %d: no new functions could be created", nxt)

    def _run_stage_jobs(self, jobs: list, on_result: Callable[[JobResult], None]) -> None:
        self._start_executor()
        run_jobs(self.executor, jobs, lambda job: None, on_result)

    def _create(self, generation: int) -> int:
        made = self.breeder.create(generation, self._budget_left())
        self.monitor.generation_created(generation, made, len(self.store.pending(generation)))
        return made

    def _trained_in(self, generation: int) -> int:
        return sum(1 for c in self.store.candidates(generation=generation, unique=True)
                   if c.trained or c.status in (Status.PENDING, Status.RUNNING))

    def _generations_done(self, generations: int) -> bool:
        return self.config.generations is not None and generations >= self.config.generations

    def _budget_left(self) -> float:
        if self.config.budget is None:
            return math.inf
        return self.config.budget - self.store.count_trainings()

    def _work_left(self) -> bool:
        last = self.store.last_generation()
        return (last is None or last.state == "created"
                or (not self._generations_done(last.generation + 1) and self._budget_left() > 0))

    # -- evaluating ------------------------------------------------------------------------------
    def _start_executor(self) -> None:
        """Workers start (and load the dataset) while the driver screens generation 0."""
        if self.executor is not None:
            return
        cfg = self.config
        timeout = cfg.task_timeout
        if timeout is None:  # the longest of the fidelity's trainings
            from ..train import TrainConfig

            limits = [default_task_timeout(cfg.executor, TrainConfig(**train))
                      for train in self.fidelity.timeouts()]
            timeout = None if None in limits else max(limits)
        self.executor = make_executor(cfg.executor, workers=cfg.workers, threads=cfg.threads,
                                      timeout=timeout, gpus=self.plan.gpus,
                                      ray_address=cfg.ray_address, run_dir=self.run_dir,
                                      warmup=self.plan.base_job.to_wire())
        log.info("executor: %s with %d worker(s), %d thread(s) each", cfg.executor,
                 getattr(self.executor, "workers", 1), cfg.threads)

    def _evaluate(self, generation: int) -> None:
        rows = self.store.pending(generation)
        if not rows:
            return
        self._start_executor()
        # Longest first, by the deterministic cost estimate: the generation then ends on short
        # trainings, so workers idle less at its boundary.  Every training has its own seed, so
        # the order changes the wall time only, never a result.
        rows = sorted(rows, key=lambda r: -Activation.from_string(
            r.expression, self.plan.pset, r.params).estimated_cost)
        while True:
            jobs = self.fidelity.jobs(generation, rows)
            if not jobs:
                break
            run_jobs(self.executor, jobs, self._on_start, self._on_result)
        for cid in self.fidelity.scorable(generation, rows):
            self._score(cid)

    def _on_start(self, job: Job) -> None:
        cid = job.key.id
        if cid and self.store.candidate(cid).status == Status.PENDING:
            self.store.mark_running(cid)

    def _on_result(self, result: JobResult) -> None:
        for cid in self.fidelity.record(result):
            self._score(cid)

    def _score(self, cid: int) -> None:
        """Commit candidate ``cid``'s score if all it needs has finished."""
        row = self.store.candidate(cid)
        if row.status not in (Status.PENDING, Status.RUNNING):
            return
        score = self.fidelity.score(row)
        if score is not None:
            self._commit(row, score)

    def _commit(self, row, score: Score) -> None:
        self.store.record_result(row.id, str(score.status), score.fitness, score.metrics,
                                 score.error, score.started_at, score.finished_at)
        fitness = score.fitness
        seconds = (score.finished_at or 0) - (score.started_at or 0)
        log.info("candidate %d %s: %s fitness=%s (%.1f s)%s", row.id, row.label, score.status,
                 "n/a" if fitness is None else f"{fitness:.4f}", seconds,
                 f" error: {score.error}" if score.error else "")
        self.monitor.candidate_scored(self.store.candidate(row.id), score)

    # -- survivors -------------------------------------------------------------------------------
    def _finish_generation(self, generation: int) -> None:
        cfg = self.config
        new = [c.id for c in self.store.candidates(generation=generation, plain=True, unique=True)]
        history = self.breeder.history(generation)
        old = [m.function_id for m in history.population]
        scored = {}
        for fid in dict.fromkeys(old + new):
            fitness, _ = self.store.function_fitness(fid, cfg.variant_fitness)
            if fitness is not None:
                scored[fid] = fitness
        survivors = self.plan.strategy.tell(history, scored, new)
        self.store.finish_generation(generation, [(f, scored[f]) for f in survivors])
        best = scored[survivors[0]] if survivors else None
        log.info("generation %d done: %d functions scored, population %d, best %s", generation,
                 len(scored), len(survivors), "n/a" if best is None else f"{best:.4f}")
        self.monitor.generation_finished(generation, scored, survivors, best)

    # -- reporting ---------------------------------------------------------------------------------
    def _progress_total(self) -> int:
        if self.config.budget:
            return self.config.budget
        done = self.store.count_trainings()
        if self.config.generations is None:
            return done
        generations_left = self.config.generations - len(self.store.generation_rows())
        per_generation = self.config.n_offspring * (1 + self.config.param_variants)
        return done + max(0, generations_left) * per_generation

    def _start_logging(self) -> None:
        handler = logging.FileHandler(self.run_dir / "search.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self._saved_logger = (log.level, log.propagate)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        self._log_handler = handler

    def _stop_logging(self) -> None:
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
            level, log.propagate = self._saved_logger  # the caller's logging, untouched
            log.setLevel(level)

    def result(self, interrupted: bool = False, wall_time: float = 0.0, k: int = 5) -> SearchResult:
        return search_result(self.store, self.plan, interrupted, wall_time, k)


def run_search(config: Optional[SearchConfig] = None, out="runs/search", *, resume: bool = False,
               model=None, data=None, fitness: Optional[Callable] = None, progress: bool = True,
               fidelity: Optional[Callable] = None, stages: Optional[list] = None,
               tensorboard=None, **overrides) -> SearchResult:
    """Run (or resume) a search and return its :class:`SearchResult`.

    ``config`` defaults to :class:`SearchConfig()`; keyword ``overrides`` replace fields.  Bring
    your own task with ``model`` (a callable taking an activation factory), ``data`` (tensors,
    a Dataset, torch datasets or a loader) or a whole ``fitness(activation, seed)`` callable;
    ``fidelity``, a factory ``(plan, store) -> Fidelity``, replaces the config's fidelity.
    """
    config = config or SearchConfig()
    if overrides and not resume:
        config = config.replace(**overrides)
    return Search(config, out, resume=resume, model=model, data=data, fitness=fitness,
                  progress=progress, overrides=overrides if resume else None,
                  fidelity=fidelity, stages=stages, tensorboard=tensorboard).run()

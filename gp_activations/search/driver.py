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

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .. import zoo
from ..activation import Activation, latex_or_note
from ..errors import UserError
from ..primitive_sets import load_primitive_set
from .config import SearchConfig, is_object_label, object_label
from .evolution import choose_param_edges, make_toolbox
from .executors import default_task_timeout, make_executor
from .ranking import flag_text, ranked_functions, skipped_note
from .screening import screen
from .store import Candidate, RunStore, Status, is_run_dir
from .strategies import History, Member, make_strategy
from ..references import resolve_reference

log = logging.getLogger("gp_activations.search")

#: Config keys that may change when a run is resumed (everything else defines the run).
RESUME_OVERRIDABLE = {"generations", "budget", "executor", "workers", "ray_address", "task_timeout"}


@dataclass
class SearchResult:
    run_dir: Path
    top: list = field(default_factory=list)  # dicts: rank, fitness, expression, params, latex...
    relu_fitness: Optional[float] = None
    counts: dict = field(default_factory=dict)
    dedup_hits: int = 0
    interrupted: bool = False
    wall_time: float = 0.0

    skipped_note: str = ""  # affine functions left out of the ranking
    failures: list = field(default_factory=list)  # (reason, count), most common first
    tasks: list = field(default_factory=list)  # multi-task: names; top rows carry "tasks"
    references: dict = field(default_factory=dict)  # multi-task: ReLU's accuracy per task name

    def task_table(self) -> str:
        """A multi-task search's top functions, one column per task (validation accuracy)."""
        if not self.tasks:
            return ""
        width = max(9, *(len(t) for t in self.tasks))
        lines = ["per task (validation accuracy; ReLU's below):",
                 f"{'rank':>4s}  " + "  ".join(f"{t:>{width}s}" for t in self.tasks)]
        for row in self.top:
            accs = {t["task"]: t.get("accuracy") for t in row.get("tasks", [])}
            lines.append(f"{row['rank']:4d}  " + "  ".join(
                f"{'n/a' if accs.get(t) is None else format(accs[t], '.4f'):>{width}s}"
                for t in self.tasks))
        lines.append(f"{'relu':>4s}  " + "  ".join(
            f"{'n/a' if self.references.get(t) is None else format(self.references[t], '.4f'):>{width}s}"
            for t in self.tasks))
        return "\n".join(lines)

    @property
    def all_failed(self) -> bool:
        """Nothing trained successfully although something was tried."""
        return self.counts.get("done", 0) == 0 and bool(self.failures)

    def failure_summary(self, limit: int = 5) -> str:
        lines = [f"  {n:4d} x {reason}" for reason, n in self.failures[:limit]]
        more = len(self.failures) - limit
        return "\n".join(lines + ([f"  ... and {more} other reasons"] if more > 0 else []))

    def table(self) -> str:
        lines = [f"{'rank':>4s}  {'fitness':>7s}  function", ]
        for row in self.top:
            lines.append(f"{row['rank']:4d}  {row['fitness']:7.4f}  {row['label']}{row.get('flags', '')}")
            lines.append(f"{'':15s}{row['latex']}")
        relu = "n/a" if self.relu_fitness is None else f"{self.relu_fitness:.4f}"
        lines.append(f"{'':4s}  {relu:>7s}  relu(x)  (ReLU under the same budget)")
        if self.skipped_note:
            lines.append(f"note: {self.skipped_note}")
        return "\n".join(lines)


def _label(expression: str, params) -> str:
    params = list(params)
    return f"{expression} @ params {params}" if params else expression


class Search:
    """A resumable search in a run directory.  ``model``/``data``/``fitness`` may be Python
    objects (API use) or ``module:function`` references (TOML and worker processes)."""

    def __init__(self, config: SearchConfig, out, *, resume: bool = False, model=None, data=None,
                 fitness=None, progress: bool = True, overrides: Optional[dict] = None):
        self.run_dir = Path(out)
        self.progress = progress
        if resume:
            if not is_run_dir(self.run_dir):
                raise UserError(f"--resume: {self.run_dir} is not a search run "
                                f"(no run.sqlite); start one with --out {self.run_dir}")
            self.store = RunStore.open(self.run_dir)
            self.store.lock()  # before anything is written: a live search may own this run
            stored = self.store.config()
            # None leaves a key as stored -- except generations, where None means "no limit
            # (until the budget is spent)"
            changed = {k: v for k, v in (overrides or {}).items()
                       if (v is not None or k == "generations") and stored.get(k) != v}
            fixed = sorted(set(changed) - RESUME_OVERRIDABLE)
            if fixed:
                raise UserError(f"--resume: {fixed[0]!r} defines the run and cannot change "
                                f"(only {', '.join(sorted(RESUME_OVERRIDABLE))} can)")
            self.config = SearchConfig.from_dict({**stored, **changed}, where="stored config")
            if changed:
                self.store.set_meta("config", self.config.to_dict())
        else:
            self.config = config
        # On resume the task comes from the stored config (a reference the run was started
        # with), not from the default config that a resuming caller passes.
        self.model = model if model is not None else self.config.model
        self.data = data if data is not None else self.config.data
        self.fitness = fitness if fitness is not None else self.config.fitness
        for key in ("model", "data", "fitness"):
            value = getattr(self, key)
            if is_object_label(value):
                raise UserError(f"this run was started from Python with a {key} object; resume "
                                f"it from Python passing the same {key}=")
            if isinstance(value, str) and ":" in value:
                resolve_reference(value)  # a typo fails now, not in every task
        cfg = self.config
        # Everything that can reject the config runs before the run directory is created.
        self.pset = load_primitive_set(cfg.primitives)
        self.toolbox = make_toolbox(self.pset, max_height=cfg.max_height, max_size=cfg.max_size,
                                    shapes=tuple(cfg.init_shapes),
                                    weights=cfg.mutation_weights)
        self.train_config = cfg.train_config()
        for text in cfg.init_expressions:  # a typo must not leave a half-made run behind
            try:
                Activation.from_string(text, self.pset)
            except UserError as exc:
                raise UserError(f"init_expressions: {text!r}: {exc}") from None
        self.strategy = make_strategy(cfg.strategy, self.toolbox, cfg)
        self.rungs = cfg.rung_list() if cfg.fidelity == "halving" else None
        self.tasks = cfg.task_list() if cfg.multi_task else None
        if self.tasks and not resume:
            from ..train import check_model

            for i, task in enumerate(self.tasks):
                try:
                    check_model(task["model"], task["dataset"], data_dir=cfg.data_dir,
                                verify=cfg.verify, download=cfg.download)
                except UserError as exc:
                    raise UserError(f"config: tasks[{i}] ({task['name']}): {exc}") from None
        elif not self.fitness and not resume:
            from ..train import check_model

            check_model(self.model, self.data if self.data is not None else cfg.dataset,
                        data_dir=cfg.data_dir, verify=cfg.verify, download=cfg.download)
        if not resume:
            self.store = RunStore.create(self.run_dir, self._storable_config(config))
            self.store.lock()
        self.executor = None
        self.bar = None
        self._log_handler = None
        self._dedup: dict[str, int] = {}
        self._function_keys: set[str] = set()
        for row in self.store.candidates(unique=True):
            if row.dedup_key:
                self._dedup.setdefault(row.dedup_key, row.id)
            if row.function_key:
                self._function_keys.add(row.function_key)
        self.best = self.store.best_fitness()
        self.surrogate = None
        if cfg.surrogate:
            from .surrogate import NetworkProbe, Surrogate

            network = None
            if isinstance(self.model or cfg.dataset, str) and self.data is None and not self.tasks:
                try:
                    network = NetworkProbe(cfg.dataset, self.model if isinstance(self.model, str)
                                           else None, data_dir=cfg.data_dir, verify=cfg.verify)
                except UserError:
                    network = None  # a dataset that needs a download: probe features only
            self.surrogate = Surrogate(cfg.surrogate, network, seed=cfg.seed)

    # -- configuration -------------------------------------------------------------------------
    def _storable_config(self, config: SearchConfig) -> dict:
        """The config as stored in the run: file references made absolute (so that resume and
        evaluate work from any directory), Python objects named but not stored."""
        values = config.to_dict()
        for key, obj in (("model", self.model), ("data", self.data), ("fitness", self.fitness)):
            if obj is not None and not isinstance(obj, str):
                values[key] = object_label(obj)
            elif isinstance(obj, str) and ".py:" in obj:
                path, _, attr = obj.rpartition(":")
                values[key] = f"{Path(path).expanduser().resolve()}:{attr}"
        values["primitives"] = self.pset.spec  # a built-in name, an absolute path or module:attr
        if values.get("lookup"):  # resume, evaluate and report work from any directory
            values["lookup"] = str(Path(values["lookup"]).expanduser().resolve())
        if ".py:" in values.get("strategy", ""):
            path, _, attr = values["strategy"].rpartition(":")
            values["strategy"] = f"{Path(path).expanduser().resolve()}:{attr}"
        return values

    def _device(self) -> tuple[str, int]:
        from ..train import resolve_device

        dev = resolve_device(self.config.device)
        if dev.type == "cuda":
            import torch

            return "cuda", torch.cuda.device_count()
        return "cpu", 0

    def _base_task(self) -> dict:
        device, _ = self._device()
        model = self.model
        return {"primitives": self.pset.spec, "dataset": self.config.dataset, "model": model,
                "data": self.data, "fitness": self.fitness, "data_dir": self.config.data_dir,
                "verify": self.config.verify, "download": self.config.download,
                "train": self.train_config.to_dict(), "seed": self.config.fitness_seed,
                "device": device, "threads": self.config.threads, "lookup": self.config.lookup}

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        started = time.time()
        self._start_logging()
        interrupted = False
        try:
            redo = self.store.reset_in_flight()
            if redo:
                log.info("resuming: %d interrupted evaluations will be redone", redo)
            self._open_progress()
            if self._work_left():
                self._start_executor()
            while True:
                last = self.store.last_generation()
                if last is None:
                    random.seed(self.config.seed)
                    self._create_generation(0)
                elif last.state == "created":
                    self._evaluate(last.generation)
                    self._finish_generation(last.generation)
                else:
                    nxt = last.generation + 1
                    if self._generations_done(nxt) or self._budget_left() <= 0:
                        break
                    if self.config.generations is None and last.generation and \
                            not self._trained_in(last.generation):
                        # no generation limit, and the strategy found nothing new to train:
                        # the budget would never be spent
                        log.info("generation %d trained nothing new: stopping (the strategy has "
                                 "exhausted what it can propose)", last.generation)
                        break
                    random.setstate(_rng_from_json(last.rng_state))
                    if not self._create_generation(nxt):
                        # finished (with the same survivors) by the next pass of the loop, exactly
                        # as a resumed run would: the generation count ends the search
                        log.info("generation %d: no new functions could be created", nxt)
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
            if self.bar is not None:
                self.bar.close()
        try:
            result = self.result(interrupted, time.time() - started)
            log.info("search %s after %.1f s: %s", "interrupted" if interrupted else "finished",
                     result.wall_time, result.counts)
            return result
        finally:
            self._stop_logging()
            self.store.unlock()

    def _trained_in(self, generation: int) -> int:
        return sum(1 for c in self.store.candidates(generation=generation, unique=True)
                   if c.trained or c.status in (Status.PENDING, Status.RUNNING))

    def _generations_done(self, generations: int) -> bool:
        return self.config.generations is not None and generations >= self.config.generations

    def _budget_left(self) -> float:
        if self.config.budget is None:
            return math.inf
        return self.config.budget - self.store.count_trainings()

    # -- creating a generation ----------------------------------------------------------------------
    def _history(self, generation: int) -> History:
        members = []
        if generation:
            for r in self.store.population(generation - 1):
                cand = self.store.candidate(r.function_id)
                members.append(Member(r.function_id, Activation.from_string(
                    cand.expression, self.pset).tree, r.fitness))
        return History(generation, tuple(members), tuple(self.store.candidates(trained=True)))

    def _create_generation(self, generation: int) -> int:
        """Screen and store the new functions of ``generation`` (the strategy's proposals, in
        its order) in one transaction; returns how many new functions were stored."""
        cfg = self.config
        budget = self._budget_left()
        wanted = cfg.population if generation == 0 else cfg.n_offspring
        history = self._history(generation)
        items, dedup_hits = self._screened_proposals(self.strategy.ask(history), wanted,
                                                     budget, history)
        new_functions = made = 0
        with self.store.transaction():
            for proposal, act, result, predicted in items:
                if budget <= 0:
                    break
                fid = self._insert(act, result, generation, proposal.parents, proposal.mutation,
                                   proposal.origin)
                new_functions += 1
                row = self.store.candidate(fid)
                if predicted is not None:
                    self.store.set_predicted(fid, predicted)
                if row.status != Status.PENDING or row.duplicate_of is not None:
                    continue
                budget -= 1
                made += 1
                placements: set = set()
                for _ in range(cfg.param_variants * 3):
                    if len(placements) >= cfg.param_variants or budget <= 0:
                        break
                    edges = choose_param_edges(act.tree, cfg.max_params)
                    if edges in placements:
                        continue
                    placements.add(edges)
                    variant = act.with_params(edges)
                    vres = screen(variant, max_forward_cost=cfg.max_forward_cost)
                    if vres.dedup_key in self._dedup:
                        dedup_hits += 1
                        continue
                    vid = self._insert(variant, vres, generation, proposal.parents,
                                       proposal.mutation, "variant", fid)
                    if self.store.candidate(vid).status == Status.PENDING:
                        budget -= 1
            self.store.create_generation(generation, json.dumps(random.getstate()))
            hits = self.store.get_meta("dedup_hits", 0) + dedup_hits
            self.store.set_meta("dedup_hits", hits)
        log.info("generation %d created: %d new functions (%d to train), %d duplicates skipped",
                 generation, new_functions, made, dedup_hits)
        if self.bar is not None:
            self.bar.total = self._progress_total()
            self.bar.refresh()
        return new_functions

    def _screened_proposals(self, proposals, wanted: int, budget: float, history: History):
        """([(proposal, activation, screening, predicted)], duplicates skipped): the proposals
        to store, in order.  Pulls proposals until ``wanted`` new trainable functions are in
        (seeds -- ``keep_duplicate`` -- are always taken), at most 50·wanted random attempts.
        With an active surrogate it pulls ``surrogate_pool`` times as many and keeps the
        predicted best plus the exploration share."""
        cfg = self.config
        surrogate = self._fitted_surrogate(history)
        pool = wanted if surrogate is None else int(math.ceil(wanted * cfg.surrogate_pool))
        items, hits, trainable, attempts, keys = [], 0, 0, 0, set()
        for proposal in proposals:
            if not proposal.keep_duplicate:
                if trainable >= min(pool, budget) or attempts >= 50 * pool:
                    break
                attempts += 1
            act = Activation(proposal.tree, self.pset)
            result = screen(act, max_forward_cost=cfg.max_forward_cost)
            key = result.function_key
            if key and (key in self._function_keys or key in keys) and not proposal.keep_duplicate:
                hits += 1
                continue
            if key:
                keys.add(key)
            new = result.ok and not (result.dedup_key and result.dedup_key in self._dedup)
            trainable += bool(new)
            items.append([proposal, act, result, None, new])
        if surrogate is not None:
            from .surrogate import choose

            candidates = [it for it in items if it[4] and not it[0].keep_duplicate]
            if candidates:
                predictions = surrogate.predict([it[1] for it in candidates],
                                                [it[2].function_key for it in candidates])
                for it, value in zip(candidates, predictions):
                    it[3] = float(value)
                keep = set(choose(list(predictions), min(wanted, len(candidates)),
                                  cfg.surrogate_explore, random))
                dropped = {id(it) for i, it in enumerate(candidates) if i not in keep}
                items = [it for it in items if id(it) not in dropped]
                log.info("generation %d: surrogate (fitted on %d) kept %d of %d proposals",
                         history.generation, surrogate.n_fitted, len(keep), len(candidates))
        return [tuple(it[:4]) for it in items], hits

    def _fitted_surrogate(self, history: History):
        """The surrogate fitted on the finished plain functions, or None (off, generation 0,
        or fewer than ``surrogate_min`` of them)."""
        if self.surrogate is None or history.generation == 0:
            return None
        finished = [c for c in history.finished if c.plain]
        if len(finished) < self.config.surrogate_min:
            return None
        acts = [Activation.from_string(c.expression, self.pset) for c in finished]
        return self.surrogate.fit(acts, [c.fitness if c.status == Status.DONE else None
                                         for c in finished], [c.function_key for c in finished])

    def _insert(self, act: Activation, result, generation: int, parents, mutation, origin,
                function_id: Optional[int] = None) -> int:
        fields = dict(expression=act.expression, primitives=self.pset.spec, params=list(act.params),
                      dedup_key=result.dedup_key or None, function_key=result.function_key or None,
                      generation=generation, parent_ids=list(parents), mutation=mutation, origin=origin)
        original = self._dedup.get(result.dedup_key) if result.dedup_key else None
        if original is not None:
            orig = self.store.candidate(original)
            status = orig.status if orig.status in (Status.DONE, Status.FAILED, Status.REJECTED) \
                else Status.PENDING
            cid = self.store.add_candidate(status=str(status), fitness=orig.fitness,
                                           error=orig.error, duplicate_of=original, **fields)
            log.info("candidate %d %s duplicates candidate %d: not trained again", cid,
                     _label(act.expression, act.params), original)
        elif not result.ok:
            cid = self.store.add_candidate(status="failed" if result.failed else "rejected",
                                           error=result.reason, **fields)
            log.info("candidate %d %s %s: %s", cid, _label(act.expression, act.params),
                     "failed" if result.failed else "rejected", result.reason)
        else:
            cid = self.store.add_candidate(status="pending", **fields)
        self.store.update_candidate(cid, function_id=function_id or cid)
        if original is None and result.dedup_key:
            self._dedup[result.dedup_key] = cid
        if result.function_key:
            self._function_keys.add(result.function_key)
        return cid

    # -- evaluating ------------------------------------------------------------------------------
    def _task(self, row: Candidate, base: dict) -> dict:
        return {**base, "id": row.id, "expression": row.expression, "params": list(row.params)}

    def _start_executor(self) -> None:
        """Workers start (and load the dataset) while the driver screens generation 0."""
        if self.executor is not None:
            return
        _, gpus = self._device()
        cfg = self.config
        timeout = cfg.task_timeout
        if timeout is None and self.tasks:  # the longest of the tasks' trainings
            from ..train import TrainConfig

            limits = [default_task_timeout(cfg.executor, TrainConfig(**t["train"]))
                      for t in self.tasks]
            timeout = None if None in limits else max(limits)
        elif timeout is None:
            timeout = default_task_timeout(cfg.executor, self.train_config)
        self.executor = make_executor(cfg.executor, workers=cfg.workers, threads=cfg.threads,
                                      timeout=timeout, gpus=gpus, ray_address=cfg.ray_address,
                                      run_dir=self.run_dir, warmup=self._base_task())
        log.info("executor: %s with %d worker(s), %d thread(s) each", cfg.executor,
                 getattr(self.executor, "workers", 1), cfg.threads)

    def _work_left(self) -> bool:
        last = self.store.last_generation()
        return (last is None or last.state == "created"
                or (not self._generations_done(last.generation + 1) and self._budget_left() > 0))

    def _evaluate(self, generation: int) -> None:
        rows = self.store.pending(generation)
        if not rows:
            return
        self._start_executor()
        base = self._base_task()
        # Longest first, by the deterministic cost estimate: the generation then ends on short
        # trainings, so workers idle less at its boundary.  Every training has its own seed, so
        # the order changes the wall time only, never a result.
        rows = sorted(rows, key=lambda r: -Activation.from_string(
            r.expression, self.pset, r.params).estimated_cost)
        if self.tasks:
            self._evaluate_tasks(generation, rows, base)
            return
        if self.rungs:
            self._evaluate_rungs(generation, rows, base)
            return
        tasks = [self._task(r, base) for r in rows]
        self.executor.run(tasks, self._on_start, self._on_result)

    # -- multi-task fitness ----------------------------------------------------------------------
    # Each candidate trains once per task, every training an executor task of its own (id
    # "CID/T"), committed to ``task_runs`` as it finishes; ReLU's reference trainings (id
    # "0/T") go first.  A candidate is scored once all its tasks and the references are in, so
    # a resumed search redoes only the trainings that had not finished.
    def _task_base(self, index: int, base: dict) -> dict:
        task = self.tasks[index]
        return {**base, "dataset": task["dataset"], "model": task["model"], "train": task["train"],
                "task_index": index}

    def _evaluate_tasks(self, generation: int, rows, base: dict) -> None:
        work = []
        refs = self.store.task_runs(0)
        relu = zoo.get("relu")
        for t in range(len(self.tasks)):
            if t not in refs or refs[t].status != "done":  # a failed reference is retried
                work.append({**self._task_base(t, base), "id": f"0/{t}", "primitives": "pangaea",
                             "expression": relu.expression, "params": []})
        for row in rows:
            if self._is_reference(row):
                continue  # plain ReLU: scored from the reference trainings
            finished = self.store.task_runs(row.id)
            if any(r.status == "failed" for r in finished.values()):
                continue  # failed on one task: scored below without training the others
            for t in range(len(self.tasks)):
                if t not in finished:
                    work.append({**self._task_base(t, base), **{
                        "id": f"{row.id}/{t}", "expression": row.expression,
                        "params": list(row.params)}})
        if work:
            self.executor.run(work, self._on_task_start, self._on_task_result)
        for row in self.store.candidates(status=(Status.PENDING, Status.RUNNING),
                                         generation=generation, unique=True):
            self._score_tasks(row.id)

    def _is_reference(self, row) -> bool:
        """Plain ``relu(x)`` of the built-in ReLU operator: the references are its trainings."""
        from .. import operators

        return row.expression == "relu(x)" and not row.params and \
            self.pset.operators.get("relu") is operators.get("relu")

    def _on_task_start(self, task: dict) -> None:
        cid = int(str(task["id"]).split("/")[0])
        if cid and self.store.candidate(cid).status == Status.PENDING:
            self.store.mark_running(cid)

    def _on_task_result(self, result: dict) -> None:
        cid, t = (int(v) for v in str(result["id"]).split("/"))
        metrics = result.get("metrics")
        status = "done" if result["status"] == "done" else "failed"
        error = result.get("error", "")
        if cid == 0 and status == "done" and (metrics or {}).get("status") == "chance":
            # a normaliser at chance would inflate every candidate's fitness
            status, error = "failed", f"ReLU stayed at chance: {error}"
        self.store.record_task_run(cid, t, self.tasks[t]["name"], status, result.get("fitness"),
                                   error, metrics, result.get("started_at"),
                                   result.get("finished_at"))
        if cid == 0 and status == "failed":
            raise UserError(f"ReLU, the reference of the multi-task fitness, failed on "
                            f"{self.tasks[t]['name']}: {error} -- that task cannot normalise "
                            f"fitness; give it another schedule (train/epochs) in a new run "
                            f"(a resume retries the reference)")
        seconds = (result.get("finished_at") or 0) - (result.get("started_at") or 0)
        what = "ReLU reference" if cid == 0 else f"candidate {cid}"
        log.info("%s on %s: %s accuracy=%s (%.1f s)%s", what, self.tasks[t]["name"], status,
                 "n/a" if result.get("fitness") is None else f"{result['fitness']:.4f}", seconds,
                 f" error: {result['error']}" if result.get("error") else "")
        if cid == 0:
            for row in self.store.candidates(status=(Status.PENDING, Status.RUNNING), unique=True):
                self._score_tasks(row.id)  # the candidates that waited for this reference
        else:
            self._score_tasks(cid)

    def _score_tasks(self, cid: int) -> None:
        """Score candidate ``cid`` if all it needs has finished (else leave it for later)."""
        row = self.store.candidate(cid)
        if row.status not in (Status.PENDING, Status.RUNNING):
            return
        refs = {t: r for t, r in self.store.task_runs(0).items()
                if r.status == "done" and r.accuracy}  # a failed one is retried first
        runs = refs if self._is_reference(row) else self.store.task_runs(cid)
        failed = [r for r in runs.values() if r.status == "failed"]
        n = len(self.tasks)
        if not failed and (len(runs) < n or len(refs) < n):
            return
        per_task = []
        for t, task in enumerate(self.tasks):
            r = runs.get(t)
            entry = {"task": task["name"], "weight": task["weight"],
                     "status": None if r is None else r.status,
                     "accuracy": None if r is None else r.accuracy,
                     "relu": refs[t].accuracy if t in refs else None}
            if entry["accuracy"] is not None and entry["relu"]:
                entry["normalised"] = entry["accuracy"] / entry["relu"]
            per_task.append(entry)
        started = min((r.started_at for r in runs.values() if r.started_at), default=None)
        finished = max((r.finished_at for r in runs.values() if r.finished_at), default=None)
        seconds = sum((r.finished_at or 0) - (r.started_at or 0) for r in runs.values())
        metrics = {"tasks": per_task, "aggregate": self.config.task_aggregate,
                   "seconds": seconds, "trained_as": "relu reference" if runs is refs else None}
        if failed:
            r = failed[0]
            error = f"{r.name}: {r.error}"
            self._on_result({"id": cid, "status": "failed", "fitness": None, "metrics": metrics,
                             "error": error, "started_at": started, "finished_at": finished})
            return
        self._on_result({"id": cid, "status": "done", "metrics": metrics, "error": "",
                         "fitness": aggregate_fitness(per_task, self.config.task_aggregate),
                         "started_at": started, "finished_at": finished})

    # -- successive halving ----------------------------------------------------------------------
    # Every pending candidate of the generation trains rung 0 (a short budget); the best 1/eta
    # of each rung (by the rung's mean accuracy, ties by id) go on to the next -- longer and/or
    # more seeds.  Each training is an executor task of its own (id "CID/RUNG/SEED") committed to
    # ``rung_runs`` as it finishes; promotions are recomputed from those rows, so a resumed search
    # redoes no finished rung and promotes exactly the same candidates.
    def _evaluate_rungs(self, generation: int, rows, base: dict) -> None:
        # the generation's rung-0 field: the pending candidates and those scored before an
        # interruption (so a resume promotes among exactly the same candidates)
        pending = {r.id for r in rows}
        rows = rows + [c for c in self.store.candidates(generation=generation, unique=True)
                       if c.id not in pending and self.store.rung_runs(c.id)]
        alive = [r.id for r in rows]
        for r, rung in enumerate(self.rungs):
            if r:
                alive = self._promoted(alive, r - 1)
            work = []
            for row in rows:
                if row.id not in alive:
                    continue
                runs = self.store.rung_runs(row.id)
                have = {(x.rung, x.seed) for x in runs}
                if any(x.status == "failed" for x in runs):
                    continue  # failed on a lower rung: never promoted (see _promoted)
                for seed in range(rung["seeds"]):
                    if (r, seed) not in have:
                        train = {**base["train"], "epochs": rung["epochs"]}
                        work.append({**self._task(row, base), "id": f"{row.id}/{r}/{seed}",
                                     "train": train, "seed": self.config.fitness_seed + seed})
            if work:
                self.executor.run(work, self._on_rung_start, self._on_rung_result)
        for row in rows:
            self._score_rungs(row.id)

    def _rung_mean(self, runs, rung: int) -> Optional[float]:
        values = [x.accuracy for x in runs if x.rung == rung and x.status == "done"]
        return sum(values) / len(values) if values else None

    def _promoted(self, members: list, rung: int) -> list:
        """The best ``ceil(len(members) / eta)`` of ``members`` on ``rung`` (failures never)."""
        scores = {}
        for cid in members:
            runs = self.store.rung_runs(cid)
            if any(x.status == "failed" for x in runs):
                continue
            mean = self._rung_mean(runs, rung)
            if mean is not None:
                scores[cid] = mean
        keep = max(1, math.ceil(len(members) / self.config.eta))
        promoted = sorted(scores, key=lambda c: (-scores[c], c))[:keep]
        # ReLU, the reference every table compares with, always trains the full budget
        promoted += [c for c in scores if c not in promoted and self._is_reference(self.store.candidate(c))]
        return promoted

    def _on_rung_start(self, task: dict) -> None:
        cid = int(str(task["id"]).split("/")[0])
        if self.store.candidate(cid).status == Status.PENDING:
            self.store.mark_running(cid)

    def _on_rung_result(self, result: dict) -> None:
        cid, rung, seed = (int(v) for v in str(result["id"]).split("/"))
        status = "done" if result["status"] == "done" else "failed"
        epochs = self.rungs[rung]["epochs"]
        self.store.record_rung_run(cid, rung, seed, status, result.get("fitness"), epochs,
                                   result.get("error", ""), result.get("metrics"),
                                   result.get("started_at"), result.get("finished_at"))
        log.info("candidate %d rung %d (%g epochs) seed %d: %s accuracy=%s%s", cid, rung, epochs,
                 seed, status, "n/a" if result.get("fitness") is None else
                 f"{result['fitness']:.4f}", f" error: {result['error']}" if result.get("error") else "")

    def _score_rungs(self, cid: int) -> None:
        row = self.store.candidate(cid)
        if row.status not in (Status.PENDING, Status.RUNNING):
            return
        runs = self.store.rung_runs(cid)
        if not runs:
            return
        top = max(x.rung for x in runs)
        summary = [{"rung": r, "epochs": self.rungs[r]["epochs"],
                    "seeds": sum(1 for x in runs if x.rung == r), "mean": self._rung_mean(runs, r)}
                   for r in range(top + 1)]
        first = next((x for x in runs if x.rung == top and x.status == "done"), None)
        record = (first.metrics or {}) if first else {}  # the top rung's training record
        metrics = {**record, "rung": top, "rungs": summary,
                   "epochs_trained": sum(x.epochs or 0 for x in runs),
                   "seconds": sum((x.finished_at or 0) - (x.started_at or 0) for x in runs)}
        started = min((x.started_at for x in runs if x.started_at), default=None)
        finished = max((x.finished_at for x in runs if x.finished_at), default=None)
        failed = [x for x in runs if x.status == "failed"]
        if failed:
            self._on_result({"id": cid, "status": "failed", "fitness": None, "metrics": metrics,
                             "error": f"rung {failed[0].rung}: {failed[0].error}",
                             "started_at": started, "finished_at": finished})
            return
        self._on_result({"id": cid, "status": "done", "fitness": self._rung_mean(runs, top),
                         "metrics": metrics, "error": "", "started_at": started,
                         "finished_at": finished})

    def _on_start(self, task: dict) -> None:
        self.store.mark_running(task["id"])

    def _on_result(self, result: dict) -> None:
        metrics = result.get("metrics")
        self.store.record_result(result["id"], result["status"], result.get("fitness"), metrics,
                                 result.get("error", ""), result.get("started_at"),
                                 result.get("finished_at"))
        row = self.store.candidate(result["id"])
        fitness = result.get("fitness")
        if fitness is not None and (self.best is None or fitness > self.best):
            self.best = fitness
        seconds = (result.get("finished_at") or 0) - (result.get("started_at") or 0)
        log.info("candidate %d %s: %s fitness=%s (%.1f s)%s", row.id, row.label,
                 result["status"],
                 "n/a" if fitness is None else f"{fitness:.4f}", seconds,
                 f" error: {result['error']}" if result.get("error") else "")
        if self.bar is not None:
            self.bar.update(1)
            if self.best is not None:
                self.bar.set_postfix(best=f"{self.best:.4f}", gen=row.generation, refresh=False)

    # -- survivors -------------------------------------------------------------------------------
    def _finish_generation(self, generation: int) -> None:
        cfg = self.config
        new = [c.id for c in self.store.candidates(generation=generation, plain=True, unique=True)]
        history = self._history(generation)
        old = [m.function_id for m in history.population]
        scored = {}
        for fid in dict.fromkeys(old + new):
            fitness, _ = self.store.function_fitness(fid, cfg.variant_fitness)
            if fitness is not None:
                scored[fid] = fitness
        survivors = self.strategy.tell(history, scored, new)
        self.store.finish_generation(generation, [(f, scored[f]) for f in survivors])
        best = scored[survivors[0]] if survivors else None
        log.info("generation %d done: %d functions scored, population %d, best %s", generation,
                 len(scored), len(survivors), "n/a" if best is None else f"{best:.4f}")

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

    def _open_progress(self) -> None:
        if not self.progress:
            return
        from ..progress import progress_bar

        finished = self.store.count_finished()
        self.bar = progress_bar(total=self._progress_total(), initial=finished, unit="eval",
                                desc="search")
        if self.best is not None:
            self.bar.set_postfix(best=f"{self.best:.4f}")

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
        top = []
        ranked, skipped = ranked_functions(self.store, k, self.config.variant_fitness,
                                           self.config.allow_linear)
        for rank, item in enumerate(ranked, 1):
            cand = item["candidate"]
            act = Activation.from_string(cand.expression, self.pset, cand.params)
            metrics = cand.metrics or {}
            top.append({"rank": rank, "fitness": item["fitness"], "expression": cand.expression,
                        "tasks": metrics.get("tasks", []) if self.tasks else [],
                        "params": list(cand.params), "candidate_id": cand.id,
                        "function_id": item["function_id"], "label": cand.label,
                        "latex": latex_or_note(act), "linear": item["linear"],
                        "equals": item["equals"], "flags": flag_text(item)})
            if item["linear"] or item["equals"]:
                log.info("rank %d %s is flagged:%s", rank, top[-1]["label"], top[-1]["flags"])
        note = skipped_note(skipped)
        if note:
            log.warning(note)
        failures = self.store.failure_reasons()
        names = [t["name"] for t in self.tasks] if self.tasks else []
        refs = {r.name: r.accuracy for r in self.store.task_runs(0).values()} if names else {}
        return SearchResult(self.run_dir, top, self.store.relu_fitness(), self.store.status_counts(),
                            self.store.get_meta("dedup_hits", 0), interrupted, wall_time, note,
                            failures, names, refs)


def aggregate_fitness(per_task: list, how: str) -> float:
    """The multi-task fitness: the weighted mean (``how = "mean"``) or the minimum of each
    task's accuracy divided by ReLU's accuracy on that task (so ReLU scores 1.0)."""
    values = [(t["normalised"], t["weight"]) for t in per_task]
    if how == "min":
        return min(v for v, _ in values)
    return sum(v * w for v, w in values) / sum(w for _, w in values)


def _rng_from_json(text: str):
    version, internal, gauss = json.loads(text)
    return version, tuple(internal), gauss


def run_search(config: Optional[SearchConfig] = None, out="runs/search", *, resume: bool = False,
               model=None, data=None, fitness: Optional[Callable] = None, progress: bool = True,
               **overrides) -> SearchResult:
    """Run (or resume) a search and return its :class:`SearchResult`.

    ``config`` defaults to :class:`SearchConfig()`; keyword ``overrides`` replace fields.  Bring
    your own task with ``model`` (a callable taking an activation factory), ``data`` (tensors,
    a Dataset, torch datasets or a loader) or a whole ``fitness(activation, seed)`` callable.
    """
    config = config or SearchConfig()
    if overrides and not resume:
        config = config.replace(**overrides)
    return Search(config, out, resume=resume, model=model, data=data, fitness=fitness,
                  progress=progress, overrides=overrides if resume else None).run()

"""The final race: the search's reported winner survives a race, not one noisy fitness value.

The winner of a search is the maximum of many noisy fitness values (the winner's curse).  After
the last generation, the top ``race_top`` functions (each with its best placement of learnable
scalars) and the ``race_baselines`` (SiLU, GELU and ReLU by default) train the **full schedule**
on the **validation** split -- the test split stays untouched for ``evaluate``.  Every entrant
trains the same seeds (seed ``i`` is ``fitness_seed + i`` for all, so comparisons are paired);
after ``race_min_seeds`` seeds and after each further seed, the race
(:class:`gp_activations.statistics.Race`: a Friedman test, then Holm-corrected paired t-tests
against the leader, at levels that keep ``race_alpha`` over the looks) drops the entrants the
leader is significantly better than; seeds are added to the rest until one is left or
``race_max_seeds`` is reached.  The leader then is the search's winner.

Every training is a row of the run's ``race_runs`` table, committed as it finishes; the race's
state is recomputed from those rows, so an interrupted race resumes without redoing any, and
every executor gives the same winner.  A failed training counts as accuracy 0 (a function that
cannot train is not a winner).

With ``race_screen = N`` (> ``race_top``) the race first **screens** a wider field: the top N
functions by fitness and the baselines train one seed (seed index 0) of the full schedule, and
the best ``race_top`` found functions by that accuracy race the baselines -- on fresh seeds
(indices 1, 2, ...), so that the seed they were picked on does not count in the race.  The
8-epoch fitness can rank a function that wins on the full schedule far down (on resnet1d the
functions that beat SiLU there have ReLU's fitness, 50th of 1,009): the screen lets such a
function into the race at the cost of one full-schedule training per screened function.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .. import zoo
from ..statistics import Race, RaceState
from .jobs import Job, JobKey, JobKind, JobResult
from .plan import SearchPlan
from .ranking import ranked_functions
from .store import RunStore

log = logging.getLogger("gp_activations.search")


@dataclass(frozen=True)
class Entrant:
    label: str  # "found #1", "found #2 = silu", "silu"
    expression: str
    primitives: str
    params: tuple
    candidate_id: Optional[int] = None
    equals: Optional[str] = None  # the race baseline a found function equals (it races for it)


def race_train(plan: SearchPlan) -> dict:
    """The race's schedule: the dataset's full ("train") preset for the model, the search's
    per-channel, fusion, threads and ``monitor_samples`` settings, ``race_epochs`` if given; a user's own data or model
    without a preset keeps the search's own schedule (with ``race_epochs``)."""
    from ..train import default_config

    cfg, base = plan.config, plan.base_job
    if base.data is None and (base.model is None or isinstance(base.model, str)):
        # monitor_samples too: a large validation split is scored whole once, at the end
        overrides = {k: base.train[k] for k in ("per_channel", "fused", "threads", "monitor_samples")
                     if k in base.train}
        if cfg.race_epochs is not None:
            overrides["epochs"] = cfg.race_epochs
        return default_config(cfg.dataset, "train", base.model, **overrides).to_dict()
    return {**base.train, **({"epochs": cfg.race_epochs} if cfg.race_epochs else {}),
            "chance_check": False}


class FinalRace:
    """A stage run after the generations (``Search(..., stages=)``)."""

    name = "race"

    def __init__(self, plan: SearchPlan, store: RunStore):
        cfg = plan.config
        self.plan, self.store = plan, store
        self.race = Race(cfg.race_alpha, cfg.race_min_seeds, cfg.race_max_seeds)
        self.train = race_train(plan)
        self._screening = None

    @property
    def screening(self) -> bool:
        """Whether this race screens: ``race_screen`` asks for it and more functions were found
        than ``race_top`` (else all of them race anyway) -- decided by the stored entrants."""
        if self._screening is None:
            cfg = self.plan.config
            found = [e for e in self.entrants() if e.candidate_id is not None]
            self._screening = cfg.race_screen > cfg.race_top and len(found) > cfg.race_top
        return self._screening

    @property
    def first(self) -> int:
        """The race's first seed index: 1 after a screen (whose trainings are seed index 0)."""
        return 1 if self.screening else 0

    def entrants(self) -> list[Entrant]:
        """Fixed when the race starts (stored), so that a resumed race races the same ones."""
        stored = self.store.get_meta("race_entrants")
        if stored:
            return [Entrant(**{**e, "params": tuple(e["params"])}) for e in stored]
        cfg = self.plan.config
        ranked, _ = ranked_functions(self.store, max(cfg.race_top, cfg.race_screen),
                                     cfg.variant_fitness, cfg.allow_linear)
        entrants, taken = [], set()
        for rank, item in enumerate(ranked, 1):
            cand = item["candidate"]
            equals = cfg.baseline_equal(item["equals"])
            equals = equals if equals in cfg.race_baselines else None
            entrants.append(Entrant(f"found #{rank}" + (f" = {equals}" if equals else ""),
                                    cand.expression, cand.primitives, tuple(cand.params),
                                    cand.id, equals))
            taken.add(equals)
        for name in cfg.race_baselines:
            if name not in taken:
                act = zoo.get(name)
                entrants.append(Entrant(name, act.expression, "pangaea", tuple(act.params)))
        self.store.set_meta("race_entrants", [{**asdict(e), "params": list(e.params)}
                                              for e in entrants])
        return entrants

    def _runs(self) -> dict:
        """{entrant index: {seed index: accuracy}} of the stored trainings (failed: 0)."""
        runs: dict = {}
        for r in self.store.race_runs():
            runs.setdefault(r.entrant, {})[r.seed] = 0.0 if r.accuracy is None else r.accuracy
        return runs

    def screen(self, entrants, runs=None) -> dict:
        """{label: the screen's accuracy (seed index 0), or None while not trained} -- empty
        without a screen."""
        runs = self._runs() if runs is None else runs
        return {e.label: runs.get(i, {}).get(0) for i, e in enumerate(entrants)} \
            if self.screening else {}

    def contenders(self, entrants, runs=None) -> list:
        """The indices of the entrants that race: all of them; after a screen, the baselines
        (a found function equal to one races for it) and the best ``race_top`` other found
        functions by their screen accuracy (ties: fitness rank; not yet screened: last)."""
        if not self.screening:
            return list(range(len(entrants)))
        screen = self.screen(entrants, runs)
        baselines = {i for i, e in enumerate(entrants) if e.candidate_id is None or e.equals}
        found = [i for i in range(len(entrants)) if i not in baselines]
        best = sorted(found, key=lambda i: -(screen[entrants[i].label] or -1.0))
        return sorted(baselines | set(best[:self.plan.config.race_top]))

    def results(self, entrants, runs=None) -> dict:
        """{label: [accuracy per race seed, in seed order]} of the contenders -- as far as the
        seeds are contiguous (a screen's seed is not a race seed)."""
        runs = self._runs() if runs is None else runs
        out = {}
        for i in self.contenders(entrants, runs):
            seeds, values = runs.get(i, {}), []
            while len(values) + self.first in seeds:
                values.append(seeds[len(values) + self.first])
            out[entrants[i].label] = values
        return out

    def state(self) -> Optional[RaceState]:
        entrants = self.entrants()
        if len(entrants) < 2 or None in self.screen(entrants).values():
            return None
        return self.race.state(self.results(entrants))

    def run(self, run_jobs: Callable[[list, Callable[[JobResult], None]], None]) -> None:
        entrants = self.entrants()
        if len(entrants) < 2:
            log.warning("race: fewer than two entrants; no race")
            return
        if self.screening:
            screen = self.screen(entrants)
            jobs = [self.job(i, e, 0) for i, e in enumerate(entrants) if screen[e.label] is None]
            log.info("race: screening %d functions and baselines (one seed, full schedule), "
                     "%d trainings next", len(entrants), len(jobs))
            run_jobs(jobs, lambda result: self.record(entrants, result))
        by_label = {e.label: i for i, e in enumerate(entrants)}
        while True:
            results = self.results(entrants)
            state = self.race.state(results)
            alive = state.survivors if state.look else tuple(results)
            target = state.next_n if state.look else self.race.looks[0]
            if state.finished:
                break
            jobs = [self.job(by_label[label], entrants[by_label[label]], self.first + seed)
                    for label in alive for seed in range(len(results[label]), target)]
            log.info("race: %d entrants at %d seeds, %d trainings next", len(alive), target,
                     len(jobs))
            run_jobs(jobs, lambda result: self.record(entrants, result))
        self.store.set_meta("race", self.summary(entrants, state, self.screen(entrants)))
        log.info("race finished after %d seeds: winner %s (%d still in the race)", state.n,
                 state.leader, len(state.survivors))

    def job(self, index: int, entrant: Entrant, seed: int) -> Job:
        return self.plan.base_job.with_(key=JobKey(JobKind.RACE, index, seed=seed),
                                        expression=entrant.expression,
                                        primitives=entrant.primitives, params=entrant.params,
                                        train=self.train, split="val",
                                        seed=self.plan.config.fitness_seed + seed,
                                        normalize=self.plan.config.trains_normalized(
                                            entrant.candidate_id is not None))

    def record(self, entrants, result: JobResult) -> None:
        key = result.key
        label = entrants[key.id].label
        self.store.record_race_run(key.id, key.seed, label, result.status, result.fitness,
                                   result.error, result.metrics, result.started_at,
                                   result.finished_at)
        log.info("race: %s seed %d: %s accuracy=%s%s", label, key.seed, result.status,
                 "n/a" if result.fitness is None else f"{result.fitness:.4f}",
                 f" error: {result.error}" if result.error else "")

    @staticmethod
    def summary(entrants, state: RaceState, screen: Optional[dict] = None) -> dict:
        found = {e.label: e for e in entrants}
        return {"winner": state.leader, "survivors": list(state.survivors), "seeds": state.n,
                **({"screen": screen} if screen else {}),
                "means": state.means, "eliminated": state.eliminated,
                "p_vs_leader": state.p_values,
                "winner_expression": found[state.leader].expression,
                "winner_params": list(found[state.leader].params)}


def race_stages(plan: SearchPlan) -> list:
    """The stages a plan asks for after its generations: the final race when ``race_top``."""
    return [FinalRace] if plan.config.race_top else []

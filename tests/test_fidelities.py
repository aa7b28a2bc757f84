"""Fidelities are plug-ins: a new one needs no driver change, and halving's promotions and the
multi-task aggregate follow hand-worked tables."""

from __future__ import annotations

import pytest

from gp_activations import Activation
from gp_activations.search import SearchConfig, run_search
from gp_activations.search.fidelities import (Fidelity, HalvingFidelity, Rung, Score,
                                              aggregate_fitness)
from gp_activations.search.jobs import Job, JobKey, JobKind, JobResult, JobStatus
from gp_activations.search.store import RunStore, Status

from search_helpers import CHEAP, rows, score


def seeded_fitness(act, seed):
    """A fitness that depends on the seed: the helpers' score less 0.01 per seed."""
    return score(act) - 0.01 * seed


class WorstOfTwoSeeds(Fidelity):
    """A fidelity of the test's own: each candidate trains twice (seeds s and s+1), its fitness
    is the worse of the two -- defined here, plugged in without touching the driver."""

    def __init__(self, plan, store):
        super().__init__(store, plan.base_job)
        self.results: dict[int, list] = {}
        self.jobs_run: list = []

    def jobs(self, generation, rows):
        pending = {c.id for c in self.store.pending(generation)} | \
            {c.id for c in self.store.candidates(status=Status.RUNNING, generation=generation)}
        return [self.job(r, JobKey(JobKind.CANDIDATE, r.id, seed=s), seed=self.base.seed + s)
                for r in rows if r.id in pending for s in (0, 1)
                if (r.id, s) not in {(c, k.seed) for c, k in self.jobs_run}]

    def record(self, result: JobResult):
        self.jobs_run.append((result.key.id, result.key))
        self.results.setdefault(result.key.id, []).append(result)
        return [result.key.id]

    def score(self, row):
        done = self.results.get(row.id, [])
        if len(done) < 2:
            return None
        return Score(Status.DONE, min(r.fitness for r in done), {"seeds": 2})

    def scorable(self, generation, rows):
        return []


def test_a_fidelity_defined_outside_the_driver_plugs_in(tmp_path):
    made = []

    def factory(plan, store):
        made.append(WorstOfTwoSeeds(plan, store))
        return made[0]

    cfg = SearchConfig(**{**CHEAP, "generations": 2, "param_variants": 0}, fitness_seed=5)
    result = run_search(cfg, out=tmp_path / "run", progress=False, fitness=seeded_fitness,
                        fidelity=factory)
    done = rows(tmp_path / "run", lambda r: r["status"] == "done", unique=True)
    assert done and result.counts["done"] == len(done)
    for r in done:  # the worse seed is seed 6: score - 0.06, computed here without the search
        act = Activation.from_string(r["expression"], "pangaea")
        assert r["fitness"] == pytest.approx(score(act) - 0.06, abs=1e-12)
    per_candidate = {}
    for cid, key in made[0].jobs_run:
        per_candidate.setdefault(cid, []).append(key.seed)
    assert sorted(per_candidate) == sorted(r["id"] for r in done)
    assert all(sorted(s) == [0, 1] for s in per_candidate.values())


# -- successive halving: promotions from a hand-made table --------------------------------------
def _store_with_rung0(tmp_path, accuracies: dict, failed=()):
    store = RunStore.create(tmp_path / "run", {})
    with store.transaction():
        for cid in sorted(accuracies):
            expr = "relu(x)" if cid == 6 else f"add(x, tanh(x))"
            store.add_candidate(expression=expr, primitives="pangaea", params=[] if cid == 6
                                else [cid], status="pending", generation=0)
            store.update_candidate(cid, function_id=cid)
    for cid, acc in accuracies.items():
        status = JobStatus.FAILED if cid in failed else JobStatus.DONE
        store.record_rung_run(cid, 0, 0, status, None if cid in failed else acc, 4, "", None)
    return store


def test_halving_promotes_the_best_third_and_the_reference(tmp_path):
    # six candidates, eta = 3: ceil(6 / 3) = 2 go on -- the two best by accuracy (ties by id:
    # 2 and 5 both 0.80, so 2 before 5; 4 at 0.90 first); plain relu(x) (id 6, 0.50) always
    # trains the full budget; candidate 3 failed: never promoted whatever its accuracy
    acc = {1: 0.70, 2: 0.80, 3: 0.95, 4: 0.90, 5: 0.80, 6: 0.50}
    store = _store_with_rung0(tmp_path, acc, failed={3})
    base = Job(JobKey(JobKind.CANDIDATE, 0), "x", "pangaea", train={"epochs": 12}, seed=0)
    halving = HalvingFidelity(store, base, [Rung(4, 1), Rung(12, 1)], 3.0,
                              lambda row: row.expression == "relu(x)" and not row.params, 0)
    assert halving.promoted([1, 2, 3, 4, 5, 6], 0) == [4, 2, 6]
    rows = store.candidates()
    work = halving.jobs(0, rows)
    assert [(j.key.id, j.key.rung, j.train["epochs"]) for j in work] == [(2, 1, 12), (4, 1, 12),
                                                                       (6, 1, 12)]
    # rung 1 results come in; candidate 4 then scores its rung-1 mean, 1 keeps its rung-0 one
    for cid, value in ((2, 0.85), (4, 0.93), (6, 0.60)):
        halving.record(JobResult(JobKey(JobKind.RUNG, cid, rung=1, seed=0), JobStatus.DONE, value))
    assert halving.jobs(0, rows) == []
    by_id = {r.id: r for r in store.candidates()}
    assert halving.score(by_id[4]).fitness == 0.93
    assert halving.score(by_id[1]).fitness == 0.70
    failed = halving.score(by_id[3])
    assert failed.status is Status.FAILED and failed.fitness is None
    store.close()


def test_multi_task_aggregate_by_hand():
    per_task = [{"normalised": 0.9 / 0.8, "weight": 1.0}, {"normalised": 0.6 / 0.75, "weight": 3.0}]
    # mean: (1.125 * 1 + 0.8 * 3) / 4 = 0.88125; min: 0.8
    assert aggregate_fitness(per_task, "mean") == pytest.approx(0.88125)
    assert aggregate_fitness(per_task, "min") == pytest.approx(0.8)

"""Fitness functions and a runnable search for the search tests.

Spawned worker processes (the process and Ray executors) and the subprocess of the resume
test import these by path -- ``f"{HELPERS}:score_fitness"`` -- so they live in a plain file,
not in a test module.  Every fitness here is a deterministic function of the activation, so
that runs can be compared value for value.

Environment knobs (read at call time, so a worker sees its parent's settings):

``GPA_TEST_LOG``    a file to which every call appends one JSON line (expression, params, pid)
                    *before* it computes anything -- a candidate in flight when its process is
                    killed is logged, a candidate never evaluated is not;
``GPA_TEST_SLEEP``  seconds to sleep per call (to make a run slow enough to be killed mid-way).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gp_activations.search.evolution import mutate
from gp_activations.search.store import RunStore
from gp_activations.search.strategies import Proposal, Strategy

HELPERS = str(Path(__file__).resolve())

_GRID = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
_TARGET = _GRID * torch.sigmoid(_GRID)


def _log_call(act) -> None:
    path = os.environ.get("GPA_TEST_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"expression": act.expression, "params": list(act.params),
                                 "pid": os.getpid()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def score(act) -> float:
    """How close the function is to x·σ(x) on [-3, 3], in (0, 1]; parametric variants score a
    little differently from their plain function (so selection sees distinct values)."""
    with torch.no_grad():
        y = act(_GRID)
    err = float(torch.mean((y - _TARGET) ** 2))
    if not np.isfinite(err):
        return 0.0
    return 1.0 / (1.0 + err) - 1e-3 * len(act.params)


def score_fitness(act, seed):
    _log_call(act)
    time.sleep(float(os.environ.get("GPA_TEST_SLEEP", "0")))
    return score(act)


def numpy_fitness(act, seed):
    """Returns numpy / torch scalars, as users' functions often do."""
    return {"fitness": np.float32(score(act)), "loss": torch.tensor(1.0 - score(act))}


def faulty_fitness(act, seed):
    """Kills its own process on ``tanh(x)``, hangs on ``sigmoid(x)``, scores the rest."""
    _log_call(act)
    if act.expression == "tanh(x)":
        os._exit(3)
    if act.expression == "sigmoid(x)":
        time.sleep(120)
    return score(act)


# -- shared by the test modules -----------------------------------------------------------------
#: A search whose fitness is read from the shipped tabular benchmark (no training): its search
#: space is exactly the table's functions.
_TABULAR = Path(__file__).resolve().parents[1] / "benchmarks" / "tabular"
LOOKUP = dict(dataset="mnist1d", model="cnn1d", primitives=str(_TABULAR / "primitives.py"),
              lookup=str(_TABULAR / "mnist1d_cnn1d.csv"), max_height=2,
              init_shapes=["u(u(x))", "b(u(x),u(x))"], init_zoo=False, population=8,
              generations=2, param_variants=0, train={"epochs": 12}, seed=1)

#: Cheap settings: no zoo, one variant, one thread.
CHEAP = dict(population=4, generations=2, param_variants=1, init_zoo=False,
             threads=1)

#: A search space whose operators misbehave in every way screening must catch.
FAULTY_PRIMITIVES = '''
import time

import torch
from gp_activations import SearchSpace

space = SearchSpace("faulty", "operators that misbehave, for the search tests")
space.constants("zero", "one")
space.use("add", "mul", "tanh", "relu", "sigmoid", "cos")


@space.unary
def blowup(x):
    "x, but +inf above 2"
    return torch.where(x > 2, torch.full_like(x, float("inf")), x)


@space.unary
def rootabs(x):
    "sqrt(|x|): finite values, infinite slope at 0"
    return torch.sqrt(torch.abs(x))


@space.unary
def boom(x):
    "always raises"
    raise ValueError("boom operator exploded")


@space.unary(cost=1000)
def slowpoke(x):
    "tanh, declared as costing 1000 ReLUs"
    return torch.tanh(x)


@space.unary
def squash(x):
    "sums away the last dimension: changes its input's shape"
    return x.sum(-1)


@space.unary
def flat(x):
    "tanh, but raises on 4-D image batches (so it passes screening and fails in training)"
    if x.dim() > 3:
        raise RuntimeError("flat cannot handle batched input")
    return torch.tanh(x)
'''


def stored(record) -> dict:
    """A store record as a dict, its list/dict fields in the JSON text they are stored as."""
    out = dataclasses.asdict(record)
    for key in ("params", "parent_ids"):
        if key in out:
            out[key] = json.dumps(list(out[key]))
    if out.get("metrics") is not None:
        out["metrics"] = json.dumps(out["metrics"])
    if "status" in out:
        out["status"] = str(out["status"])
    return out


def rows(run_dir, where=None, **filters):
    """The run's candidates (``RunStore.candidates(**filters)``, read-only) as :func:`stored`
    dicts, by id; ``where`` an optional predicate on the dict."""
    store = RunStore.open(run_dir, readonly=True)
    try:
        found = [stored(c) for c in store.candidates(**filters)]
    finally:
        store.close()
    return [r for r in found if where is None or where(r)]


def by_expression(run_dir, expression, params="[]"):
    found = rows(run_dir, lambda r: (r["expression"], r["params"]) == (expression, params))
    assert len(found) == 1, (expression, params, found)
    return found[0]


def snapshot(run_dir):
    """Everything that defines a run's outcome (no timestamps)."""
    store = RunStore.open(run_dir, readonly=True)
    try:
        keys = ("id", "function_id", "expression", "primitives", "params", "dedup_key",
                "function_key", "status", "fitness", "generation", "parent_ids", "mutation",
                "origin", "duplicate_of", "error")
        cands = [tuple(stored(c)[k] for k in keys) for c in store.candidates()]
        pop = [tuple(dataclasses.astuple(r)) for r in store.population()]
        gens = [(g.generation, g.state, g.rng_state) for g in store.generation_rows()]
        return {"candidates": cands, "population": pop, "generations": gens,
                "dedup_hits": store.get_meta("dedup_hits")}
    finally:
        store.close()


#: The run of the kill-and-resume test (serial: one candidate in flight at a time).
KILL_RUN = dict(fitness=f"{HELPERS}:score_fitness", population=4, generations=3,
                param_variants=1, init_zoo=False, seed=11,
                executor="serial")


def main(out: str) -> None:
    from gp_activations.search import SearchConfig, run_search

    run_search(SearchConfig(**KILL_RUN), out=out, progress=False)


if __name__ == "__main__":
    main(sys.argv[1])



class NumpyStrategy(Strategy):
    """A plug-in strategy that draws from numpy: the driver's Generator (``numpy_rng``) picks
    a mutation's parent, numpy's global generator how many mutations -- exact resume needs
    both saved and restored."""

    name = "numpy"

    def ask(self, history):
        if not history.population:
            yield from self.initial(history)
            return
        members = history.population
        while True:
            parent = members[int(self.numpy_rng.integers(len(members)))]
            tree = parent.tree
            for _ in range(1 + int(np.random.randint(0, 2))):
                tree, name = mutate(self.toolbox, tree)
            yield Proposal(tree, "mutation", name, (parent.function_id,))


def noisy_fitness(act, seed):
    """:func:`score` plus seed noise (σ = 0.002, deterministic for an expression and seed):
    SiLU -- the score's target -- is the best function, but one seed does not show it."""
    import random as _random

    rng = _random.Random(f"{act.expression}|{list(act.params)}|{seed}")
    return score(act) + rng.gauss(0.0, 0.002)


def budget_fitness(act, seed, epochs=None):
    """:func:`noisy_fitness` on a short budget; trained for 50 epochs or more, the reverse
    (late bloomers: the further from x*sigmoid(x), the better) -- a function's rank on the
    full schedule is not its rank on the short one."""
    import random as _random

    if epochs is None or epochs < 50:
        return noisy_fitness(act, seed)
    rng = _random.Random(f"{act.expression}|{list(act.params)}|{seed}|long")
    return 1.0 - score(act) + rng.gauss(0.0, 0.002)


def output_moments_fitness(act, seed):
    """The function's output mean and standard deviation under N(0, 1) inputs by scipy's
    adaptive quadrature (not the normalisation's grid); fitness = -|std - 1| - |mean|: 0 for
    a normalised function."""
    from scipy import integrate, stats

    def f(v):
        with torch.no_grad():
            return float(act(torch.tensor([v], dtype=torch.float64))[0])

    def expect(g):
        return integrate.quad(lambda v: g(v) * stats.norm.pdf(v), -12, 12, limit=200,
                              points=[0.0])[0]

    mean = expect(f)
    std = math.sqrt(expect(lambda v: (f(v) - mean) ** 2))
    return {"fitness": -abs(std - 1.0) - abs(mean), "mean": mean, "std": std}

"""The search: mutations, selection, screening, dedup, the store, configs, small real runs.

Fast by construction: most runs use a cheap fitness callable (no training); the few real
trainings use ``digits`` for one epoch.  Crashes, timeouts, resume after ``kill -9`` and the
executors' agreement are in ``test_search_faults.py``.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
from deap import gp

from gp_activations.activation import Activation
from gp_activations.errors import UserError
from gp_activations.primitive_sets import load_primitive_set
from gp_activations.search import RunStore, SearchConfig, run_search
from gp_activations.search.evolution import (MUTATIONS, SHAPES, crossover, make_toolbox, mutate,
                                             select_softmax, select_tournament)
from gp_activations.search.screening import dedup_key, function_key, screen

from search_helpers import CHEAP, FAULTY_PRIMITIVES, by_expression, rows, score, snapshot

PSET = load_primitive_set("pangaea")

UNARY_ONLY_PRIMITIVES = '''
from gp_activations import SearchSpace

space = SearchSpace("unary_only")
space.use("tanh", "relu", "sigmoid")
'''


@pytest.fixture
def faulty_primitives(tmp_path) -> str:
    path = tmp_path / "faulty_ops.py"
    path.write_text(FAULTY_PRIMITIVES)
    return str(path)


class Counting:
    """A fitness callable that records every evaluation it is asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, act, seed):
        self.calls.append((act.expression, tuple(act.params)))
        return score(act)

    def count(self, expression, params=()):
        return self.calls.count((expression, tuple(params)))


# ---------------------------------------------------------------------------------------------
# 1. Mutations keep trees valid
# ---------------------------------------------------------------------------------------------
def shape_of(tree) -> str:
    """``u(b(u(x),u(x)))``-style shape; terminals by name."""
    def walk(i):
        node = tree[i]
        if isinstance(node, gp.Primitive):
            kids, j = [], i + 1
            for _ in range(node.arity):
                text, j = walk(j)
                kids.append(text)
            return ("u" if node.arity == 1 else "b") + "(" + ",".join(kids) + ")", j
        return node.format(), i + 1  # terminals: x (DEAP's renamed ARG0), zero, one

    text, end = walk(0)
    assert end == len(tree), f"trailing nodes in {tree}"
    return text


def operators_of(tree) -> int:
    return sum(isinstance(n, gp.Primitive) for n in tree)


def assert_valid(tree, max_height, max_size):
    open_slots = 1
    for node in tree:
        assert open_slots > 0, f"nodes after the tree is complete: {tree}"
        open_slots += node.arity - 1
        if isinstance(node, gp.Primitive):
            assert PSET.operators[node.name].arity == node.arity == len(node.args)
        else:
            assert node.arity == 0 and node.format() in PSET.terminal_names
    assert open_slots == 0, f"missing operands in {tree}"
    assert tree.height <= max_height and len(tree) <= max_size, (str(tree), tree.height, len(tree))
    parsed = Activation.from_string(str(tree), PSET)
    assert str(parsed.tree) == str(tree)
    assert [n.format() if n.arity == 0 else n.name for n in parsed.tree] == \
        [n.format() if n.arity == 0 else n.name for n in tree]


def random_parent(toolbox, rng_steps):
    tree = toolbox.init_tree()
    for _ in range(rng_steps):
        tree, _ = mutate(toolbox, tree)
    return tree


@pytest.mark.parametrize("max_height,max_size", [(6, 24), (4, 9)])
def test_every_mutation_keeps_trees_valid_and_within_limits(max_height, max_size):
    weights = {m: 1.0 for m in MUTATIONS}  # subtree included (off by default)
    toolbox = make_toolbox(PSET, max_height=max_height, max_size=max_size, weights=weights)
    seen_growth = Counter()
    for seed in range(150):
        random.seed(seed)
        parent = random_parent(toolbox, seed % 6)
        assert_valid(parent, max_height, max_size)
        before = str(parent)
        for name in (*MUTATIONS, "mate"):
            if name == "mate":
                other = random_parent(toolbox, 2)
                child = crossover(toolbox, parent, other)
            else:
                child, = getattr(toolbox, name)(gp.PrimitiveTree(list(parent)))
            assert_valid(child, max_height, max_size)
            assert str(parent) == before, "the parent must not change"
            if name == "change":
                assert shape_of(child) == shape_of(parent)
                changed = [i for i, (a, b) in enumerate(zip(parent, child)) if a is not b]
                assert len(changed) == (1 if operators_of(parent) else 0)
                assert all(isinstance(parent[i], gp.Primitive) for i in changed)
            elif name == "regenerate":
                assert shape_of(child) == shape_of(parent)
                for a, b in zip(parent, child):
                    if not isinstance(a, gp.Primitive):
                        assert a is b  # terminals untouched
            elif name == "remove":
                if operators_of(parent):
                    assert len(child) < len(parent)
                    assert operators_of(child) < operators_of(parent)
                else:
                    assert str(child) == str(parent)
            elif name == "insert":
                if len(child) > len(parent):
                    assert operators_of(child) == operators_of(parent) + 1
                    seen_growth["insert"] += 1
                else:  # staticLimit returned the parent: only when a limit would be broken
                    assert str(child) == str(parent)
                    assert parent.height == max_height or len(parent) >= max_size - 1
    assert seen_growth["insert"] > 100


def test_mutate_uses_weights_and_copies():
    toolbox = make_toolbox(PSET)
    assert toolbox.mutation_names == ["insert", "remove", "change", "regenerate"]  # subtree off
    random.seed(1)
    names = Counter(mutate(toolbox, toolbox.init_tree())[1] for _ in range(400))
    assert set(names) == {"insert", "remove", "change", "regenerate"}
    only_change = make_toolbox(PSET, weights={m: 0.0 for m in MUTATIONS} | {"change": 1.0})
    parent = Activation.from_string("mul(x, sigmoid(x))", PSET).tree
    for _ in range(50):
        child, name = mutate(only_change, parent)
        assert name == "change" and shape_of(child) == "b(x,u(x))"
        assert str(parent) == "mul(x, sigmoid(x))"


def test_initial_trees_have_the_papers_three_shapes():
    toolbox = make_toolbox(PSET)
    random.seed(0)
    shapes = Counter()
    for _ in range(300):
        tree = toolbox.init_tree()
        assert_valid(tree, 6, 24)
        shapes[shape_of(tree)] += 1
    assert set(shapes) == set(SHAPES)
    assert min(shapes.values()) > 60  # each drawn about a third of the time


def test_same_seed_same_trees():
    toolbox = make_toolbox(PSET)

    def draw():
        random.seed(42)
        return [str(random_parent(toolbox, 3)) for _ in range(20)]

    assert draw() == draw()


def test_space_without_binary_operators_is_rejected(tmp_path):
    path = tmp_path / "unary_only.py"
    path.write_text(UNARY_ONLY_PRIMITIVES)
    with pytest.raises(UserError, match="binary"):
        make_toolbox(load_primitive_set(str(path)))
    # only-unary shapes are fine
    make_toolbox(load_primitive_set(str(path)), shapes=("u(u(x))",))


# ---------------------------------------------------------------------------------------------
# 2. Selection
# ---------------------------------------------------------------------------------------------
FITS = [0.50, 0.60, 0.70, 0.72]


def test_softmax_with_low_temperature_prefers_the_fittest():
    random.seed(0)
    k = 4000
    counts = Counter(select_softmax(FITS, k, temperature=0.01))
    weights = [math.exp((f - 0.72) / 0.01) for f in FITS]
    expected = [w / sum(weights) for w in weights]  # 0.12, 0.88 for the top two
    assert counts[3] > counts[2] > counts[1] >= counts[0]
    assert counts[0] + counts[1] <= 2  # e^-12 and e^-22: (almost) never
    assert abs(counts[3] / k - expected[3]) < 0.025
    assert abs(counts[2] / k - expected[2]) < 0.025


def test_softmax_with_high_temperature_is_nearly_uniform():
    random.seed(1)
    k = 4000
    counts = Counter(select_softmax(FITS, k, temperature=100.0))
    chi2 = sum((counts[i] - k / 4) ** 2 / (k / 4) for i in range(4))
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001
    # and the same number of draws at low temperature is far from uniform
    random.seed(1)
    low = Counter(select_softmax(FITS, k, temperature=0.01))
    assert sum((low[i] - k / 4) ** 2 / (k / 4) for i in range(4)) > 1000


def test_tournament_selection():
    random.seed(2)
    k = 4000
    counts = Counter(select_tournament(FITS, k, size=3))
    p_best = 1 - (3 / 4) ** 3  # the best entered at least once
    p_worst = (1 / 4) ** 3  # only the worst entered
    assert abs(counts[3] / k - p_best) < 0.03
    assert abs(counts[0] / k - p_worst) < 0.01
    assert counts[3] > counts[2] > counts[1] > counts[0]
    random.seed(2)
    single = Counter(select_tournament(FITS, k, size=1))  # no pressure: uniform
    assert sum((single[i] - k / 4) ** 2 / (k / 4) for i in range(4)) < 16.27


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_invalid_temperature_is_a_user_error(temperature):
    with pytest.raises(UserError, match="temperature"):
        select_softmax(FITS, 1, temperature)
    with pytest.raises(UserError, match="temperature"):
        SearchConfig(temperature=temperature)


def test_tournament_search_runs(tmp_path):
    fit = Counting()
    result = run_search(SearchConfig(**CHEAP, selection="tournament", tournament_size=2),
                        out=tmp_path / "run", progress=False, fitness=fit)
    gen1 = rows(tmp_path / "run", lambda r: r["origin"] == "mutation", generation=1)
    assert gen1 and all(r["mutation"] in MUTATIONS for r in gen1)
    pop0 = {r.function_id for r in RunStore.open(tmp_path / "run").population(0)}
    assert all(set(json.loads(r["parent_ids"])) <= pop0 for r in gen1)
    assert result.counts["done"] == len(fit.calls)


# ---------------------------------------------------------------------------------------------
# 3. Screening: rejection reasons; rejected candidates are stored and never trained
# ---------------------------------------------------------------------------------------------
def test_screen_reasons_on_builtin_trees():
    for text in ("mul(zero, x)", "sub(x, x)", "one", "cos(zero)"):
        res = screen(Activation.from_string(text), max_forward_cost=0)
        assert not res.ok and not res.failed, text
        assert res.reason.startswith("(near-)constant output"), (text, res.reason)
    ok = screen(Activation.from_string("mul(x, sigmoid(x))"), max_forward_cost=0)
    assert ok.ok and ok.reason == "" and ok.dedup_key
    slow = screen(Activation.from_string("mul(x, sigmoid(x))"), max_forward_cost=1)
    assert not slow.ok and not slow.failed
    assert slow.reason == "forward pass too slow: estimated 8 ReLUs (limit 1)"  # mul 3 + sigmoid 5


def test_screen_reasons_on_user_operators(faulty_primitives):
    def check(text):
        return screen(Activation.from_string(text, faulty_primitives), max_forward_cost=0)

    inf = check("blowup(x)")
    assert not inf.ok and not inf.failed and inf.reason.startswith("non-finite output at x=")
    grad = check("rootabs(x)")
    assert not grad.ok and grad.reason == "non-finite gradient w.r.t. x on the probe grid"
    raised = check("boom(x)")
    assert not raised.ok and raised.failed
    assert raised.reason == ("operator 'boom' raised ValueError for an input of shape (2, 3, 8): "
                             "boom operator exploded")
    assert check("flat(x)").ok  # fails only on 4-D batches, i.e. in training
    shape = check("tanh(squash(x))")
    assert not shape.ok and shape.failed
    assert shape.reason == ("operator 'squash' returned shape (2, 3) for input of shape (2, 3, 8); "
                            "an operator must work elementwise and keep its input's shape")


def test_rejected_and_failed_candidates_are_stored_and_never_trained(tmp_path, faulty_primitives):
    fit = Counting()
    seeds = ["blowup(x)", "rootabs(x)", "boom(x)", "mul(zero, x)", "cos(zero)", "tanh(x)"]
    run = tmp_path / "run"
    result = run_search(SearchConfig(**{**CHEAP, "population": 2, "generations": 1},
                                     primitives=faulty_primitives, init_expressions=seeds),
                        out=run, progress=False, fitness=fit)
    expected = {"blowup(x)": ("rejected", "non-finite output at x="),
                "rootabs(x)": ("rejected", "non-finite gradient w.r.t. x"),
                "boom(x)": ("failed", "operator 'boom' raised ValueError"),
                "mul(zero, x)": ("rejected", "(near-)constant output"),
                "cos(zero)": ("rejected", "(near-)constant output")}
    for text, (status, reason) in expected.items():
        row = by_expression(run, text)
        assert row["status"] == status and row["error"].startswith(reason), row
        assert row["metrics"] is None and row["started_at"] is None and row["fitness"] is None
        assert fit.count(text) == 0
        # no parametric variants of a function that was not worth training
        assert len(rows(run, lambda r: r["function_id"] == row["id"])) == 1
    assert by_expression(run, "tanh(x)")["status"] == "done" and fit.count("tanh(x)") == 1
    assert by_expression(run, "relu(x)")["status"] == "done"  # ReLU always seeds the run
    assert result.counts["rejected"] >= 4 and result.counts["failed"] >= 1
    # every training call is a done row, nothing else was trained
    done = {(r["expression"], tuple(json.loads(r["params"]))) for r in rows(run, status="done",
                                                                            unique=True)}
    assert sorted(fit.calls) == sorted(done)
    log = (run / "search.log").read_text()
    assert "boom(x) failed: operator 'boom' raised ValueError" in log


def test_slow_forward_is_rejected_in_a_search(tmp_path, faulty_primitives):
    fit = Counting()
    run = tmp_path / "run"
    run_search(SearchConfig(**{**CHEAP, "population": 2, "generations": 1, "param_variants": 0,
                               "max_forward_cost": 400.0},
                            primitives=faulty_primitives, init_expressions=["slowpoke(x)"]),
               out=run, progress=False, fitness=fit)
    row = by_expression(run, "slowpoke(x)")
    assert row["status"] == "rejected", row
    assert row["error"] == "forward pass too slow: estimated 1000 ReLUs (limit 400)"
    assert row["started_at"] is None and row["metrics"] is None and fit.count("slowpoke(x)") == 0


# ---------------------------------------------------------------------------------------------
# 4. Dedup
# ---------------------------------------------------------------------------------------------
def test_equal_functions_train_once(tmp_path):
    fit = Counting()
    run = tmp_path / "run"
    result = run_search(SearchConfig(**CHEAP, init_expressions=["mul(x, sigmoid(x))",
                                                                "mul(sigmoid(x), x)"]),
                        out=run, progress=False, fitness=fit)
    first = by_expression(run, "mul(x, sigmoid(x))")
    second = by_expression(run, "mul(sigmoid(x), x)")
    assert first["duplicate_of"] is None and first["status"] == "done"
    assert second["duplicate_of"] == first["id"]
    assert second["status"] == "done" and second["fitness"] == first["fitness"]
    assert second["started_at"] is None and second["metrics"] is None
    assert first["started_at"] is not None and json.loads(first["metrics"])["fitness"] == first["fitness"]
    assert fit.count("mul(x, sigmoid(x))") == 1 and fit.count("mul(sigmoid(x), x)") == 0
    assert result.counts["duplicates"] >= 1
    # no variants for the duplicate either; every training happened once
    assert len(rows(run, lambda r: r["function_id"] == second["id"])) == 1
    assert len(fit.calls) == len(set(fit.calls))
    # duplicates never appear twice in the ranking
    assert len({t["function_id"] for t in result.top}) == len(result.top)


def test_each_generation_trains_its_longest_candidates_first(tmp_path):
    fit = Counting()
    run = tmp_path / "run"
    run_search(SearchConfig(**{**CHEAP, "population": 6, "generations": 3}), out=run,
               progress=False, fitness=fit)
    generation = {(r["expression"], tuple(json.loads(r["params"]))): r["generation"]
                  for r in rows(run, lambda r: r["started_at"] is not None, unique=True)}
    assert len(generation) == len(fit.calls)
    for g in sorted(set(generation.values())):
        costs = [Activation.from_string(e, "pangaea", p).estimated_cost
                 for e, p in fit.calls if generation[(e, p)] == g]
        assert len(costs) > 1 and len(set(costs)) > 1  # there is an order to check
        assert costs == sorted(costs, reverse=True), f"generation {g}: {costs}"


def test_parametric_variants_share_a_dedup_key_whichever_way_written():
    a = Activation.from_string("mul(x, sigmoid(x))", params=[3])  # x·σ(p·x)
    b = Activation.from_string("mul(sigmoid(x), x)", params=[2])  # σ(p·x)·x
    assert dedup_key(a) == dedup_key(b)
    assert function_key(a) == function_key(b) == function_key(Activation.from_string("mul(x, sigmoid(x))"))
    plain = Activation.from_string("mul(x, sigmoid(x))")
    outer = Activation.from_string("mul(x, sigmoid(x))", params=[1])  # p·x·σ(x)
    root = Activation.from_string("mul(x, sigmoid(x))", params=[0])  # p·(x·σ(x)): same family
    assert dedup_key(plain) != dedup_key(a)
    assert dedup_key(outer) != dedup_key(a)
    assert dedup_key(outer) == dedup_key(root)
    assert dedup_key(Activation.from_string("mul(x, sigmoid(x))", params=[1, 3])) != dedup_key(a)


def test_dedup_hits_are_counted(tmp_path):
    run = tmp_path / "run"
    result = run_search(SearchConfig(**{**CHEAP, "generations": 3, "param_variants": 0}),
                        out=run, progress=False, fitness=Counting())
    store = RunStore.open(run)
    assert result.dedup_hits == store.get_meta("dedup_hits") > 0
    keys = [r["dedup_key"] for r in rows(run, lambda r: r["dedup_key"] is not None, unique=True)]
    assert len(keys) == len(set(keys))  # no two trained candidates share a key


# ---------------------------------------------------------------------------------------------
# Store, result and resume logic (cheap fitness)
# ---------------------------------------------------------------------------------------------
def test_search_is_deterministic_and_records_generations(tmp_path):
    cfg = SearchConfig(**{**CHEAP, "generations": 3, "seed": 5})
    a = run_search(cfg, out=tmp_path / "a", progress=False, fitness=Counting())
    b = run_search(cfg, out=tmp_path / "b", progress=False, fitness=Counting())
    snap = snapshot(tmp_path / "a")
    assert snap == snapshot(tmp_path / "b") and a.top == b.top
    assert [(g[0], g[1]) for g in snap["generations"]] == [(0, "done"), (1, "done"), (2, "done")]
    assert a.counts["pending"] == a.counts["running"] == 0
    store = RunStore.open(tmp_path / "a")
    for g in range(3):
        pop = store.population(g)
        assert 0 < len(pop) <= cfg.population
        fits = [r.fitness for r in pop]
        assert fits == sorted(fits, reverse=True)
    # elitism 2: the two best of a generation survive into the next
    for g in (1, 2):
        best_before = [r.function_id for r in store.population(g - 1)][:2]
        assert set(best_before) <= {r.function_id for r in store.population(g)}
    # each generation trains `population` new functions (plus one variant each)
    for g in range(3):
        plain = rows(tmp_path / "a", generation=g, plain=True, unique=True, status="done")
        assert len(plain) == cfg.population
    other_seed = run_search(cfg.replace(seed=6), out=tmp_path / "c", progress=False, fitness=Counting())
    assert snapshot(tmp_path / "c")["candidates"] != snap["candidates"]
    assert other_seed.counts["done"] > 0


def test_budget_counts_trainings_only(tmp_path, faulty_primitives):
    """A candidate whose screening failed was never trained: it does not use the budget."""
    fit = Counting()
    result = run_search(SearchConfig(**{**CHEAP, "generations": 5, "budget": 10},
                                     primitives=faulty_primitives, init_expressions=["boom(x)"]),
                        out=tmp_path / "run", progress=False, fitness=fit)
    assert by_expression(tmp_path / "run", "boom(x)")["status"] == "failed"
    assert len(fit.calls) == 10 == RunStore.open(tmp_path / "run").count_trainings()
    assert result.counts["done"] - result.counts["duplicates"] <= 10


def test_crossover_random_strategy_and_plain_variant_fitness(tmp_path):
    cross = run_search(SearchConfig(**{**CHEAP, "generations": 3, "crossover": 0.5, "temperature": 10.0}),
                       out=tmp_path / "cross", progress=False, fitness=Counting())
    children = rows(tmp_path / "cross", lambda r: r["origin"] == "crossover")
    assert children and all(len(json.loads(r["parent_ids"])) == 2 for r in children)
    assert cross.counts["pending"] == 0

    run_search(SearchConfig(**{**CHEAP, "generations": 3, "strategy": "random"}),
               out=tmp_path / "random", progress=False, fitness=Counting())
    later = rows(tmp_path / "random", lambda r: r["generation"] > 0, plain=True)
    assert later and all(r["origin"] == "random" and r["parent_ids"] == "[]" for r in later)

    run_search(SearchConfig(**{**CHEAP, "param_variants": 2, "variant_fitness": "plain"}),
               out=tmp_path / "plain", progress=False, fitness=Counting())
    store = RunStore.open(tmp_path / "plain")
    for g in (0, 1):
        for member in store.population(g):
            assert member.fitness == store.candidate(member.function_id).fitness


def test_resume_extends_a_finished_run_like_an_uninterrupted_one(tmp_path):
    cfg = SearchConfig(**{**CHEAP, "seed": 3})
    run_search(cfg, out=tmp_path / "short", progress=False, fitness=Counting())
    before = snapshot(tmp_path / "short")
    again = Counting()  # resuming a finished run trains nothing
    run_search(out=tmp_path / "short", resume=True, progress=False, fitness=again)
    assert again.calls == [] and snapshot(tmp_path / "short") == before
    more = Counting()
    run_search(out=tmp_path / "short", resume=True, progress=False, fitness=more, generations=3)
    run_search(cfg.replace(generations=3), out=tmp_path / "long", progress=False, fitness=Counting())
    assert snapshot(tmp_path / "short") == snapshot(tmp_path / "long")
    assert more.calls and all(r["generation"] == 2 for r in rows(
        tmp_path / "short", lambda r: r["id"] > len(before["candidates"])))
    assert RunStore.open(tmp_path / "short").config()["generations"] == 3


def test_resume_needs_the_python_fitness_again(tmp_path):
    run_search(SearchConfig(**CHEAP), out=tmp_path / "run", progress=False, fitness=Counting())
    assert RunStore.open(tmp_path / "run").config()["fitness"].startswith("<python object")
    with pytest.raises(UserError, match="fitness="):
        run_search(out=tmp_path / "run", resume=True, progress=False)


def test_resume_uses_the_stored_fitness_reference(tmp_path):
    """A run started with fitness="file.py:function" resumes with that function."""
    from search_helpers import HELPERS

    cfg = SearchConfig(**CHEAP, fitness=f"{HELPERS}:score_fitness")
    run_search(cfg, out=tmp_path / "run", progress=False)
    run_search(out=tmp_path / "run", resume=True, progress=False, generations=3)
    done = rows(tmp_path / "run", status="done", unique=True)
    assert {r["generation"] for r in done} == {0, 1, 2}
    for r in done:  # no training happened: every value is the helper's
        act = Activation.from_string(r["expression"], params=json.loads(r["params"]))
        assert r["fitness"] == pytest.approx(score(act), abs=1e-12)
        assert json.loads(r["metrics"]) == {"fitness": r["fitness"]}


def test_fitness_may_return_numpy_and_torch_scalars(tmp_path):
    from search_helpers import HELPERS

    result = run_search(SearchConfig(**{**CHEAP, "generations": 1},
                                     fitness=f"{HELPERS}:numpy_fitness"),
                        out=tmp_path / "run", progress=False)
    done = rows(tmp_path / "run", status="done", unique=True)
    assert done and result.counts["failed"] == 0
    for r in done:
        metrics = json.loads(r["metrics"])
        assert metrics["fitness"] == pytest.approx(r["fitness"])
        assert metrics["loss"] == pytest.approx(1.0 - r["fitness"], abs=1e-5)
        assert isinstance(metrics["loss"], float)


def test_search_leaves_logging_and_threads_as_found(tmp_path):
    import logging

    import torch

    logger = logging.getLogger("gp_activations.search")
    saved = (logger.level, logger.propagate, torch.get_num_threads())
    logger.setLevel(logging.WARNING)
    logger.propagate = True
    torch.set_num_threads(2)
    try:
        run_search(SearchConfig(**{**CHEAP, "generations": 1, "threads": 1}), out=tmp_path / "run",
                   progress=False, fitness=Counting())
        assert (logger.level, logger.propagate) == (logging.WARNING, True)
        assert torch.get_num_threads() == 2
        assert "generation 0 done" in (tmp_path / "run" / "search.log").read_text()
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        torch.set_num_threads(saved[2])


# ---------------------------------------------------------------------------------------------
# 7. Bad configurations
# ---------------------------------------------------------------------------------------------
def test_unknown_and_ill_typed_keys():
    with pytest.raises(UserError, match="unknown key 'populaton'"):
        SearchConfig.from_dict({"populaton": 4})
    with pytest.raises(UserError, match="'population' must be an integer"):
        SearchConfig.from_dict({"population": "ten"})
    with pytest.raises(UserError, match="'population' must be an integer"):
        SearchConfig.from_dict({"population": True})
    with pytest.raises(UserError, match="'temperature' must be a number"):
        SearchConfig.from_dict({"temperature": "hot"})
    with pytest.raises(UserError, match="'selection' must be one of"):
        SearchConfig.from_dict({"selection": "roulette"})
    with pytest.raises(UserError, match="unknown mutation 'grow'"):
        SearchConfig.from_dict({"mutation_weights": {"grow": 1}})
    with pytest.raises(UserError, match="every mutation weight is 0"):
        SearchConfig.from_dict({"mutation_weights": {m: 0 for m in MUTATIONS}})
    with pytest.raises(UserError, match="unknown key 'epoch' in \\[train\\]"):
        SearchConfig.from_dict({"train": {"epoch": 3}})
    assert SearchConfig.from_dict({"temperature": 1}).temperature == 1.0  # ints are numbers
    with pytest.raises(UserError, match="'population' must be an integer"):  # Python API too
        SearchConfig(population="ten")
    with pytest.raises(UserError, match="'population' must be >= 1"):
        SearchConfig(population=0)
    with pytest.raises(UserError, match="'population' must be an integer"):
        run_search(SearchConfig(), out="/nonexistent/never-created", population="ten")


def test_toml_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('dataset = "digits"\npopulation = 5\nepochs = 2\n[train]\nbatch_size = 32\n'
                    '[mutation_weights]\nsubtree = 0.5\n')
    cfg = SearchConfig.from_toml(good, overrides={"generations": 4, "seed": None})
    assert (cfg.dataset, cfg.population, cfg.generations, cfg.seed) == ("digits", 5, 4, 0)
    train = cfg.train_config()
    assert train.epochs == 2 and train.batch_size == 32
    bad = tmp_path / "bad.toml"
    bad.write_text('population = "ten"\n')
    with pytest.raises(UserError, match="bad.toml: 'population' must be an integer, got 'ten'"):
        SearchConfig.from_toml(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("workerz = 2\n")
    with pytest.raises(UserError, match="unknown.toml: unknown key 'workerz'"):
        SearchConfig.from_toml(unknown)
    broken = tmp_path / "broken.toml"
    broken.write_text("population = \n")
    with pytest.raises(UserError, match="invalid TOML"):
        SearchConfig.from_toml(broken)
    with pytest.raises(UserError, match="not found"):
        SearchConfig.from_toml(tmp_path / "missing.toml")


def test_space_without_binary_operators_fails_before_the_run_exists(tmp_path):
    path = tmp_path / "unary_only.py"
    path.write_text(UNARY_ONLY_PRIMITIVES)
    with pytest.raises(UserError, match="no binary operators"):
        run_search(SearchConfig(**CHEAP, primitives=str(path)), out=tmp_path / "run",
                   progress=False, fitness=Counting())
    assert not (tmp_path / "run" / "run.sqlite").exists()


def test_bad_fitness_reference_fails_before_the_run_exists(tmp_path):
    with pytest.raises(UserError, match="no attribute 'nope'"):
        run_search(SearchConfig(**CHEAP, fitness="search_helpers:nope"), out=tmp_path / "run",
                   progress=False)
    assert not (tmp_path / "run").exists()


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    fit = Counting()
    with pytest.raises(UserError, match="cannot write to run directory"):
        run_search(SearchConfig(**CHEAP), out=blocker / "run", progress=False, fitness=fit)
    assert fit.calls == [] and blocker.read_text() == "not a directory"


def test_existing_run_needs_resume(tmp_path):
    run_search(SearchConfig(**{**CHEAP, "generations": 1}), out=tmp_path / "run", progress=False,
               fitness=Counting())
    with pytest.raises(UserError, match="already holds a run"):
        run_search(SearchConfig(**CHEAP), out=tmp_path / "run", progress=False, fitness=Counting())


def test_resume_of_something_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a search run"):
        run_search(out=tmp_path / "missing", resume=True, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a search run"):
        run_search(out=tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(UserError, match="not a search run"):
        RunStore.open(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "run.sqlite").write_text("this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a readable run database"):
        run_search(out=tmp_path / "junk", resume=True, progress=False)


def test_resume_cannot_change_what_defines_the_run(tmp_path):
    fit = Counting()
    run_search(SearchConfig(**{**CHEAP, "generations": 1}), out=tmp_path / "run", progress=False,
               fitness=fit)
    before = snapshot(tmp_path / "run")
    for key, value in (("population", 9), ("seed", 1), ("dataset", "digits"), ("temperature", 0.5)):
        with pytest.raises(UserError, match=f"'{key}' defines the run"):
            run_search(out=tmp_path / "run", resume=True, progress=False, fitness=fit, **{key: value})
    assert snapshot(tmp_path / "run") == before
    # an unchanged value is not a change
    run_search(out=tmp_path / "run", resume=True, progress=False, fitness=fit, population=4)


# ---------------------------------------------------------------------------------------------
# A real (tiny) search: digits, one epoch
# ---------------------------------------------------------------------------------------------
def test_small_real_search_on_digits(tmp_path):
    run = tmp_path / "run"
    cfg = SearchConfig(**{**CHEAP, "population": 3}, dataset="digits", epochs=1, device="cpu")
    result = run_search(cfg, out=run, progress=False)
    stored = rows(run)
    assert result.counts["done"] == len(stored) >= 2 * 3 * 2 - 2
    relu = by_expression(run, "relu(x)")
    metrics = json.loads(relu["metrics"])
    assert metrics["status"] == "ok" and metrics["dataset"] == "digits" and metrics["epochs_done"] == 1
    assert metrics["config"]["epochs"] == 1 and metrics["config"]["threads"] == 1
    assert relu["fitness"] == metrics["accuracy"] and 0.5 < relu["fitness"] <= 1.0
    assert result.relu_fitness == relu["fitness"]
    for r in stored:
        assert r["started_at"] is not None and r["finished_at"] >= r["started_at"]
        assert 0.0 <= r["fitness"] <= 1.0
    fits = [t["fitness"] for t in result.top]
    assert fits == sorted(fits, reverse=True) and len(result.top) <= 5
    from gp_activations.search.screening import is_affine

    affine = [r for r in stored if is_affine(Activation.from_string(
        r["expression"], r["primitives"], json.loads(r["params"])))]
    ranked = [r for r in stored if r not in affine]
    assert result.top[0]["fitness"] == max(r["fitness"] for r in ranked)
    assert not any(t["linear"] for t in result.top)
    table = result.table()
    if affine and max(r["fitness"] for r in affine) > result.top[0]["fitness"]:
        # a linear network beat every activation here: said, not ranked
        assert "affine function(s) not ranked" in table and "allow_linear = true" in table
    assert "relu(x)  (ReLU under the same budget)" in table and f"{fits[0]:7.4f}" in table
    assert "generation 1 done" in (run / "search.log").read_text()


def test_a_run_in_use_cannot_be_resumed_by_a_second_search(tmp_path):
    from gp_activations.search.driver import Search

    run = tmp_path / "run"
    first = Search(SearchConfig(**CHEAP), run, progress=False, fitness=Counting())
    with pytest.raises(UserError, match="in use by another search"):
        Search(SearchConfig(**CHEAP), run, resume=True, progress=False, fitness=Counting())
    first.run()  # releases the run when it finishes ...
    again = Search(SearchConfig(**CHEAP), run, resume=True, progress=False, fitness=Counting())
    assert again.run().counts["pending"] == 0  # ... so it can be resumed (nothing left to do)


def test_bad_init_expression_or_mismatched_model_leaves_no_run_behind(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="init_expressions: 'foo\\(x\\)'"):
        run_search(SearchConfig(**CHEAP, init_expressions=["foo(x)"]), out=run, progress=False)
    with pytest.raises(UserError, match="does not fit dataset 'mnist1d'"):
        run_search(SearchConfig(**CHEAP, model="resnet20"), out=run, progress=False)
    assert not run.exists()
    # ... and the search logger is left as it was found
    import logging

    assert not logging.getLogger("gp_activations.search").handlers


def test_file_references_are_stored_absolute(tmp_path, monkeypatch, faulty_primitives):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    helpers = tmp_path / "helpers_here.py"
    helpers.write_text("def score(act, seed):\n    return 0.5\n")
    run_search(SearchConfig(**{**CHEAP, "generations": 1, "fitness": "helpers_here.py:score"},
                            primitives="faulty_ops.py", init_expressions=["tanh(x)"]),
               out=run, progress=False)
    stored = RunStore.open(run).config()
    assert stored["fitness"] == f"{helpers}:score"
    assert stored["primitives"] == str(tmp_path / "faulty_ops.py")


def test_executors_need_at_least_one_worker():
    from gp_activations.search.executors import make_executor

    for workers, threads in ((0, 1), (-1, 1), (1, 0)):
        with pytest.raises(UserError, match="must be >= 1"):
            make_executor("process", workers=workers, threads=threads, timeout=None, gpus=0)

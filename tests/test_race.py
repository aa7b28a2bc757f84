"""The final race: the search's winner is the race's, the race resumes mid-way without
redoing a training, every executor names the same winner, and bad settings are one line."""

from __future__ import annotations

import pytest

from gp_activations.cli import main
from gp_activations.search import RunStore, SearchConfig, run_search
from gp_activations.search import executors as executors_mod
from gp_activations.search.jobs import JobKey, JobKind

from search_helpers import CHEAP, HELPERS

RACE = dict(CHEAP, generations=2, race_top=3, race_min_seeds=3, race_max_seeds=6,
            fitness=f"{HELPERS}:noisy_fitness")


def _race_rows(run):
    store = RunStore.open(run, readonly=True)
    try:
        return [(r.entrant, r.seed, r.label, str(r.status), r.accuracy) for r in store.race_runs()]
    finally:
        store.close()


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    out = tmp_path_factory.mktemp("race") / "run"
    return out, run_search(SearchConfig(**RACE), out=out, progress=False)


def test_the_race_names_silu_the_winner_and_the_search_reports_it(raced):
    run, result = raced
    race = result.race
    # the fitness is closeness to x*sigmoid(x): SiLU is the best function there is
    assert race["winner"] == "silu" or race["winner"].endswith("= silu")
    assert result.winner == race["winner"]
    rows = _race_rows(run)
    labels = {label for _, _, label, _, _ in rows}
    # each baseline races once: as itself, or as the found function equal to it
    for name in ("silu", "gelu", "relu"):
        assert sum(lab == name or lab.endswith(f"= {name}") for lab in labels) == 1, labels
    assert sum(lab.startswith("found #") for lab in labels) == 3
    # every entrant trained at least the minimum seeds; the winner at most the maximum
    per = {}
    for entrant, seed, *_ in rows:
        per.setdefault(entrant, []).append(seed)
    assert all(sorted(s) == list(range(len(s))) and 3 <= len(s) <= 6 for s in per.values())
    # ReLU is far from x*sigmoid(x): dropped before the end
    assert any(lab == "relu" or lab.endswith("= relu") for lab in race["eliminated"])
    assert "final race" in result.race_table() and race["winner"] in result.race_table()


def test_a_race_interrupted_mid_way_resumes_without_redoing_a_training(raced, tmp_path,
                                                                        monkeypatch):
    straight, _ = raced
    real, race_calls, armed = executors_mod.evaluate_task, [], [True]

    def interrupted(wire):
        key = JobKey.from_wire(wire["key"])
        if key.kind is JobKind.RACE:
            race_calls.append((key.id, key.seed))
            if len(race_calls) == 8 and armed[0]:
                armed[0] = False
                raise KeyboardInterrupt  # Ctrl-C while the race's 8th training runs
        return real(wire)

    monkeypatch.setattr(executors_mod, "evaluate_task", interrupted)
    first = run_search(SearchConfig(**RACE), out=tmp_path / "run", progress=False)
    assert first.interrupted and first.race is None
    done = {(e, s) for e, s, *_ in _race_rows(tmp_path / "run")}
    assert len(done) == 7
    race_calls.clear()
    result = run_search(out=tmp_path / "run", resume=True, progress=False)
    assert not result.interrupted
    assert race_calls and not done & set(race_calls)
    assert _race_rows(tmp_path / "run") == _race_rows(straight)
    assert result.race == run_search(out=straight, resume=True, progress=False).race


def test_every_executor_names_the_same_winner(raced, tmp_path):
    straight, result = raced
    other = run_search(SearchConfig(**{**RACE, "executor": "process", "workers": 2}),
                       out=tmp_path / "process", progress=False)
    assert other.race == result.race
    assert _race_rows(tmp_path / "process") == _race_rows(straight)


@pytest.mark.parametrize("flags, message", [
    (["--race", "1"], "race_top must be 0 (no race) or >= 2"),
    (["--race", "3", "--race-min-seeds", "4", "--race-max-seeds", "3"], "budget must hold"),
    (["--race", "3", "--race-min-seeds", "1"], "race_min_seeds >= 2"),
])
def test_bad_race_settings_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    code = main(["search", "--out", str(tmp_path / "run"), "--dataset", "digits", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_finished_search_is_raced_later_by_resuming_it(raced, tmp_path):
    straight, result = raced
    plain = {k: v for k, v in RACE.items() if not k.startswith("race_")}
    run_search(SearchConfig(**plain), out=tmp_path / "run", progress=False)
    later = run_search(out=tmp_path / "run", resume=True, progress=False, race_top=3,
                       race_min_seeds=3, race_max_seeds=6)
    assert later.race == result.race  # the same search, the same race
    assert _race_rows(tmp_path / "run") == _race_rows(straight)


def test_the_race_order_is_worked_out_from_the_stored_race_trainings(raced):
    """After a race, rank 1 of what is retrained is the race's best found function: those
    still in the race before those it dropped, each by its mean over its race seeds (worked out
    here from the stored race trainings), not the best fitness."""
    from statistics import fmean

    from gp_activations.search.ranking import ranked_functions

    run, result = raced
    store = RunStore.open(run, readonly=True)
    try:
        by_fitness = [i["candidate"].id for i in ranked_functions(store, 3)[0]]
        by_race = [i["candidate"].id for i in ranked_functions(store, 3, race=True)[0]]
        entrants = store.get_meta("race_entrants")
        accs = {}
        for r in store.race_runs():
            accs.setdefault(r.entrant, []).append(0.0 if r.accuracy is None else r.accuracy)
        top1 = [i["candidate"].id for i in ranked_functions(store, 1, race=True)[0]]
        everything = ranked_functions(store, None, race=True)[0]
    finally:
        store.close()
    dropped = result.race["eliminated"]
    found = [(i, e) for i, e in enumerate(entrants) if e["candidate_id"] is not None]
    expected = sorted(found, key=lambda ie: (ie[1]["label"] in dropped, -fmean(accs[ie[0]])))
    assert by_race == [e["candidate_id"] for _, e in expected]
    assert sorted(by_race) == sorted(by_fitness)  # the same three raced, in another order
    assert top1 == by_race[:1]
    assert [i["candidate"].id for i in everything][:3] == by_race


def test_the_races_order_overrides_the_fitness_order(tmp_path):
    """A hand-made finished race: fitness ranks A > B > C > D; the race kept C and A (C's mean
    higher) and dropped B (whose mean, over its fewer seeds, was the highest); D did not race.
    Retrained in the order C, A, B, then D."""
    from gp_activations.search.ranking import ranked_functions

    store = RunStore.create(tmp_path / "run", SearchConfig(dataset="digits").to_dict())
    ids = {}
    with store.transaction():
        for name, expr, fitness in (("A", "tanh(x)", 0.9), ("B", "relu(x)", 0.8),
                                    ("C", "mul(x, sigmoid(x))", 0.7), ("D", "sigmoid(x)", 0.6)):
            ids[name] = store.add_candidate(expression=expr, primitives="pangaea",
                                            status="done", generation=0, fitness=fitness)
            store.update_candidate(ids[name], function_id=ids[name])
    entrants = [{"label": f"found #{i}", "expression": "", "primitives": "pangaea",
                 "params": [], "candidate_id": ids[n]} for i, n in enumerate("ABC", 1)]
    store.set_meta("race_entrants", entrants + [{"label": "silu", "expression": "",
                                                 "primitives": "pangaea", "params": [],
                                                 "candidate_id": None}])
    store.set_meta("race", {"winner": "found #3", "survivors": ["found #3", "found #1"],
                            "eliminated": {"found #2": 3, "silu": 4},
                            "means": {"found #1": 0.85, "found #2": 0.95, "found #3": 0.88,
                                      "silu": 0.99}})
    order = {v: k for k, v in ids.items()}
    assert [order[i["candidate"].id] for i in ranked_functions(store, None)[0]] == list("ABCD")
    assert [order[i["candidate"].id] for i in ranked_functions(store, None, race=True)[0]] == \
        list("CABD")
    assert [order[i["candidate"].id] for i in ranked_functions(store, 1, race=True)[0]] == ["C"]
    assert [order[i["candidate"].id] for i in ranked_functions(store, 4, race=True)[0]] == \
        list("CABD")
    store.close()
    # evaluate retrains the race's order: its found #1 is C
    from gp_activations.evaluate import evaluate_run

    rows = evaluate_run(tmp_path / "run", top=1, seeds=1, epochs=0.05, baselines=["relu"],
                        executor="serial", progress=False)
    assert [(r.label, r.expression) for r in rows][0] == ("found #1", "mul(x, sigmoid(x))")
    # the search went on after its race and found E above the raced ones: fitness order again
    store = RunStore.open(tmp_path / "run")
    with store.transaction():
        ids["E"] = store.add_candidate(expression="softplus(x)", primitives="pangaea",
                                       status="done", generation=1, fitness=0.95)
        store.update_candidate(ids["E"], function_id=ids["E"])
    order = {v: k for k, v in ids.items()}
    assert [order[i["candidate"].id] for i in ranked_functions(store, None, race=True)[0]] == \
        list("EABCD")
    store.close()


# -- the screen: a wider field trains one seed of the race's schedule, the best race_top race --

SCREEN = dict(RACE, race_screen=6, race_epochs=60, fitness=f"{HELPERS}:budget_fitness")


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    out = tmp_path_factory.mktemp("screen") / "run"
    return out, run_search(SearchConfig(**SCREEN), out=out, progress=False)


def test_a_screen_races_the_best_of_a_wider_field_on_fresh_seeds(screened):
    """budget_fitness ranks functions by closeness to x*sigmoid(x) on the search's budget and
    to softplus on the race's (60 epochs): the race's found entrants are the best 3 of the top
    6 by their screen accuracy -- sorted here from the stored trainings -- not the fitness's
    top 3, and the race counts only their fresh seeds."""
    from statistics import fmean

    from search_helpers import budget_fitness

    from gp_activations import Activation
    from gp_activations.search.ranking import ranked_functions

    run, result = screened
    store = RunStore.open(run, readonly=True)
    try:
        by_fitness = [i["candidate"].id for i in ranked_functions(store, 6)[0]]
        entrants = store.get_meta("race_entrants")
    finally:
        store.close()
    rows = _race_rows(run)
    found = [i for i, e in enumerate(entrants) if e["candidate_id"] is not None]
    assert [entrants[i]["candidate_id"] for i in found] == by_fitness  # the top 6 screened
    screen = {entrant: acc for entrant, seed, _, _, acc in rows if seed == 0}
    assert set(screen) == set(range(len(entrants)))  # every entrant, baselines too, screened
    # the screen trained the race's schedule: the hook was given the race's 60 epochs
    for i in found:
        e = entrants[i]
        act = Activation.from_string(e["expression"], e["primitives"], e["params"])
        assert screen[i] == pytest.approx(budget_fitness(act, 0, epochs=60), abs=1e-12)
        assert screen[i] != pytest.approx(budget_fitness(act, 0), abs=1e-6)
    # a found function equal to a baseline races for it whatever its screen; the others compete
    baselines = {i for i, e in enumerate(entrants) if e["candidate_id"] is None or e["equals"]}
    others = [i for i in found if i not in baselines]
    best3 = sorted(others, key=lambda i: -screen[i])[:3]
    raced = {entrant for entrant, seed, *_ in rows if seed >= 1}
    assert raced == set(best3) | baselines
    assert set(best3) != set(others[:3])  # the screen changed the field (the scenario's point)
    labels = {label for entrant, seed, label, *_ in rows if seed >= 1}
    for name in ("silu", "gelu", "relu"):  # every baseline races, as itself or as its equal
        assert sum(lab == name or lab.endswith(f"= {name}") for lab in labels) == 1, labels
    per = {}
    for entrant, seed, label, _, acc in rows:
        if seed >= 1:
            per.setdefault(label, []).append(acc)
    assert result.race["means"] == pytest.approx({k: fmean(v) for k, v in per.items()})
    assert result.race["screen"] == pytest.approx({entrants[i]["label"]: a
                                                   for i, a in screen.items()})
    assert "its screen" in result.race_table()


def test_a_screen_interrupted_mid_way_resumes_and_every_executor_agrees(screened, tmp_path,
                                                                        monkeypatch):
    straight, result = screened
    real, armed = executors_mod.evaluate_task, [0]

    def interrupted(wire):
        if JobKey.from_wire(wire["key"]).kind is JobKind.RACE:
            armed[0] += 1
            if armed[0] == 4:
                raise KeyboardInterrupt  # Ctrl-C while the screen's 4th training runs
        return real(wire)

    monkeypatch.setattr(executors_mod, "evaluate_task", interrupted)
    first = run_search(SearchConfig(**SCREEN), out=tmp_path / "run", progress=False)
    assert first.interrupted and len(_race_rows(tmp_path / "run")) == 3
    resumed = run_search(out=tmp_path / "run", resume=True, progress=False)
    assert resumed.race == result.race and _race_rows(tmp_path / "run") == _race_rows(straight)
    monkeypatch.undo()
    other = run_search(SearchConfig(**{**SCREEN, "executor": "process", "workers": 2}),
                       out=tmp_path / "process", progress=False)
    assert other.race == result.race and _race_rows(tmp_path / "process") == _race_rows(straight)


@pytest.mark.parametrize("flags, message", [
    (["--race", "3", "--race-screen", "3"], "race_screen must be 0 (no screen) or more than"),
    (["--race-screen", "10"], "set race_top too"),
])
def test_bad_screen_settings_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    code = main(["search", "--out", str(tmp_path / "run"), "--dataset", "digits", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_started_race_keeps_its_entrants_settings_on_resume(screened, tmp_path, capsys):
    """Once a race's entrants are stored, resuming with another race_top, race_screen, set of
    baselines or schedule is one line and exit 2 (racing the stored entrants under other
    settings would mix two races); more seeds may still be asked for."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(screened[0], run)
    before = _race_rows(run)
    for flags, key in ((["--race", "4"], "race_top"), (["--race-screen", "9"], "race_screen"),
                       (["--race-epochs", "70"], "race_epochs")):
        code = main(["search", "--out", str(run), "--resume", *flags])
        err = capsys.readouterr().err
        assert code == 2 and f"'{key}' cannot change now" in err and err.count("\n") == 1
    assert _race_rows(run) == before
    race = screened[1].race
    more = run_search(out=run, resume=True, progress=False, race_max_seeds=7)
    after = _race_rows(run)
    assert set(before) <= set(after) and more.race is not None
    if race["seeds"] == 6 and len(race["survivors"]) > 1:  # ended at the maximum: one more seed
        assert len(after) == len(before) + len(race["survivors"])
        assert more.race["seeds"] == 7

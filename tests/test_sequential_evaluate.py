"""Evaluations that decide: ``evaluate --max-seeds N`` adds seeds to each comparison with ReLU
until a group-sequential test (statistics.SequentialTest) decides it or N is reached.

Real trainings (digits, one epoch, one thread, test split), on a hand-made run whose ranked
functions are chosen here, so the outcome does not depend on a search:

* ``found #1 = exp(-x^2)``: a Gaussian bump; on digits it stays at chance (0.10 on seeds 0-2,
  measured) while ReLU reaches 0.79-0.89, so the first look (3 seeds) already decides;
* ``found #2 = tanh(x)``: the tanh baseline itself, trained once as it;
* ``tanh``: 0.89-0.92 vs ReLU's 0.79-0.89 at 1 epoch (measured): Welch p about 0.09 at 5
  seeds, above every look's level, so it runs to the maximum (undecided at max).

The design: seeds 3, max 5, alpha 0.05 (looks at 3, 4, 5 seeds per arm).
"""

from __future__ import annotations

import csv
import math
import shutil
import statistics
from types import SimpleNamespace

import pytest
from scipy.stats import norm

import gp_activations.train as train_mod
from gp_activations.cli import main
from gp_activations.errors import UserError
from gp_activations.evaluate import evaluate_run, format_table
from gp_activations.report import write_report
from gp_activations.search import RunStore, SearchConfig
from gp_activations.statistics import SequentialTest, min_detectable_difference, welch_p
from search_helpers import stored

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = "exp(neg(mul(x, x)))"
SEQ = dict(top=2, seeds=3, max_seeds=5, epochs=1, baselines=["relu", "tanh"],
           executor="serial", progress=False)
ARGV = ["--top", "2", "--seeds", "3", "--max-seeds", "5", "--epochs", "1",
        "--baselines", "relu,tanh", "--executor", "serial", "--no-progress"]


def _make_run(path, evaluate=None):
    """A finished digits 'search' whose ranking is BAD, then tanh (fitness set by hand)."""
    config = SearchConfig(dataset="digits", threads=1, evaluate=evaluate or {})
    store = RunStore.create(path, config.to_dict())
    with store.transaction():
        for expr, fitness in ((BAD, 0.9), ("tanh(x)", 0.8)):
            cid = store.add_candidate(expression=expr, primitives="pangaea", status="done",
                                      generation=0, fitness=fitness)
            store.update_candidate(cid, function_id=cid)
    store.close()


def _final_rows(run_dir) -> list[dict]:
    store = RunStore.open(run_dir, readonly=True)
    rows = [stored(r) for r in store.final_trainings()]
    store.close()
    return rows


def _csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []
    real = train_mod.train

    def counting(activation, *args, **kwargs):
        calls.append((str(activation), kwargs.get("seed")))
        return real(activation, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train", counting)
    return calls


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "run"
    _make_run(out)
    rows = evaluate_run(out, **SEQ)
    return SimpleNamespace(dir=out, rows={r.label: r for r in rows}, order=[r.label for r in rows])


def _seeds_by_label(run_dir) -> dict:
    out = {}
    for r in _final_rows(run_dir):
        if r["status"] == "done":
            out.setdefault(r["label"], []).append(r["seed"])
    return {k: sorted(v) for k, v in out.items()}


def test_a_clear_difference_stops_early_and_a_close_one_runs_to_the_maximum(run):
    rows = run.rows
    assert run.order == ["found #1", "found #2", "relu", "tanh"]
    assert rows["found #2"].equals == "tanh"
    # trained: the bad function 3 seeds only, tanh and relu the maximum, found #2 as tanh
    assert _seeds_by_label(run.dir) == {"found #1": [0, 1, 2], "relu": [0, 1, 2, 3, 4],
                                        "tanh": [0, 1, 2, 3, 4]}
    bad, tanh, relu = rows["found #1"], rows["tanh"], rows["relu"]
    assert bad.mean < 0.2 < 0.7 < relu.mean  # at chance vs learning
    assert (bad.decision, bad.decided_at, bad.n) == ("different", 3, 3)
    assert (tanh.decision, tanh.decided_at, tanh.n) == ("undecided at max", 5, 5)
    assert relu.decision is None and relu.n == 5 and relu.p_vs_ref is None
    # the alias is the baseline's comparison, value for value
    alias = rows["found #2"]
    assert (alias.accuracies, alias.decision, alias.p_vs_ref, alias.min_detectable) == \
        (tanh.accuracies, tanh.decision, tanh.p_vs_ref, tanh.min_detectable)
    # the p-values and levels are those of the deciding look, checked against the design
    test = SequentialTest(0.05, 3, 5)
    assert bad.p_vs_ref == pytest.approx(welch_p(bad.accuracies, relu.accuracies[:3]))
    assert bad.p_vs_ref <= bad.level == test.boundaries[0]
    assert tanh.p_vs_ref == pytest.approx(welch_p(tanh.accuracies, relu.accuracies))
    assert tanh.level == test.boundaries[-1] < tanh.p_vs_ref
    for look in (3, 4):  # tanh crossed no earlier boundary either
        assert welch_p(tanh.accuracies[:look], relu.accuracies[:look]) > \
            test.boundaries[test.looks.index(look)]


def _hand_mdd(a, b, n, level):
    """Pooled std by hand, and the normal approximation of the detectable difference."""
    def var(x):
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    s = math.sqrt((var(a[:n]) + var(b[:n])) / 2)
    return s, (norm.isf(level / 2) + norm.isf(0.2)) * s * math.sqrt(2 / n)


def test_seeds_needed_and_min_detectable_difference_are_printed_and_written(run, capsys,
                                                                            count_trainings):
    rows, relu = run.rows, run.rows["relu"].accuracies
    for label in ("found #1", "tanh"):
        r = rows[label]
        s, approx = _hand_mdd(r.accuracies, relu, r.decided_at, r.level)
        assert r.min_detectable == pytest.approx(min_detectable_difference(s, r.decided_at,
                                                                           r.level), rel=1e-9)
        # the t-based value lies above the normal approximation (few seeds: heavy tails)
        assert approx < r.min_detectable < 3 * approx
    # at max (n = 5, df 8) the normal approximation is within ~25 %
    s, approx = _hand_mdd(rows["tanh"].accuracies, relu, 5, rows["tanh"].level)
    assert rows["tanh"].min_detectable == pytest.approx(approx, rel=0.25)

    # results.csv: the existing columns, then the decision's
    table = _csv(run.dir / "results.csv")
    assert list(table[0])[:11] == ["label", "kind", "expression", "params", "n", "mean", "std",
                                   "p_vs_relu", "best", "accuracies", "failed"]
    assert list(table[0])[11:] == ["decision", "seeds_needed", "level", "min_detectable"]
    by_label = {t["label"]: t for t in table}
    assert list(by_label) == ["found #1", "found #2 = tanh", "relu", "tanh"]
    for label, t in by_label.items():
        r = rows[label.split(" = ")[0]]
        if r.decision is None:
            assert (t["decision"], t["seeds_needed"], t["min_detectable"]) == ("", "", "")
            continue
        assert t["decision"] == r.decision and int(t["seeds_needed"]) == r.decided_at
        assert float(t["min_detectable"]) == pytest.approx(r.min_detectable, abs=1e-6)
        assert float(t["level"]) == pytest.approx(r.level, rel=1e-5)
    tex = (run.dir / "results.tex").read_text()
    assert "different (3)" in tex and "undecided at max (5)" in tex

    # the CLI prints the same table and trains nothing again (all stored)
    assert main(["evaluate", str(run.dir), *ARGV]) == 0
    out = capsys.readouterr().out
    assert count_trainings == []
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    assert "different" in lines["found #1"] and "undecided at max" in lines["tanh"]
    for label in ("found #1", "tanh"):
        r = rows[label]
        assert f"{100 * r.min_detectable:.2f}" in lines[label].split()
        assert str(r.decided_at) in lines[label].split()
    assert "min. diff" in out and format_table(list(rows.values())).splitlines()[0] in out
    # the report reads the same decisions back (the replay needs nothing but the rows)
    text = write_report(run.dir, k=1).read_text()
    final = text[text.index("## Final evaluation"):]
    assert "| found #1 | 10.00 ± 0.00 | 3 |" in final and "| relu |" in final
    assert f"| {100 * rows['relu'].mean:.2f} ± {100 * rows['relu'].std:.2f} | 5 |" in final


def test_an_interrupted_sequential_evaluation_redoes_only_the_missing_seeds(run, tmp_path,
                                                                            count_trainings):
    copy = tmp_path / "copy"
    shutil.copytree(run.dir, copy)
    before = {(r["label"], r["seed"]): r for r in _final_rows(copy)}
    before_csv = (copy / "results.csv").read_text()
    # killed in the last round: tanh's seed 4 and relu's seed 3 were in flight
    store = RunStore.open(copy)
    for key in (("tanh", 4), ("relu", 3)):
        store.start_final(before[key]["id"])
    store.close()
    rows = evaluate_run(copy, **SEQ)
    assert sorted(count_trainings) == [("relu(x)", 3), ("tanh(x)", 4)]
    after = {(r["label"], r["seed"]): r for r in _final_rows(copy)}
    assert set(after) == set(before)
    for key, r in before.items():
        if key in (("tanh", 4), ("relu", 3)):
            assert after[key]["accuracy"] == r["accuracy"]  # deterministic
        else:
            assert after[key] == r  # untouched
    assert (copy / "results.csv").read_text() == before_csv
    assert [r.decision for r in rows] == [run.rows[r.label].decision for r in rows]


def test_a_fixed_seed_evaluation_of_the_same_run_keeps_the_old_table(run, tmp_path,
                                                                     count_trainings):
    copy = tmp_path / "copy"
    shutil.copytree(run.dir, copy)
    rows = evaluate_run(copy, **{**SEQ, "max_seeds": None})
    assert count_trainings == []  # seeds 0-2 of everything are stored
    assert all(r.decision is None and r.n == 3 for r in rows)
    table = _csv(copy / "results.csv")
    assert list(table[0]) == ["label", "kind", "expression", "params", "n", "mean", "std",
                              "p_vs_relu", "best", "accuracies", "failed"]
    relu = [r for r in rows if r.label == "relu"][0].accuracies
    tanh = [r for r in rows if r.label == "tanh"][0]
    assert tanh.p_vs_ref == pytest.approx(welch_p(tanh.accuracies, relu))
    assert statistics.fmean(tanh.accuracies) == pytest.approx(tanh.mean)


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy, on the bad function's equal seeds
def test_another_reference_decides_every_comparison_against_it(run, tmp_path, capsys,
                                                             count_trainings):
    """``--reference tanh``: the same stored seeds, every p-value and decision against tanh."""
    from scipy.stats import ttest_ind

    copy = tmp_path / "copy"
    shutil.copytree(run.dir, copy)
    rows = {r.label: r for r in evaluate_run(copy, **SEQ, reference="tanh")}
    assert count_trainings == []  # relu and tanh have their 5 seeds, the bad function its 3
    tanh = rows["tanh"].accuracies
    assert rows["tanh"].p_vs_ref is None and rows["tanh"].decision is None
    assert rows["found #2"].p_vs_ref is None  # found #2 is tanh itself
    bad, relu = rows["found #1"], rows["relu"]
    assert (bad.decision, bad.decided_at) == ("different", 3)  # chance vs 0.89-0.92
    assert bad.p_vs_ref == pytest.approx(ttest_ind(bad.accuracies, tanh[:3],
                                                   equal_var=False).pvalue, rel=1e-6)
    # relu vs tanh is the comparison tanh vs relu was: undecided at 5 seeds, the same p
    assert (relu.decision, relu.decided_at) == ("undecided at max", 5)
    assert relu.p_vs_ref == pytest.approx(ttest_ind(relu.accuracies, tanh,
                                                    equal_var=False).pvalue, rel=1e-6)
    assert relu.p_vs_ref == pytest.approx(run.rows["tanh"].p_vs_ref, rel=1e-9)
    table = _csv(copy / "results.csv")
    assert "p_vs_tanh" in table[0] and "p_vs_relu" not in table[0]
    assert "p vs tanh" in format_table(list(rows.values())).splitlines()[0]
    assert r"$p$ vs.\ tanh" in (copy / "results.tex").read_text()
    # the report reads the reference back from the stored protocol
    final = write_report(copy, k=1).read_text()
    assert "| p vs tanh |" in final
    # a fixed-seed evaluation with the same reference: Welch against tanh's 3 seeds
    rows3 = {r.label: r for r in evaluate_run(copy, **{**SEQ, "max_seeds": None},
                                              reference="tanh")}
    assert rows3["relu"].p_vs_ref == pytest.approx(
        ttest_ind(rows3["relu"].accuracies, tanh[:3], equal_var=False).pvalue, rel=1e-6)
    assert count_trainings == []


def test_the_runs_evaluate_table_sets_the_design_and_the_reference(tmp_path):
    """``[evaluate]`` max_seeds, alpha and reference are the defaults of an evaluation."""
    with pytest.raises(UserError, match="reference 'swish2' is not a zoo activation"):
        SearchConfig.from_dict({"dataset": "digits", "evaluate": {"reference": "swish2"}})
    out = tmp_path / "run"
    _make_run(out, evaluate={"seeds": 3, "max_seeds": 4, "alpha": 0.1, "reference": "tanh"})
    rows = {r.label: r for r in evaluate_run(out, top=1, epochs=1, baselines=["relu"],
                                             executor="serial", progress=False)}
    assert list(rows) == ["found #1", "tanh", "relu"]  # the reference joins the baselines
    assert rows["tanh"].p_vs_ref is None and rows["relu"].reference == "tanh"
    assert rows["found #1"].level == pytest.approx(SequentialTest(0.1, 3, 4).boundaries[0])
    assert rows["found #1"].decision == "different" and rows["relu"].decided_at in (3, 4)
    # --max-seeds 0: a fixed number of seeds whatever [evaluate] says (here all stored)
    fixed = evaluate_run(out, top=1, epochs=1, baselines=["relu"], max_seeds=0,
                         executor="serial", progress=False)
    assert all(r.decision is None and r.n == 3 for r in fixed)
    for bad, words in (({"seeds": 4, "max_seeds": 3}, "must hold the minimum"),
                       ({"seeds": 1, "max_seeds": 3}, "seeds must be at least 2"),
                       ({"alpha": 0.1}, "set max_seeds too"),
                       ({"max_seeds": 9, "alpha": 1.5}, "0 < alpha < 1")):
        with pytest.raises(UserError, match=words):
            SearchConfig.from_dict({"dataset": "digits", "evaluate": bad})


@pytest.mark.parametrize("args, words", [
    (["--seeds", "3", "--max-seeds", "2"], "--max-seeds 2 cannot hold the minimum of --seeds 3"),
    (["--seeds", "1", "--max-seeds", "5"], "must be at least 2"),
    (["--seeds", "3", "--max-seeds", "5", "--alpha", "0"], "--alpha must be between 0 and 1"),
    (["--seeds", "3", "--max-seeds", "5", "--alpha", "1.5"], "--alpha must be between 0 and 1"),
    (["--seeds", "3", "--max-seeds", "5", "--alpha", "nan"], "--alpha must be between 0 and 1"),
    (["--seeds", "3", "--alpha", "0.01"], "give --max-seeds too"),
    (["--max-seeds", "five"], "invalid int value"),
    (["--reference", "swish2"], "--reference 'swish2' is not a zoo activation"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, count_trainings, args, words):
    out = tmp_path / "run"
    _make_run(out)
    rc = main(["evaluate", str(out), "--top", "1", "--epochs", "1", "--baselines", "relu",
               "--executor", "serial", "--no-progress", *args])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and err.startswith("gp-activations: error: "), err
    assert words in err
    assert count_trainings == [] and _final_rows(out) == []
    assert not list(out.glob("results*"))


def test_bad_input_from_the_api(tmp_path):
    out = tmp_path / "run"
    _make_run(out)
    with pytest.raises(UserError, match="cannot hold"):
        evaluate_run(out, top=1, seeds=4, max_seeds=3, progress=False)
    with pytest.raises(UserError, match="whole number"):
        evaluate_run(out, top=1, seeds=3, max_seeds=4.5, progress=False)
    assert _final_rows(out) == []


def _rec(seed, accuracy, status="done"):
    return SimpleNamespace(seed=seed, accuracy=accuracy, status=status)


def test_the_replay_makes_up_failed_seeds_within_the_budget():
    from gp_activations.evaluate import _decision_fields, _replay

    test = SequentialTest(0.05, 3, 5)
    relu = [_rec(s, 0.90 + 0.01 * (s % 3)) for s in range(5)]
    bad = [_rec(0, 0.1), _rec(1, None, "failed"), _rec(2, 0.1)]
    # seed 1 failed: the first look (3 values) needs seed 3, which is not trained yet
    state = _replay({"relu": relu, "bad": bad}, ["relu", "bad"], test)
    assert (state.targets, state.complete) == ({"relu": 3, "bad": 4}, False)
    state = _replay({"relu": relu, "bad": bad + [_rec(3, 0.1)]}, ["relu", "bad"], test)
    assert (state.targets, state.complete) == ({"relu": 3, "bad": 4}, True)
    fields = _decision_fields(test, [0.1, 0.1, 0.1], [0.90, 0.91, 0.92], True)
    assert (fields["decision"], fields["decided_at"]) == ("different", 3)
    # every seed failed: max_seeds trained, then nothing more to ask -- undecided at max
    dead = [_rec(s, None, "failed") for s in range(5)]
    state = _replay({"relu": relu, "dead": dead[:3]}, ["relu", "dead"], test)
    assert (state.targets["dead"], state.complete) == (5, False)
    state = _replay({"relu": relu, "dead": dead}, ["relu", "dead"], test)
    # (ReLU is not trained further for a comparison whose other arm has no values at all)
    assert state.targets == {"relu": 3, "dead": 5} and state.complete
    fields = _decision_fields(test, [], [r.accuracy for r in relu], True)
    assert fields["decision"] == "undecided at max" and fields["min_detectable"] is None
    # an unfinished evaluation (read by report mid-way) says so
    assert _decision_fields(test, [0.9, 0.91, 0.9], [0.9, 0.92, 0.91], False)["decision"] == \
        "more seeds"

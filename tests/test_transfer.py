"""`gp-activations transfer`: the top functions of several runs trained on every task, with
Welch's t-tests against ReLU and the best baseline.  Real (tiny) trainings on digits/MNIST-1D;
the runs' functions come from cheap fitness-function searches (their training is not the point)."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from gp_activations.search.store import RunStore
from gp_activations.cli import main
from gp_activations.evaluate import evaluate_run, welch_p
from gp_activations.search import SearchConfig, run_search
from gp_activations.search import executors as executors_mod
from gp_activations.search.store import TransferStore
from gp_activations.transfer import parse_tasks, run_transfer

from search_helpers import CHEAP, HELPERS

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = "digits/cnn_digits,mnist1d/mlp"
FAST = dict(seeds=2, epochs=0.3, baselines=["relu", "silu"], progress=False)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    runs = []
    for name, seed in (("alpha", 1), ("beta", 2)):
        cfg = SearchConfig(**{**CHEAP, "generations": 1, "fitness": f"{HELPERS}:score_fitness",
                              "dataset": "digits", "seed": seed,
                              "init_expressions": ["tanh(x)", "mul(x, sigmoid(x))"]})
        run_search(cfg, out=root / name, progress=False)
        runs.append(root / name)
    return runs


def _trainings(out):
    """The transfer's trainings, as the store's records, as dicts."""
    store = TransferStore(out)
    try:
        return [dict(dataclasses.asdict(r), status=str(r.status)) for r in store.trainings()]
    finally:
        store.close()


def test_every_function_on_every_task_with_welch_tests(two_runs, tmp_path, monkeypatch):
    calls = []
    real = executors_mod.evaluate_task
    monkeypatch.setattr(executors_mod, "evaluate_task", lambda t: calls.append(t) or real(t))
    out = tmp_path / "tr"
    table = run_transfer(two_runs, TASKS, out, top=2, into_runs=True, **FAST)
    assert table.tasks == ["digits/cnn_digits", "mnist1d/mlp"]
    labels = [f.label for f in table.functions]
    assert labels[:4] == ["alpha #1", "alpha #2", "beta #1", "beta #2"] and labels[4:] == ["relu", "silu"]
    rows = _trainings(out)
    distinct = {(f.expression, str(f.params)) for f in table.functions}
    # one training per distinct function, task and seed: a function two runs found trains once
    assert len(rows) == len(calls) == len(distinct) * 2 * 2
    assert all(r["status"] == "done" and 0 <= r["accuracy"] <= 1 for r in rows)
    assert {t["split"] for t in calls} == {"test"} and {t["train"]["epochs"] for t in calls} == {0.3}
    # each cell holds the stored accuracies of its function, task and seeds 0 and 1 -- looked
    # up here in the store's records -- and their mean, worked out by hand
    stored = {(r["expression"], r["params"], json.loads(r["protocol"])["dataset"],
               json.loads(r["protocol"])["model"], r["seed"]): r["accuracy"] for r in rows}
    for task in table.tasks:
        relu = table.cells[("relu", task)]
        dataset, model = task.split("/")
        for fn in table.functions:
            cell = table.cells[(fn.label, task)]
            known = [stored[(fn.expression, json.dumps(list(fn.params)), dataset, model, seed)]
                     for seed in (0, 1)]
            assert cell.accuracies == known
            assert cell.mean == pytest.approx((known[0] + known[1]) / 2, abs=1e-12)
            if fn.label != "relu":
                assert cell.p_vs_relu == welch_p(cell.accuracies, relu.accuracies)
        best = table.best_baseline[task]
        assert table.cells[(best, task)].mean == max(table.cells[(b, task)].mean for b in ("relu", "silu"))
    with open(out / "transfer.csv") as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == len(table.functions) * 2
    assert {r["best_baseline"] for r in written} <= {"relu", "silu"}
    md = (out / "transfer.md").read_text()
    assert "| function | found on | digits/cnn_digits | mnist1d/mlp |" in md
    assert f"gp-activations transfer {two_runs[0]} {two_runs[1]} --tasks {TASKS} --seeds 2 " \
           f"--top 2 --baselines relu,silu --epochs 0.3 --out {out}" in md

    # each run's report includes the transfer of its functions
    assert (two_runs[0] / "transfer.md").read_text() == md
    assert main(["report", str(two_runs[1])]) == 0
    report = (two_runs[1] / "report" / "report.md").read_text()
    assert "## Transfer (this run's functions and others' on every task)" in report
    assert "| function | found on | digits/cnn_digits | mnist1d/mlp |" in report

    # a rerun resumes: nothing is trained again, the same table comes back
    calls.clear()
    again = run_transfer(two_runs, TASKS, out, top=2, **FAST)
    assert calls == [] and again.cells == table.cells


def test_trainings_evaluate_already_did_are_copied(two_runs, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "alpha"
    shutil.copytree(two_runs[0], run)
    evaluate_run(run, top=1, seeds=2, epochs=0.3, baselines=["relu"], dataset="digits",
                 model="cnn_digits", executor="serial", progress=False)
    calls = []
    real = executors_mod.evaluate_task
    monkeypatch.setattr(executors_mod, "evaluate_task", lambda t: calls.append(t) or real(t))
    out = tmp_path / "tr"
    table = run_transfer([run], "digits", out, **FAST)
    copied = [r for r in _trainings(out) if r["source"]]
    assert len(copied) == 4  # found #1 and relu, 2 seeds: from the run's final table
    assert all(t["expression"] == "mul(x, sigmoid(x))" for t in calls)  # only silu trained
    store = RunStore.open(run, readonly=True)
    final = {(r.expression, r.seed): r.accuracy for r in store.final_trainings()}
    store.close()
    assert sorted(table.cells[("relu", "digits/cnn_digits")].accuracies) == \
        sorted(final[("relu(x)", s)] for s in range(2))


def test_parse_tasks():
    assert parse_tasks("mnist1d_hard, digits/cnn_digits") == [
        {"name": "mnist1d_hard/resnet1d", "dataset": "mnist1d_hard", "model": "resnet1d"},
        {"name": "digits/cnn_digits", "dataset": "digits", "model": "cnn_digits"}]


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "mnist2d/cnn1d"], "--tasks: 'mnist2d/cnn1d': unknown dataset 'mnist2d'; did you mean 'mnist1d'?"),
    (["--tasks", "mnist1d/resnet2d"], "unknown model 'resnet2d'"),
    (["--tasks", ","], "--tasks is empty"),
    (["--tasks", "digits,digits"], "digits/cnn_digits is listed twice"),
    (["--tasks", "mnist1d/resnet20"], "model 'resnet20' does not fit dataset 'mnist1d'"),
    (["--tasks", "digits", "--seeds", "1"], "--seeds >= 2"),
    (["--tasks", "digits", "--epochs", "nan"], "--epochs must be a positive, finite number"),
    (["--tasks", "digits", "--baselines", "relu,swishh"], "unknown baseline 'swishh'"),
])
def test_bad_input_is_one_line(two_runs, tmp_path, capsys, argv, message):
    out = tmp_path / "tr"
    code = main(["transfer", str(two_runs[0]), *argv, "--out", str(out), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (out / "transfer.sqlite").exists()


def test_a_directory_that_is_not_a_run(tmp_path, capsys):
    code = main(["transfer", str(tmp_path), "--tasks", "digits", "--out", str(tmp_path / "tr")])
    _, err = capsys.readouterr()
    assert code == 2 and "is not a search run" in err and err.count("\n") == 1

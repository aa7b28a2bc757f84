"""Multi-task fitness: one search, several (dataset, model) tasks, fitness = mean (or min) of
each task's accuracy divided by ReLU's there.  Real (tiny) trainings on digits and MNIST-1D."""

from __future__ import annotations

import json
import math

import pytest

from gp_activations.cli import main
from gp_activations.errors import UserError
from gp_activations.search import RunStore, SearchConfig, run_search
from gp_activations.search import executors as executors_mod
from gp_activations.search.jobs import JobKey
from gp_activations.search.driver import Search, aggregate_fitness

from search_helpers import CHEAP, rows, snapshot, stored

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = [{"dataset": "digits", "epochs": 1},
         {"dataset": "mnist1d", "model": "mlp", "epochs": 1, "weight": 2}]
SMALL = dict(CHEAP, population=3, generations=2, max_params=1, init_expressions=["tanh(x)"],
             tasks=TASKS, device="cpu")


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "run"
    result = run_search(SearchConfig(**SMALL), out=out, progress=False)
    return out, result


def _task_rows(run, cid):
    store = RunStore.open(run)
    try:
        return {t: stored(r) for t, r in store.task_runs(cid).items()}
    finally:
        store.close()


def test_every_candidate_trains_on_every_task_and_is_scored_relative_to_relu(multi_run):
    run, result = multi_run
    assert result.tasks == ["digits/cnn_digits", "mnist1d/mlp"]
    refs = _task_rows(run, 0)
    assert sorted(refs) == [0, 1] and all(r["status"] == "done" for r in refs.values())
    assert [r["name"] for r in refs.values()] == result.tasks
    relu_acc = [refs[0]["accuracy"], refs[1]["accuracy"]]
    assert 0.5 < relu_acc[0] <= 1 and 0.1 < relu_acc[1] <= 1
    done = rows(run, status="done", unique=True)
    assert len(done) >= 6
    for cand in done:
        metrics = json.loads(cand["metrics"])
        assert metrics["aggregate"] == "mean" and [t["task"] for t in metrics["tasks"]] == result.tasks
        if cand["expression"] == "relu(x)" and cand["params"] == "[]":
            assert cand["fitness"] == 1.0 and metrics["trained_as"] == "relu reference"
            assert _task_rows(run, cand["id"]) == {}  # not trained twice
            continue
        runs = _task_rows(run, cand["id"])
        assert sorted(runs) == [0, 1]
        accs = [runs[0]["accuracy"], runs[1]["accuracy"]]
        assert [t["accuracy"] for t in metrics["tasks"]] == accs
        # the oracle: weighted mean of acc / relu (weights 1 and 2)
        expected = (accs[0] / relu_acc[0] + 2 * accs[1] / relu_acc[1]) / 3
        assert cand["fitness"] == pytest.approx(expected, rel=1e-12)
        record = json.loads(runs[1]["metrics"])  # the full training record of that task
        assert record["dataset"] == "mnist1d" and record["model"] == "mlp"
        assert record["config"]["epochs"] == 1 and record["split"] == "val"
    assert "per task (validation accuracy; ReLU's below):" in result.task_table()
    assert f"{relu_acc[1]:.4f}" in result.task_table().splitlines()[-1]


def test_min_aggregate_and_its_oracle():
    per_task = [{"normalised": 1.2, "weight": 1.0}, {"normalised": 0.9, "weight": 3.0}]
    assert aggregate_fitness(per_task, "min") == 0.9
    assert aggregate_fitness(per_task, "mean") == pytest.approx((1.2 + 2.7) / 4)


def test_min_aggregate_search(tmp_path):
    tasks = [dict(t) for t in TASKS]
    tasks[1].pop("weight")
    cfg = SearchConfig(**{**SMALL, "tasks": tasks, "generations": 1, "population": 2},
                       task_aggregate="min")
    run_search(cfg, out=tmp_path / "run", progress=False)
    done = rows(tmp_path / "run", status="done")
    assert done
    for cand in done:
        metrics = json.loads(cand["metrics"])
        assert cand["fitness"] == min(t["normalised"] for t in metrics["tasks"])


def test_a_task_failure_fails_the_candidate_and_names_the_task(tmp_path):
    # e^(e^x) overflows at initialisation in both networks: the blow-up check ends it
    cfg = SearchConfig(**{**SMALL, "generations": 1, "population": 1,
                          "init_expressions": ["exp(exp(exp(x)))"]})
    run_search(cfg, out=tmp_path / "run", progress=False)
    (cand,) = rows(tmp_path / "run", lambda r: (r["expression"], r["params"]) == ("exp(exp(exp(x)))", "[]"))
    assert cand["status"] == "failed" and cand["fitness"] is None
    assert cand["error"].startswith(("digits/cnn_digits: diverged", "mnist1d/mlp: diverged"))
    assert any(r["status"] == "failed" for r in _task_rows(tmp_path / "run", cand["id"]).values())


def test_resume_redoes_only_the_unfinished_task_trainings(tmp_path, monkeypatch, multi_run):
    """Interrupted after 7 trainings (mid-generation 0), resumed: no finished training is run
    again and the run ends exactly as the uninterrupted one."""
    calls = []
    real = executors_mod.evaluate_task
    interrupt = [True]

    def counting(wire):
        key = JobKey.from_wire(wire["key"])
        calls.append((key.id, key.task))
        if len(calls) == 8 and interrupt[0]:
            interrupt[0] = False
            raise KeyboardInterrupt  # Ctrl-C while the 8th training runs
        return real(wire)

    monkeypatch.setattr(executors_mod, "evaluate_task", counting)
    run = tmp_path / "run"
    first = run_search(SearchConfig(**SMALL), out=run, progress=False)
    assert first.interrupted
    finished = {(r["candidate_id"], r["task"]) for r in rows_of(run)}
    assert len(finished) == 7 and set(calls[:7]) == finished
    calls.clear()
    result = run_search(out=run, resume=True, progress=False)
    assert not result.interrupted and result.counts["pending"] == result.counts["running"] == 0
    assert not finished & set(calls), "a finished training was run again"
    assert len(calls) == len(set(calls))
    straight, _ = multi_run
    assert snapshot(run) == snapshot(straight)
    assert [dict(r, started_at=None, finished_at=None) for r in rows_of(run)] == \
        [dict(r, started_at=None, finished_at=None) for r in rows_of(straight)]


def rows_of(run):
    store = RunStore.open(run)
    try:
        return [{k: stored(r)[k] for k in ("candidate_id", "task", "name", "status", "accuracy",
                                           "started_at", "finished_at")}
                for r in store.task_runs().values()]
    finally:
        store.close()


def test_evaluate_and_report_cover_every_task(multi_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(multi_run[0], run)
    assert main(["evaluate", str(run), "--top", "1", "--seeds", "2", "--epochs", "0.3",
                 "--baselines", "relu", "--executor", "serial", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "digits/cnn_digits (test accuracy):" in out and "mnist1d/mlp (test accuracy):" in out
    assert "results_digits_cnn_digits.csv" in out and "results_mnist1d_mlp.csv" in out
    assert (run / "results_digits_cnn_digits.csv").is_file()
    assert (run / "results_mnist1d_mlp.csv").is_file()
    with pytest.raises(UserError, match="searched 2 tasks .*evaluate_tasks"):
        from gp_activations.evaluate import evaluate_run

        evaluate_run(run)
    assert main(["report", str(run)]) == 0
    report = (run / "report" / "report.md").read_text()
    assert "**digits/cnn_digits** + **mnist1d/mlp**" in report
    assert "| rank | fitness | digits/cnn_digits | mnist1d/mlp | function | LaTeX |" in report
    assert "## Final evaluation on digits / cnn_digits (test set)" in report
    assert "## Final evaluation on mnist1d / mlp (test set)" in report
    assert "ReLU's validation accuracy per task (the normaliser)" in report


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the entry, exit 2, before any work
# ---------------------------------------------------------------------------------------------
BAD_TASKS = [
    ("tasks = []", "'tasks' is empty"),
    ('tasks = [{dataset = "mnist2d"}]', "tasks[0]: unknown dataset 'mnist2d'; did you mean 'mnist1d'?"),
    ('tasks = [{dataset = "mnist1d", model = "resnet1"}]', "tasks[0]: unknown model 'resnet1'"),
    ('tasks = [{dataset = "digits"}, {dataset = "mnist1d", model = "resnet20"}]',
     "tasks[1] (mnist1d/resnet20): model 'resnet20' does not fit dataset 'mnist1d'"),
    ('tasks = [{dataset = "digits", weight = 0}]', "tasks[0]: 'weight' must be a positive number, got 0"),
    ('tasks = [{dataset = "digits", weight = -1.5}]', "tasks[0]: 'weight' must be a positive number"),
    ('tasks = [{dataset = "digits", weight = "high"}]', "tasks[0]: 'weight' has the wrong type"),
    ('tasks = [{dataset = "digits", epochs = inf}]', "tasks[0]: 'epochs' must be a positive, finite"),
    ('tasks = [{dataset = "digits", modle = "mlp"}]', "tasks[0]: unknown key 'modle'; did you mean 'model'?"),
    ('tasks = [{model = "mlp"}]', "tasks[0] has no 'dataset'"),
    ('tasks = ["digits"]', "tasks[0] must be a table"),
    ('tasks = [{dataset = "digits"}, {dataset = "digits"}]', "tasks[1]: digits/cnn_digits is listed twice"),
    ('tasks = [{dataset = "digits", train = {lr = "fast"}}]', "tasks[0]"),
    ('tasks = [{dataset = "digits", train = {lrr = 0.1}}]', "unknown key 'lrr' in tasks[0].train"),
    ('model = "mlp"\ntasks = [{dataset = "digits"}]', "not a top-level 'model'"),
    ('dataset = "digits"\ntasks = [{dataset = "digits"}]', "'dataset' and 'tasks' are both given"),
    ('task_aggregate = "min"\ntasks = [{dataset = "digits", weight = 2}]', "weights apply to task_aggregate"),
    ('task_aggregate = "median"\ntasks = [{dataset = "digits"}]', "'task_aggregate' must be one of mean, min"),
]


@pytest.mark.parametrize("text, message", BAD_TASKS)
def test_bad_task_lists_are_one_line_before_any_work(text, message, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    code = main(["search", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_resume_needs_no_task_check_and_keeps_the_tasks(multi_run):
    run, _ = multi_run
    stored = SearchConfig.from_dict(RunStore.open(run).config(), where="stored")
    assert stored.tasks == TASKS and stored.dataset == "digits" and stored.multi_task
    assert [t["name"] for t in stored.task_list()] == ["digits/cnn_digits", "mnist1d/mlp"]
    assert stored.task_list()[1]["train"]["epochs"] == 1
    search = Search(SearchConfig(), run, resume=True, progress=False)
    assert search.run().counts["pending"] == 0
    assert not math.isnan(search.best)


def test_a_relu_reference_that_fails_stops_the_search_with_one_line_and_is_retried(tmp_path, capsys):
    # a blow-up limit no activation passes: ReLU itself "blows up" on the second task
    config = tmp_path / "refs.toml"
    config.write_text('population = 2\ngenerations = 1\ninit_zoo = false\nparam_variants = 0\n'
                      'device = "cpu"\ntasks = [{dataset = "digits", epochs = 1}, {dataset = '
                      '"mnist1d", model = "mlp", epochs = 1, train = {blowup_limit = 1e-6}}]\n')
    run = tmp_path / "run"
    code = main(["search", "--config", str(config), "--out", str(run), "--no-progress"])
    _, err = capsys.readouterr()
    # (after the start line) one line, no traceback
    assert code == 2 and err.startswith("search: ") and err.count("\n") == 2, err
    assert "Traceback" not in err and "ReLU, the reference of the multi-task fitness, failed on mnist1d/mlp: diverged: " \
           "activations blow up at initialisation" in err
    refs = _task_rows(run, 0)
    assert refs[1]["status"] == "failed" and refs[0]["status"] == "done"
    assert all(r["fitness"] is None for r in rows(run))  # nothing was scored against it
    code = main(["search", "--out", str(run), "--resume", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and "failed on mnist1d/mlp" in err  # retried (and failing again)
    assert _task_rows(run, 0)[1]["finished_at"] > refs[1]["finished_at"]


def test_python_api_takes_tasks_and_a_tasks_own_train_has_the_last_word():
    cfg = SearchConfig().replace(tasks=[{"dataset": "digits", "train": {"epochs": 3}},
                                        {"dataset": "mnist1d", "model": "mlp"}], epochs=0.5)
    assert cfg.dataset == "digits"
    first, second = cfg.task_list()
    assert first["train"]["epochs"] == 3 and second["train"]["epochs"] == 0.5
    assert second["train"]["preset"] == "mnist1d+mlp/fitness"


def test_relu_is_scored_from_the_references_in_any_space_with_the_builtin_relu(tmp_path):
    cfg = SearchConfig(**{**SMALL, "generations": 1, "population": 1, "primitives": "minimal",
                          "init_expressions": ["relu(x)"]})
    run_search(cfg, out=tmp_path / "run", progress=False)
    relu = [r for r in rows(tmp_path / "run") if r["expression"] == "relu(x)" and r["params"] == "[]"]
    assert relu and relu[0]["fitness"] == 1.0 and _task_rows(tmp_path / "run", relu[0]["id"]) == {}

"""After a search: ``Activation.from_run`` (the function ``export --rank`` picks), report.md's
header and ReLU line, fitness.png's marks for failed / at-chance candidates, and transfer
writing only its own ``--out`` unless ``--into-runs``.

Runs are lookup-table searches (the shipped tabular benchmark: real accuracies, no training)
and a fitness-function search; the transfer's trainings are replaced by a stub."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from gp_activations import Activation
from gp_activations.cli import main
from gp_activations.errors import UserError
from gp_activations.report import export_from_run, plot_fitness, write_report
from gp_activations.search import SearchConfig, run_search
from gp_activations.search.store import RunStore
from search_helpers import CHEAP, HELPERS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def halving_run(halving_lookup_run):
    return halving_lookup_run


@pytest.fixture(scope="module")
def variants_run(tmp_path_factory):
    """A fitness-function search with placements of learnable scalars (variants)."""
    out = tmp_path_factory.mktemp("after") / "variants"
    run_search(SearchConfig(**{**CHEAP, "param_variants": 2}, fitness=f"{HELPERS}:score_fitness"),
               out=out, progress=False)
    return out


# ---------------------------------------------------------------------------------------------
# Activation.from_run
# ---------------------------------------------------------------------------------------------
def test_from_run_is_the_stores_ranking_with_the_best_placement(variants_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(variants_run, run)
    # the second-best function's best variant made better than its plain form
    db = sqlite3.connect(str(run / "run.sqlite"))
    (fid, fitness), = db.execute(
        "SELECT function_id, MAX(fitness) FROM candidates WHERE status = 'done' AND id != "
        "function_id GROUP BY function_id ORDER BY MAX(fitness) DESC LIMIT 1").fetchall()
    db.execute("UPDATE candidates SET fitness = fitness + 0.5 WHERE function_id = ? AND id != "
               "function_id AND fitness = ?", (fid, fitness))
    db.commit()
    db.close()
    store = RunStore.open(run, readonly=True)
    ranked = store.top_functions()  # the oracle: the store's own ranking, best variant each
    store.close()
    assert ranked[0]["function_id"] == fid and ranked[0]["candidate"].params  # a placement
    for rank, item in enumerate(ranked[:3], 1):
        act = Activation.from_run(run, rank)
        cand = item["candidate"]
        assert (act.expression, act.params) == (cand.expression, tuple(cand.params))
        exported = json.loads(export_from_run(run, rank=rank, fmt="json"))
        assert (exported["expression"], exported["params"]) == (act.expression, list(act.params))
        assert exported["fitness"] == pytest.approx(item["fitness"])
    assert Activation.from_run(run) == Activation.from_run(run, 1)


def test_from_run_bad_input(variants_run, tmp_path):
    with pytest.raises(UserError, match="--rank must be >= 1"):
        Activation.from_run(variants_run, 0)
    with pytest.raises(UserError, match="does not exist"):
        Activation.from_run(variants_run, 10_000)
    with pytest.raises(UserError, match="not a search run"):
        Activation.from_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# report.md and fitness.png
# ---------------------------------------------------------------------------------------------
def test_report_names_the_method_and_gives_relus_fitness(halving_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(halving_run, run)
    text = write_report(run).read_text()
    store = RunStore.open(run, readonly=True)
    relu = [c for c in store.candidates(status="done") if c.expression == "relu(x)"
            and not c.params and c.duplicate_of is None]  # the oracle, read from the records
    store.close()
    assert len(relu) == 1
    header = text.splitlines()[2]
    assert header.startswith("Search: evolution, successive halving (2 rungs: 4, 12 epochs; "
                             "eta 3), forest surrogate; fitness looked up in")
    assert f"ReLU under the same budget: fitness {relu[0].fitness:.4f}." in text
    assert f"| — | {relu[0].fitness:.4f} | `relu(x)` (ReLU under the same budget) |" in text


def test_report_of_a_plain_run_says_full_fidelity_and_no_surrogate(variants_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(variants_run, run)
    header = write_report(run).read_text().splitlines()[2]
    assert header.startswith("Search: evolution, full fidelity, no surrogate; on")


def _legend(monkeypatch, store, path):
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    counts = plot_fitness(store, path)
    monkeypatch.undo()
    ax = figures[-1].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    crosses = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    plt.close(figures[-1])
    return counts, labels, crosses, ax


def test_fitness_plot_marks_failed_and_at_chance_candidates(halving_run, tmp_path, monkeypatch):
    run = tmp_path / "copy"
    shutil.copytree(halving_run, run)
    # one finished training made a run stopped at chance (as train() records it)
    db = sqlite3.connect(str(run / "run.sqlite"))
    cid, = db.execute("SELECT id FROM candidates WHERE status = 'done' AND expression != "
                      "'relu(x)' ORDER BY fitness LIMIT 1").fetchone()
    db.execute("UPDATE candidates SET error = 'accuracy 0.097 at chance level (0.100) after the "
               "first epoch' WHERE id = ?", (cid,))
    db.commit()
    db.close()
    store = RunStore.open(run, readonly=True)
    failed = len(store.candidates(status="failed", trained=True))  # the oracle
    counts, labels, crosses, ax = _legend(monkeypatch, store, tmp_path / "fitness.png")
    trained = len(store.trained_in_order())
    store.close()
    assert failed >= 1
    assert counts == {"failed": failed, "chance": 1}
    assert f"failed ({failed})" in labels and "at chance (1)" in labels
    assert crosses[f"failed ({failed})"] == failed and crosses["at chance (1)"] == 1
    assert crosses["candidate fitness"] == trained - failed - 1  # not also plotted as points
    assert (tmp_path / "fitness.png").stat().st_size > 0
    report = write_report(run).read_text()
    assert f"Crosses along the bottom: {failed} failed trainings (red) and 1 stopped" in report


# ---------------------------------------------------------------------------------------------
# transfer writes its own --out only, unless --into-runs
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def stub_trainings(monkeypatch):
    """Every transfer training 'succeeds' at once with an accuracy from its seed."""
    from gp_activations.search import executors
    from gp_activations.search.jobs import JobKey, JobResult, JobStatus

    def fake(wire):
        acc = 0.5 + 0.01 * wire["seed"] + 0.001 * len(wire["expression"])
        return JobResult(JobKey.from_wire(wire["key"]), JobStatus.DONE, acc,
                         {"accuracy": acc}).to_wire()

    monkeypatch.setattr(executors, "evaluate_task", fake)


@pytest.mark.parametrize("into_runs", [False, True])
def test_transfer_writes_into_runs_only_when_asked(variants_run, tmp_path, stub_trainings,
                                                   into_runs, capsys):
    run = tmp_path / "alpha"
    shutil.copytree(variants_run, run)
    def written():  # what is in the run, less sqlite's own -wal/-shm files of any reader
        return sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")
                      if not p.name.startswith("run.sqlite-"))

    before = written()
    out = tmp_path / "transfer"
    argv = ["transfer", str(run), "--tasks", "digits/cnn_digits", "--seeds", "2", "--epochs",
            "0.1", "--baselines", "relu", "--out", str(out), "--no-progress"]
    assert main(argv + (["--into-runs"] if into_runs else [])) == 0
    capsys.readouterr()
    assert (out / "transfer.md").is_file() and (out / "transfer.csv").is_file()
    if into_runs:
        assert (run / "transfer.md").read_text() == (out / "transfer.md").read_text()
        assert "--into-runs" in (out / "transfer.md").read_text()
        assert main(["report", str(run)]) == 0
        assert "## Transfer (" in (run / "report" / "report.md").read_text()
    else:
        assert written() == before  # the run is not written

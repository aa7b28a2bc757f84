"""Watching a long search: progress lines without a terminal (first line early, an ETA), the
search monitor's TensorBoard event files (read back and checked against the store), and
``gp-activations status RUN`` (checked against the store, also next to a running search).

The runs are cheap: a fitness-function search (no training) and a lookup-table search (the
shipped tabular benchmark: real accuracies, read in microseconds)."""

from __future__ import annotations

import io
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import pytest

from gp_activations.cli import main
from gp_activations.errors import UserError
from gp_activations.progress import LineProgress
from gp_activations.search import SearchConfig, run_search
from gp_activations.search.monitor import make_monitor, status_text
from gp_activations.search.store import RunStore
from search_helpers import CHEAP, HELPERS, LOOKUP


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """Two generations scored by a function of the activation (no training)."""
    out = tmp_path_factory.mktemp("watch") / "run"
    run_search(SearchConfig(**CHEAP, fitness=f"{HELPERS}:score_fitness"), out=out, progress=False)
    return out


@pytest.fixture
def lookup_run(halving_lookup_run):
    return halving_lookup_run


def _sql(run, query, *args):
    db = sqlite3.connect(Path(run, "run.sqlite").resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


def _replay(run, stream=None, tensorboard=None, total=None):
    """Drive a monitor through a finished run's events, as the driver does while it runs."""
    store = RunStore.open(run, readonly=True)
    monitor = make_monitor(run, store, tensorboard_dir=tensorboard, stream=stream, total=total)
    try:
        for gen in store.generation_rows():
            rows = store.candidates(generation=gen.generation, unique=True, trained=True)
            monitor.generation_created(gen.generation, len(rows), len(rows))
            for row in rows:
                monitor.candidate_scored(row, None)
            monitor.generation_finished(gen.generation, {}, [], None)
    finally:
        monitor.close()
        store.close()


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


# ---------------------------------------------------------------------------------------------
# progress lines
# ---------------------------------------------------------------------------------------------
def test_progress_lines_come_early_are_throttled_and_carry_an_eta():
    out = io.StringIO()
    bar = LineProgress(total=100, desc="demo", unit="eval", file=out, first_after=None,
                       interval=60, step=10, min_gap=0)
    bar.update(1)  # the first result: a line at once
    assert out.getvalue().count("\n") == 1
    for _ in range(8):
        bar.update(1)  # 9 %: not another 10 % yet, not 60 s
    assert out.getvalue().count("\n") == 1
    bar.update(2)  # 11 %: 10 points since the first line
    bar.set_postfix(best="0.9")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("demo: 1/100 evals (1 %), ") and ", ETA " in lines[0]
    assert lines[1].startswith("demo: 11/100 evals (11 %)") and ", ETA " in lines[1]
    assert "best=0.9" in lines[2] and "ETA" not in lines[2]  # the end: no estimate


def test_progress_prints_a_first_line_within_seconds_when_no_result_comes():
    out = io.StringIO()
    bar = LineProgress(total=10, desc="slow", file=out, first_after=0.2)
    time.sleep(0.6)
    assert out.getvalue().splitlines() == ["slow: 0/10 its (0 %), 0 s"]  # no rate: no ETA
    bar.update(1)  # 10 % further, but within min_gap (5 s) of that line: no line
    bar.close()  # the end
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("slow: 1/10 its (10 %)")


class _StampedStream(io.StringIO):
    """A redirected stderr (not a terminal) that notes when each line was written."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def write(self, text):
        self.lines += [(time.time(), line) for line in text.splitlines() if line]
        return super().write(text)


def test_a_search_with_redirected_stderr_prints_plain_lines_early(tmp_path, monkeypatch):
    """Measured: the first progress line follows the first result at once (fitness by a
    function, each call sleeping 0.3 s), not after the 30 s between later lines."""
    monkeypatch.setenv("GPA_TEST_SLEEP", "0.3")
    err = _StampedStream()
    monkeypatch.setattr(sys, "stderr", err)
    run_search(SearchConfig(**{**CHEAP, "generations": 1}, fitness=f"{HELPERS}:score_fitness"),
               out=tmp_path / "run", progress=True)
    monkeypatch.undo()
    progress = [(t, line) for t, line in err.lines if line.startswith("search: ")]
    assert len(progress) >= 2 and "\r" not in err.getvalue()
    assert ", ETA " in progress[0][1]  # 1 of 4 done: a rate to go by
    store = RunStore.open(tmp_path / "run", readonly=True)
    first_result = min(c.finished_at for c in store.candidates(trained=True))
    store.close()
    assert 0 <= progress[0][0] - first_result < 1.0


# ---------------------------------------------------------------------------------------------
# the monitor: progress and TensorBoard
# ---------------------------------------------------------------------------------------------
def test_monitor_progress_counts_every_result_and_shows_the_best(scored_run):
    out = io.StringIO()
    finished = _sql(scored_run, "SELECT COUNT(*) FROM candidates WHERE started_at IS NOT NULL "
                    "AND duplicate_of IS NULL AND status IN ('done', 'failed')")[0][0]
    _replay(scored_run, stream=out, total=lambda: 2 * finished)
    lines = out.getvalue().splitlines()
    best = _sql(scored_run, "SELECT MAX(fitness) FROM candidates WHERE status = 'done'")[0][0]
    assert lines[-1].startswith(f"search: {2 * finished}/{2 * finished} evals (100 %), "
                                f"best={best:.4f}, gen=1")
    assert "\r" not in out.getvalue()


def test_tensorboard_scalars_match_the_store(scored_run, tmp_path):
    pytest.importorskip("tensorboard")
    _replay(scored_run, tensorboard=tmp_path / "tb")
    acc = _events(tmp_path / "tb")
    gens = [g for (g,) in _sql(scored_run, "SELECT generation FROM generations ORDER BY 1")]
    assert len(gens) == 2
    best = {s.step: s.value for s in acc.Scalars("fitness/best")}
    median = {s.step: s.value for s in acc.Scalars("fitness/median")}
    for g in gens:  # the oracle: the store's records, by SQL
        values = [f for (f,) in _sql(scored_run, "SELECT fitness FROM candidates WHERE generation "
                                     "= ? AND status = 'done' AND duplicate_of IS NULL AND "
                                     "fitness IS NOT NULL", g)]
        assert best[g] == pytest.approx(max(values), abs=1e-6)
        assert median[g] == pytest.approx(statistics.median(values), abs=1e-6)
    so_far = [s.value for s in acc.Scalars("fitness/best_so_far")]
    assert so_far[-1] == pytest.approx(max(best.values()), abs=1e-6)
    done = _sql(scored_run, "SELECT COUNT(*) FROM candidates WHERE status = 'done'")[0][0]
    assert acc.Scalars("candidates/done")[-1].value == done
    trained = _sql(scored_run, "SELECT COUNT(*) FROM candidates WHERE started_at IS NOT NULL "
                   "AND duplicate_of IS NULL AND status IN ('done', 'failed')")[0][0]
    assert len(acc.Scalars("candidate/fitness")) == trained
    assert [e.step for e in acc.Images("top_functions")] == gens  # the shapes, per generation
    tags = acc.Tags()["tensors"]
    assert "top_functions/text_summary" in tags and "failures/text_summary" in tags


def test_tensorboard_failures_by_reason_match_the_store(lookup_run, tmp_path):
    pytest.importorskip("tensorboard")
    _replay(lookup_run, tensorboard=tmp_path / "tb")
    acc = _events(tmp_path / "tb")
    text = acc.Tensors("failures/text_summary")[-1].tensor_proto.string_val[0].decode()
    store = RunStore.open(lookup_run, readonly=True)
    reasons = store.failure_reasons()
    failed = store.status_counts()["failed"]
    store.close()
    assert reasons and all(f"| {n} | {reason} |" in text for reason, n in reasons)
    assert acc.Scalars("candidates/failed")[-1].value == failed


def test_tensorboard_dir_problems_are_one_line_errors(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["search", "--dataset", "digits", "--budget", "2", "--out", str(tmp_path / "run")]
    assert main(argv + ["--tensorboard", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tensorboard" in err and "is a file" in err
    assert not (tmp_path / "run").exists()  # checked before anything is created
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert main(argv + ["--tensorboard", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install tensorboard" in err
    with pytest.raises(UserError, match="pip install tensorboard"):
        make_monitor(tmp_path, _FakeStore(), tensorboard_dir=tmp_path / "tb", stream=None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_tensorboard_dir_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["search", "--dataset", "digits", "--budget", "2", "--out",
                     str(tmp_path / "run"), "--tensorboard", str(ro / "tb")]) == 2
    finally:
        ro.chmod(0o700)
    assert capsys.readouterr().err.strip().count("\n") == 0


class _FakeStore:
    """Never reached: make_monitor checks TensorBoard before it reads the store."""


def test_search_tensorboard_flag_writes_events_checked_against_the_store(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run, tb = tmp_path / "run", tmp_path / "tb"
    assert main(["search", "--lookup", LOOKUP["lookup"], "--dataset", "mnist1d", "--model",
                 "cnn1d", "--primitives", LOOKUP["primitives"], "--param-variants", "0",
                 "--population", "6", "--generations", "2", "--epochs", "12", "--out", str(run),
                 "--tensorboard", str(tb)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and ", ETA " in err or "evals (100 %)" in err
    acc = _events(tb)
    best = {s.step: s.value for s in acc.Scalars("fitness/best")}
    for g, in _sql(run, "SELECT generation FROM generations"):
        oracle = _sql(run, "SELECT MAX(fitness) FROM candidates WHERE generation = ? AND "
                      "status = 'done' AND duplicate_of IS NULL", g)[0][0]
        assert best[g] == pytest.approx(oracle, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# gp-activations status
# ---------------------------------------------------------------------------------------------
def test_status_reports_progress_best_and_failures_from_the_store(lookup_run, capsys):
    assert main(["status", str(lookup_run)]) == 0
    out = capsys.readouterr().out
    store = RunStore.open(lookup_run, readonly=True)
    counts = store.status_counts()
    top = store.top_functions(3)
    reasons = store.failure_reasons()
    relu = store.relu_fitness()
    finished = store.count_finished()
    store.close()
    assert "evolution, successive halving (2 rungs: 4, 12 epochs; eta 3), forest surrogate" in out
    assert "search: not running" in out
    assert "generation: 1 of 2 (finished" in out
    assert (f"candidates: {counts['done']} done, 0 pending (0 running), {counts['failed']} "
            f"failed, {counts['rejected']} rejected before training") in out
    assert f"{finished} finished" in out
    lines = out.splitlines()
    ranked = [line.split() for line in lines if line.startswith("  ") and line.split()[0] in "123"
              and len(line.split()) >= 3 and line.split()[1].count(".") == 1]
    assert [(int(r[0]), float(r[1]), r[2]) for r in ranked] == [
        (i, round(t["fitness"], 4), t["candidate"].expression) for i, t in enumerate(top, 1)]
    assert f"ReLU under the same budget: {relu:.4f}" in out
    for reason, n in reasons:
        assert f"{n:4d} x {reason}" in out
    assert "\r" not in out


def test_status_bad_input_is_one_line(tmp_path, capsys):
    for run in (tmp_path, tmp_path / "missing"):
        assert main(["status", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("gp-activations: error: status: ")
    assert main(["status", str(tmp_path), "--top", "0"]) == 2


def test_status_is_safe_next_to_a_running_search(tmp_path, monkeypatch):
    """A slowed-down search (in a thread: it holds the run's lock like a process would);
    status reads it mid-way, read-only, and the search finishes as an undisturbed one."""
    import threading

    run = tmp_path / "run"
    monkeypatch.setenv("GPA_TEST_SLEEP", "0.1")
    cfg = SearchConfig(**CHEAP, fitness=f"{HELPERS}:score_fitness", seed=3)
    outcome = {}
    search = threading.Thread(target=lambda: outcome.update(
        result=run_search(cfg, out=run, progress=False)))
    search.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not outcome:
            try:  # the file may exist a moment before its tables do
                if (run / "run.sqlite").is_file() and _sql(
                        run, "SELECT COUNT(*) FROM candidates WHERE status = 'done'")[0][0] >= 2:
                    break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        text = status_text(run)
        assert f"search: running (pid {os.getpid()})" in text
        assert "best so far (top" in text
    finally:
        search.join(120)
    assert outcome["result"].counts["done"] == 16
    monkeypatch.delenv("GPA_TEST_SLEEP")
    undisturbed = run_search(cfg, out=tmp_path / "again", progress=False)
    assert undisturbed.top == outcome["result"].top
    assert "search: not running" in status_text(run)

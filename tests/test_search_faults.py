"""The search under faults and across executors: resume after ``kill -9``, worker crashes,
timeouts, a user operator raising in training, and serial = process = Ray.

Fitness functions that spawned workers must import live in ``search_helpers.py`` and are
passed by path (``f"{HELPERS}:function"``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gp_activations.search.store import RunStore
from gp_activations.search import SearchConfig, run_search

from search_helpers import CHEAP, FAULTY_PRIMITIVES, HELPERS, KILL_RUN, by_expression, rows, snapshot

#: Real (tiny) trainings, on the CPU even where there is a GPU: executors must agree exactly.
REAL = dict(dataset="digits", epochs=1, population=3, generations=2, param_variants=1,
            init_zoo=False, threads=1, workers=2, device="cpu")


def read_calls(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def call_key(call) -> tuple:
    return call["expression"], tuple(call["params"])


def row_key(row) -> tuple:
    return row["expression"], tuple(json.loads(row["params"]))


def _progress(db_path: Path):
    """(finished generations, done candidates of generation 1) of a live run, or None."""
    if not db_path.exists():
        return None
    try:
        store = RunStore.open(db_path.parent, readonly=True)
        try:
            done_gens = sum(g.state == "done" for g in store.generation_rows())
            return done_gens, len(store.candidates(generation=1, status="done"))
        finally:
            store.close()
    except Exception:  # noqa: BLE001 -- tables not created yet
        return None


# ---------------------------------------------------------------------------------------------
# 5. Resume after SIGKILL
# ---------------------------------------------------------------------------------------------
def test_resume_after_kill_9_redoes_nothing_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    calls_log = tmp_path / "calls.jsonl"
    run = tmp_path / "killed"
    env = {**os.environ, "GPA_TEST_LOG": str(calls_log), "GPA_TEST_SLEEP": "0.2"}
    with open(tmp_path / "child.log", "w") as out:
        proc = subprocess.Popen([sys.executable, HELPERS, str(run)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while True:
                assert proc.poll() is None, ("the search ended before it was killed:\n"
                                             + (tmp_path / "child.log").read_text())
                state = _progress(run / "run.sqlite")
                if state and state[0] >= 1 and state[1] >= 1:  # mid-way through generation 1
                    break
                assert time.time() < deadline, "the search made no progress"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    at_kill = rows(run)
    done_at_kill = {row_key(r) for r in at_kill if r["status"] == "done" and r["duplicate_of"] is None}
    in_flight = {row_key(r) for r in at_kill if r["status"] == "running"}
    assert done_at_kill, "killed before anything was done: the test would check nothing"
    assert len(in_flight) <= 1  # serial: one evaluation at a time
    assert any(r["status"] in ("pending", "running") for r in at_kill), "killed after the work was done"
    assert {r["generation"] for r in at_kill} == {0, 1}
    killed_calls = read_calls(calls_log)
    assert {call_key(c) for c in killed_calls} <= done_at_kill | in_flight

    # resume here: same stored fitness reference, no sleeping
    monkeypatch.setenv("GPA_TEST_LOG", str(calls_log))
    monkeypatch.setenv("GPA_TEST_SLEEP", "0")
    result = run_search(out=run, resume=True, progress=False)
    assert result.counts["pending"] == result.counts["running"] == 0
    assert not result.interrupted

    calls = Counter(call_key(c) for c in read_calls(calls_log))
    assert len({c["pid"] for c in read_calls(calls_log)}) == 2  # both processes evaluated
    for key in done_at_kill:
        assert calls[key] == 1, f"{key} was done before the kill and was evaluated again"
    for key, n in calls.items():
        assert n == 1 or (n == 2 and key in in_flight), (key, n)
    final = rows(run)
    trained = [row_key(r) for r in final if r["status"] == "done" and r["duplicate_of"] is None]
    assert set(calls) == set(trained) and len(trained) == len(set(trained))
    killed_keys = {call_key(c) for c in killed_calls}
    assert sum(calls.values()) == len(trained) + len(in_flight & killed_keys)
    assert "interrupted evaluations will be redone" in (run / "search.log").read_text() or not in_flight

    monkeypatch.delenv("GPA_TEST_LOG")
    run_search(SearchConfig(**KILL_RUN), out=tmp_path / "straight", progress=False)
    assert snapshot(run) == snapshot(tmp_path / "straight")
    assert [g[:2] for g in snapshot(run)["generations"]] == [(0, "done"), (1, "done"), (2, "done")]


# ---------------------------------------------------------------------------------------------
# 6. Executors agree exactly
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    run_search(SearchConfig(**REAL, executor="serial"), out=out, progress=False)
    return out


def assert_same_run(run, reference):
    ours, theirs = snapshot(run), snapshot(reference)
    table = [(c[0], c[2], c[4], c[7], c[8]) for c in ours["candidates"]]  # id, expr, params, status, fitness
    assert table == [(c[0], c[2], c[4], c[7], c[8]) for c in theirs["candidates"]]
    assert ours == theirs
    assert all(c[7] == "done" for c in ours["candidates"])
    assert len(ours["candidates"]) >= 8


def test_process_executor_matches_serial(tmp_path, serial_run):
    run = tmp_path / "run"
    result = run_search(SearchConfig(**REAL, executor="process"), out=run, progress=False)
    assert_same_run(run, serial_run)
    assert {json.loads(r["metrics"])["device"] for r in rows(run)} == {"cpu"}
    assert "executor: process with 2 worker(s), 1 thread(s) each" in (run / "search.log").read_text()
    assert result.counts["done"] == len(rows(run))


@pytest.mark.xdist_group("ray")  # one local Ray cluster at a time on a 2-core machine
def test_ray_executor_matches_serial(tmp_path, serial_run):
    ray = pytest.importorskip("ray")
    run = tmp_path / "run"
    try:
        run_search(SearchConfig(**REAL, executor="ray"), out=run, progress=False)
        assert not ray.is_initialized()  # the search started Ray, so it shut it down
        temp = (run / "ray").resolve()
        assert temp.is_dir() and len(str(temp)) <= 60  # short enough for Ray's Unix sockets
        assert any(p.name.startswith("session") for p in temp.iterdir())
        assert_same_run(run, serial_run)
    finally:
        link = run / "ray"
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 8. Faults: a worker dies, a task hangs, a user operator raises in training
# ---------------------------------------------------------------------------------------------
def test_worker_crash_and_timeout_fail_one_candidate_each(tmp_path, monkeypatch):
    prims = tmp_path / "faulty_ops.py"
    prims.write_text(FAULTY_PRIMITIVES)
    calls_log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("GPA_TEST_LOG", str(calls_log))
    run = tmp_path / "run"
    started = time.time()
    result = run_search(SearchConfig(**{**CHEAP, "param_variants": 0},
                                     fitness=f"{HELPERS}:faulty_fitness", primitives=str(prims),
                                     init_expressions=["tanh(x)", "sigmoid(x)"],
                                     executor="process", workers=2, task_timeout=2.0),
                        out=run, progress=False)
    elapsed = time.time() - started
    crashed = by_expression(run, "tanh(x)")
    assert crashed["status"] == "failed" and crashed["error"] == "worker process died (exit code 3)"
    hung = by_expression(run, "sigmoid(x)")
    assert hung["status"] == "failed" and hung["error"] == "timed out after 2 s"
    for row in (crashed, hung):
        assert row["fitness"] is None and row["metrics"] is None and row["finished_at"] >= row["started_at"]
    assert by_expression(run, "relu(x)")["status"] == "done"
    # the search went on: generation 1 was created, evaluated and ranked
    gen1 = rows(run, lambda r: r["status"] != "rejected", generation=1, unique=True)
    assert gen1 and all(r["status"] in ("done", "failed") for r in gen1)
    assert any(r["status"] == "done" for r in gen1)
    assert result.counts["pending"] == result.counts["running"] == 0
    assert [g[:2] for g in snapshot(run)["generations"]] == [(0, "done"), (1, "done")]
    calls = Counter(call_key(c) for c in read_calls(calls_log))
    assert calls[("tanh(x)", ())] == 1 and calls[("sigmoid(x)", ())] == 1  # never retried
    log = (run / "search.log").read_text()
    assert "died (exit code 3)" in log and "timed out after 2 s" in log
    assert elapsed < 60


def test_user_operator_raising_in_training_fails_that_candidate(tmp_path):
    prims = tmp_path / "faulty_ops.py"
    prims.write_text(FAULTY_PRIMITIVES)
    run = tmp_path / "run"
    result = run_search(SearchConfig(dataset="digits", epochs=1, population=1, generations=1,
                                     param_variants=0, init_zoo=False,
                                     threads=1, device="cpu", primitives=str(prims),
                                     init_expressions=["flat(x)"]),
                        out=run, progress=False)
    flat = by_expression(run, "flat(x)")
    assert flat["status"] == "failed" and flat["fitness"] is None
    assert flat["error"].startswith("failed: RuntimeError: flat cannot handle batched input")
    assert flat["started_at"] is not None  # it was screened fine and sent to training
    assert json.loads(flat["metrics"])["status"] == "failed"
    relu = by_expression(run, "relu(x)")
    assert relu["status"] == "done" and 0.5 < relu["fitness"] <= 1.0
    assert result.counts["failed"] == 1 and result.counts["done"] == 1
    assert [t["expression"] for t in result.top] == ["relu(x)"]

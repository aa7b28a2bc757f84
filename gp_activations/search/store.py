"""The run directory's SQLite database: every candidate, the config, the populations.

One file, ``RUN/run.sqlite``, in WAL mode; the search driver is its only writer and commits
every result the moment it arrives, so a crash or ``kill -9`` loses nothing that finished.
Everything is stored as SQL values and JSON text -- nothing is pickled.

Tables:
``meta``        key/value JSON: the run's config, format version, counters.
``candidates``  one row per candidate (a function with one placement of learnable scalars):
                ``id, function_id, expression, primitives, params, dedup_key, function_key,
                status (pending|running|done|failed|rejected), fitness, generation, parent_ids,
                mutation, origin, duplicate_of, error, created_at, started_at, finished_at,
                metrics`` (JSON: the training record).
``generations`` one row per generation: ``state`` (created|done) and the evolution RNG state
                (JSON) saved after the generation's candidates were created.
``population``  which functions (by ``function_id``) survived each generation, ranked.
``task_runs``   a multi-task search's trainings, one row per (candidate, task) as it finishes;
                ReLU's reference trainings are ``candidate_id = 0``.
``final``       final evaluation results (``gp-activations evaluate``): one row per training.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Optional

from ..errors import UserError

DB_NAME = "run.sqlite"
FORMAT_VERSION = 1
STATUSES = ("pending", "running", "done", "failed", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    function_id INTEGER,
    expression TEXT NOT NULL,
    primitives TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    dedup_key TEXT,
    function_key TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed','rejected')),
    fitness REAL,
    generation INTEGER NOT NULL,
    parent_ids TEXT NOT NULL DEFAULT '[]',
    mutation TEXT,
    origin TEXT,
    duplicate_of INTEGER REFERENCES candidates(id),
    error TEXT,
    created_at REAL,
    started_at REAL,
    finished_at REAL,
    metrics TEXT
);
CREATE INDEX IF NOT EXISTS candidates_dedup ON candidates(dedup_key);
CREATE INDEX IF NOT EXISTS candidates_function ON candidates(function_id);
CREATE INDEX IF NOT EXISTS candidates_status ON candidates(status);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('created','done')),
    rng_state TEXT,
    created_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS population (
    generation INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    function_id INTEGER NOT NULL REFERENCES candidates(id),
    fitness REAL,
    PRIMARY KEY (generation, rank)
);
CREATE TABLE IF NOT EXISTS task_runs (
    candidate_id INTEGER NOT NULL,
    task INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done','failed')),
    accuracy REAL,
    error TEXT,
    metrics TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (candidate_id, task)
);
CREATE TABLE IF NOT EXISTS final (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    expression TEXT NOT NULL,
    primitives TEXT NOT NULL,
    params TEXT NOT NULL,
    candidate_id INTEGER,
    seed INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    status TEXT NOT NULL,
    accuracy REAL,
    metrics TEXT,
    finished_at REAL,
    UNIQUE (label, seed, protocol)
);
"""


def is_run_dir(path) -> bool:
    return (Path(path) / DB_NAME).is_file()


class RunStore:
    """Access to one run's database.  Use :meth:`create` or :meth:`open`."""

    def __init__(self, run_dir: Path, connection: sqlite3.Connection):
        self.run_dir = Path(run_dir)
        self.db = connection
        self.db.row_factory = sqlite3.Row

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir, config: dict) -> "RunStore":
        run_dir = Path(run_dir)
        if is_run_dir(run_dir):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume or "
                            f"choose another --out")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write to run directory {run_dir}: "
                            f"{exc.strerror or exc}") from None
        store = cls(run_dir, cls._connect(run_dir / DB_NAME))
        with store.db:
            store.db.executescript(_SCHEMA)
            store._set_meta("format_version", FORMAT_VERSION)
            store._set_meta("config", config)
            store._set_meta("created_at", time.time())
        return store

    @classmethod
    def open(cls, run_dir) -> "RunStore":
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a directory (expected a search run made with "
                            f"gp-activations search --out {run_dir})")
        if not is_run_dir(run_dir):
            raise UserError(f"{run_dir} is not a search run: {DB_NAME} is missing")
        try:
            store = cls(run_dir, cls._connect(run_dir / DB_NAME))
            version = store.get_meta("format_version")
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{run_dir / DB_NAME} is not a readable run database: {exc}") from None
        if version != FORMAT_VERSION:
            raise UserError(f"{run_dir} has run format {version}, this version reads {FORMAT_VERSION}")
        with store.db:
            store.db.executescript(_SCHEMA)  # tables added by later versions
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        self.unlock()
        self.db.close()

    # -- one search at a time ------------------------------------------------------------------
    def lock(self) -> None:
        """Claim the run for this process (a search or resume); a second one gets a UserError.

        An advisory ``flock`` on ``RUN/lock``: the kernel drops it when the process dies, so a
        killed search never leaves a stale lock behind."""
        import fcntl
        import os

        path = self.run_dir / "lock"
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise UserError(f"{self.run_dir} is in use by another search (pid {owner}); wait for "
                            f"it to finish or stop it, then --resume") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh

    def unlock(self) -> None:
        fh = getattr(self, "_lock", None)
        if fh is not None:
            fh.close()  # closing the file releases the flock
            self._lock = None

    # -- meta --------------------------------------------------------------------------------
    def _set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                        "UPDATE SET value = excluded.value", (key, json.dumps(value)))

    def set_meta(self, key: str, value) -> None:
        """Store a JSON value: committed now, or with the caller's open transaction."""
        if self.db.in_transaction:
            self._set_meta(key, value)
        else:
            with self.db:
                self._set_meta(key, value)

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def config(self) -> dict:
        return self.get_meta("config", {})

    # -- candidates ----------------------------------------------------------------------------
    _FIELDS = ("function_id", "expression", "primitives", "params", "dedup_key", "function_key",
               "status", "fitness", "generation", "parent_ids", "mutation", "origin",
               "duplicate_of", "error", "created_at", "started_at", "finished_at", "metrics")

    def add_candidate(self, **fields) -> int:
        """Insert a candidate (inside the caller's transaction, if any); returns its id."""
        fields.setdefault("created_at", time.time())
        for key in ("params", "parent_ids"):
            if not isinstance(fields.get(key, "[]"), str):
                fields[key] = json.dumps(list(fields[key]))
        if isinstance(fields.get("metrics"), dict):
            fields["metrics"] = json.dumps(fields["metrics"])
        unknown = set(fields) - set(self._FIELDS)
        if unknown:  # pragma: no cover - programming error
            raise KeyError(f"unknown candidate fields {unknown}")
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        cur = self.db.execute(f"INSERT INTO candidates ({cols}) VALUES ({marks})", tuple(fields.values()))
        return cur.lastrowid

    def update_candidate(self, cid: int, **fields) -> None:
        if isinstance(fields.get("metrics"), dict):
            fields["metrics"] = json.dumps(fields["metrics"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE candidates SET {sets} WHERE id = ?", (*fields.values(), cid))

    def mark_running(self, cid: int) -> None:
        with self.db:
            self.update_candidate(cid, status="running", started_at=time.time())

    def record_result(self, cid: int, status: str, fitness, metrics: Optional[dict], error: str,
                      started_at=None, finished_at=None) -> None:
        """Store a finished evaluation and copy it onto the duplicates waiting for it (one commit)."""
        with self.db:
            self.update_candidate(cid, status=status, fitness=fitness, metrics=metrics,
                                  error=error or None, finished_at=finished_at or time.time(),
                                  **({"started_at": started_at} if started_at else {}))
            self.db.execute("UPDATE candidates SET status = ?, fitness = ?, error = ?, "
                            "finished_at = ? WHERE duplicate_of = ? AND status = 'pending'",
                            (status, fitness, error or None, time.time(), cid))

    def reset_in_flight(self) -> int:
        """Evaluations that were running when the driver died are redone."""
        with self.db:
            cur = self.db.execute("UPDATE candidates SET status = 'pending', started_at = NULL "
                                  "WHERE status = 'running'")
        return cur.rowcount

    def candidate(self, cid: int) -> Optional[sqlite3.Row]:
        return self.db.execute("SELECT * FROM candidates WHERE id = ?", (cid,)).fetchone()

    def candidates(self, where: str = "1", args: Iterable = ()) -> list[sqlite3.Row]:
        return self.db.execute(f"SELECT * FROM candidates WHERE {where} ORDER BY id", tuple(args)).fetchall()

    def pending(self, generation: Optional[int] = None) -> list[sqlite3.Row]:
        if generation is None:
            return self.candidates("status = 'pending' AND duplicate_of IS NULL")
        return self.candidates("status = 'pending' AND duplicate_of IS NULL AND generation = ?",
                               (generation,))

    def count_trainings(self) -> int:
        """Trainings done or owed: every non-duplicate candidate that was or will be evaluated
        (not the rejected ones, nor those whose screening failed -- they never start)."""
        return self.db.execute("SELECT COUNT(*) FROM candidates WHERE duplicate_of IS NULL "
                               "AND (status IN ('pending', 'running', 'done') OR "
                               "(status = 'failed' AND started_at IS NOT NULL))").fetchone()[0]

    def function_fitness(self, function_id: int, mode: str = "best"):
        """(fitness, id of the variant that achieved it) of a function, or (None, None)."""
        if mode == "plain":
            row = self.db.execute("SELECT fitness, id FROM candidates WHERE id = ? AND status = 'done'",
                                  (function_id,)).fetchone()
        else:
            row = self.db.execute("SELECT fitness, id FROM candidates WHERE function_id = ? AND "
                                  "status = 'done' AND fitness IS NOT NULL ORDER BY fitness DESC, id "
                                  "LIMIT 1", (function_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    # -- multi-task searches -------------------------------------------------------------------
    def record_task_run(self, cid: int, task: int, name: str, status: str, accuracy, error: str,
                        metrics: Optional[dict], started_at=None, finished_at=None) -> None:
        """One task's training of a candidate (``cid = 0``: ReLU's reference), committed now."""
        with self.db:
            self.db.execute(
                "INSERT INTO task_runs(candidate_id, task, name, status, accuracy, error, metrics, "
                "started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                "(candidate_id, task) DO UPDATE SET status = excluded.status, accuracy = "
                "excluded.accuracy, error = excluded.error, metrics = excluded.metrics, "
                "started_at = excluded.started_at, finished_at = excluded.finished_at",
                (cid, task, name, status, accuracy, error or None,
                 json.dumps(metrics) if metrics is not None else None, started_at,
                 finished_at or time.time()))

    def task_runs(self, cid: int) -> dict:
        """{task index: row} of the finished trainings of candidate ``cid``."""
        rows = self.db.execute("SELECT * FROM task_runs WHERE candidate_id = ? ORDER BY task",
                               (cid,)).fetchall()
        return {r["task"]: r for r in rows}

    # -- generations and populations -------------------------------------------------------------
    def generation_rows(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM generations ORDER BY generation").fetchall()

    def last_generation(self) -> Optional[sqlite3.Row]:
        return self.db.execute("SELECT * FROM generations ORDER BY generation DESC LIMIT 1").fetchone()

    def population(self, generation: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM population WHERE generation = ? ORDER BY rank",
                               (generation,)).fetchall()

    def finish_generation(self, generation: int, members: list[tuple[int, float]]) -> None:
        with self.db:
            self.db.execute("DELETE FROM population WHERE generation = ?", (generation,))
            self.db.executemany("INSERT INTO population(generation, rank, function_id, fitness) "
                                "VALUES (?, ?, ?, ?)",
                                [(generation, r, fid, fit) for r, (fid, fit) in enumerate(members)])
            self.db.execute("UPDATE generations SET state = 'done', finished_at = ? WHERE generation = ?",
                            (time.time(), generation))

    # -- summaries ---------------------------------------------------------------------------
    def top_functions(self, k: Optional[int] = None, mode: str = "best") -> list[dict]:
        """Functions ranked by fitness: the best variant of each (dedup'd by function)."""
        rows = self.db.execute(
            "SELECT c.function_id AS fid, MAX(c.fitness) AS fitness FROM candidates c "
            "WHERE c.status = 'done' AND c.fitness IS NOT NULL AND c.duplicate_of IS NULL "
            + ("AND c.id = c.function_id " if mode == "plain" else "")
            + "GROUP BY c.function_id ORDER BY fitness DESC, fid").fetchall()
        out = []
        for row in rows[: k if k else None]:
            fitness, best_id = self.function_fitness(row["fid"], mode)
            out.append({"function_id": row["fid"], "fitness": fitness,
                        "candidate": dict(self.candidate(best_id))})
        return out

    def status_counts(self) -> dict:
        rows = self.db.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status").fetchall()
        counts = {s: 0 for s in STATUSES}
        counts.update({r[0]: r[1] for r in rows})
        counts["duplicates"] = self.db.execute(
            "SELECT COUNT(*) FROM candidates WHERE duplicate_of IS NOT NULL").fetchone()[0]
        return counts

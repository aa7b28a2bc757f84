"""Bad input on the paths the tool reads and writes is one line on stderr, exit 2, no
traceback, and nothing lost: a config that is not UTF-8 or is a directory, a read-only run
directory (report, evaluate, search --resume), a file where a directory belongs (RUN/report,
transfer --out, export --out), a run database that cannot be written.  Also: a config file's
relative paths are relative to the file, ``search --config FILE --resume`` treats the file's
changes like flags, and orphaned workers of a killed search exit quietly.

Read-only media are a read-only bind mount where this process may mount (root in a sandbox);
elsewhere a test double of the OS refuses every write under the directory (EROFS)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gp_activations.cli import main
from gp_activations.search import SearchConfig, run_search
from gp_activations.search.store import RunStore

from search_helpers import HELPERS, snapshot
from test_cli_foundation import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def digest(run: Path) -> dict:
    """Every file of a run, by content (a failed write must change none of them).  The lock,
    sqlite's shared-memory index and an empty write-ahead log aside: sqlite creates and removes
    those as connections open and close, whatever their content."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != "lock" and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


# ---------------------------------------------------------------------------------------------
# one tiny run (no training: the fitness is a formula), copied by each test that needs one
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("made") / "run"
    run_search(SearchConfig(fitness=f"{HELPERS}:score_fitness", population=3, generations=1,
                            param_variants=0, init_zoo=False, threads=1), out=run, progress=False)
    return run


@pytest.fixture
def run(made_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(made_run, copy)
    return copy


def _mount_read_only(src: Path, target: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    target.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(target)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(target)],
                             capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
        ok = False
    if not ok:
        target.rmdir()
    return ok


@contextlib.contextmanager
def _refuse_writes_under(root: Path, monkeypatch):
    """The OS's answer for read-only media (EROFS), for every write under ``root``."""
    root = str(root.resolve())
    under = lambda p: str(Path(os.fsdecode(p)).resolve()).startswith(root)  # noqa: E731
    erofs = lambda p: OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(p))  # noqa: E731
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_connect = sqlite3.connect
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") \
                and under(file):
            raise erofs(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & writes and under(path):
            raise erofs(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if under(path):
            raise erofs(path)
        return real_mkdir(path, *a, **k)

    def fake_connect(database, *a, **k):
        text = os.fsdecode(database)
        if "mode=ro" not in text and under(text.removeprefix("file:").split("?")[0]):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(database, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(sqlite3, "connect", fake_connect)
    yield


@pytest.fixture
def read_only(run, tmp_path, monkeypatch):
    """The run on read-only media: its path, and the files it must still hold afterwards."""
    before = digest(run)
    target = tmp_path / "ro"
    if _mount_read_only(run, target):
        try:
            yield target, before
        finally:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
        return
    with _refuse_writes_under(run, monkeypatch):
        yield run, before


def assert_intact(run: Path, before: dict, made_run: Path):
    assert digest(run) == before
    assert snapshot(run) == snapshot(made_run)  # the store opens and holds the same candidates


# ---------------------------------------------------------------------------------------------
# config files
# ---------------------------------------------------------------------------------------------
def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "latin1.toml"
    config.write_bytes("population = 4\n# café\n".encode("latin-1"))
    code, _, err = run_main(capsys, "search", "--config", config, "--out", tmp_path / "r")
    assert_one_line_error(code, err, f"config file {config} is not UTF-8 text",
                          "byte 0xe9", "save it as UTF-8")
    assert not (tmp_path / "r").exists()


def test_a_config_that_is_a_directory_is_one_line(tmp_path, capsys):
    code, _, err = run_main(capsys, "search", "--config", tmp_path, "--out", tmp_path / "r")
    assert_one_line_error(code, err, f"config file {tmp_path} is a directory", "TOML file")


def test_a_config_on_resume_is_read_with_the_same_care(run, tmp_path, capsys):
    config = tmp_path / "latin1.toml"
    config.write_bytes(b"generations = 2 # \xff\n")
    code, _, err = run_main(capsys, "search", "--config", config, "--out", run, "--resume")
    assert_one_line_error(code, err, "is not UTF-8 text")


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    here = tmp_path / "project"
    (here / "sub").mkdir(parents=True)
    config = here / "sub" / "task.toml"
    config.write_text('model = "my_task.py:make_model"\ndata = "my_task.py:load_data"\n'
                      'fitness = "../fit.py:score"\nstrategy = "my_strategy.py:Mine"\n'
                      'primitives = "spaces/mine.py"\nlookup = "table.csv"\n'
                      'data_dir = "~/cifar"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from gp_activations.search.config import load_toml

    values = load_toml(Path("../project/sub/task.toml"))
    sub = (here / "sub").resolve()
    assert values["model"] == f"{sub / 'my_task.py'}:make_model"
    assert values["data"] == f"{sub / 'my_task.py'}:load_data"
    assert values["fitness"] == f"{here.resolve() / 'fit.py'}:score"
    assert values["strategy"] == f"{sub / 'my_strategy.py'}:Mine"
    assert values["primitives"] == str(sub / "spaces" / "mine.py")
    assert values["lookup"] == str(sub / "table.csv")
    assert values["data_dir"] == str(Path("~/cifar").expanduser())
    # registered names and module:attr references are not paths
    config.write_text('model = "cnn1d"\nprimitives = "pangaea"\nstrategy = "random"\n'
                      'fitness = "mypkg.tasks:score"\n')
    values = load_toml(config)
    assert (values["model"], values["primitives"], values["strategy"], values["fitness"]) == (
        "cnn1d", "pangaea", "random", "mypkg.tasks:score")


def test_flags_stay_relative_to_the_current_directory(tmp_path, monkeypatch):
    config = tmp_path / "sub" / "c.toml"
    config.parent.mkdir()
    config.write_text(f'fitness = "{HELPERS}:score_fitness"\n')
    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig.from_toml(config, {"lookup": None, "data_dir": "data"})
    assert cfg.data_dir == "data" and cfg.fitness == f"{HELPERS}:score_fitness"


def test_a_search_with_a_relative_task_file_runs_from_any_directory(tmp_path, monkeypatch, capsys):
    """The bug report's case: `model = "my_task.py:make_model"` next to the config."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_task.py").write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("helpers", {HELPERS!r})
        helpers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(helpers)

        def fit(act, seed):
            return helpers.score(act)
    """))
    (project / "c.toml").write_text('fitness = "my_task.py:fit"\npopulation = 2\n'
                                    'generations = 1\nparam_variants = 0\ninit_zoo = false\n')
    monkeypatch.chdir(tmp_path)  # not the config's directory
    code, out, err = run_main(capsys, "search", "--config", "project/c.toml", "--out", "r",
                              "--no-progress")
    assert code == 0, err
    stored = RunStore.open(tmp_path / "r", readonly=True)
    try:
        assert stored.config()["fitness"] == f"{(project / 'my_task.py').resolve()}:fit"
    finally:
        stored.close()


# ---------------------------------------------------------------------------------------------
# search --config FILE --resume: the file's changes are the same changes given as flags
# ---------------------------------------------------------------------------------------------
def test_resume_with_a_file_that_changes_what_defines_the_run(run, made_run, tmp_path, capsys):
    before = digest(run)
    config = tmp_path / "changed.toml"
    config.write_text(f'fitness = "{HELPERS}:score_fitness"\npopulation = 5\ngenerations = 2\n')
    code, _, err = run_main(capsys, "search", "--config", config, "--out", run, "--resume")
    assert_one_line_error(code, err, f"--resume: {config} sets population = 5", "started with 3",
                          "'population' defines the run and cannot change", "generations")
    assert digest(run) == before and snapshot(run) == snapshot(made_run)
    # the same change as a flag: the same rule
    code, _, err = run_main(capsys, "search", "--out", run, "--resume", "--population", "5")
    assert_one_line_error(code, err, "'population' defines the run and cannot change")


def test_resume_with_a_file_that_changes_generations_continues(run, made_run, tmp_path, capsys):
    config = tmp_path / "more.toml"
    config.write_text(f'fitness = "{HELPERS}:score_fitness"\npopulation = 3\ngenerations = 2\n'
                      f'param_variants = 0\ninit_zoo = false\nthreads = 1\n')
    code, out, err = run_main(capsys, "search", "--config", config, "--out", run, "--resume",
                              "--no-progress")
    assert code == 0, err
    assert "Traceback" not in err and f"note: {config} changes generations from 1 to 2" in err
    stored = RunStore.open(run, readonly=True)
    try:
        assert stored.config()["generations"] == 2 and stored.last_generation().generation == 1
    finally:
        stored.close()
    # a flag overrides the file, as on a fresh start
    code, _, err = run_main(capsys, "search", "--config", config, "--out", run, "--resume",
                            "--generations", "2", "--no-progress")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# read-only run directories
# ---------------------------------------------------------------------------------------------
def test_report_of_a_read_only_run(read_only, made_run, capsys):
    ro, before = read_only
    code, _, err = run_main(capsys, "report", ro)
    assert_one_line_error(code, err, "report: cannot write the report directory", "Read-only file system",
                          "copy it")
    assert_intact(ro, before, made_run)


def test_evaluate_of_a_read_only_run(read_only, made_run, capsys):
    ro, before = read_only
    code, _, err = run_main(capsys, "evaluate", ro, "--dataset", "digits", "--model", "mlp",
                            "--seeds", "1", "--top", "1", "--baselines", "relu")
    assert_one_line_error(code, err, "evaluate: cannot write the run directory",
                          "Read-only file system", "copy it to writable storage")
    assert_intact(ro, before, made_run)


def test_resume_of_a_read_only_run(read_only, made_run, capsys):
    ro, before = read_only
    code, _, err = run_main(capsys, "search", "--out", ro, "--resume", "--generations", "2")
    assert_one_line_error(code, err, "search --resume: cannot write the run directory",
                          "Read-only file system")
    assert_intact(ro, before, made_run)


def test_export_and_transfer_onto_read_only_media(read_only, made_run, capsys):
    ro, before = read_only
    code, out, err = run_main(capsys, "export", ro, "--out", ro / "best.py", "--format", "torch")
    assert_one_line_error(code, err, f"export: cannot write --out {ro / 'best.py'}", "Read-only")
    code, _, err = run_main(capsys, "transfer", ro, "--tasks", "digits/mlp", "--out",
                            ro / "t" / "u", "--seeds", "2")
    assert_one_line_error(code, err, f"transfer: cannot write --out {ro / 't' / 'u'}", "Read-only",
                          "writable storage")
    assert_intact(ro, before, made_run)


def test_a_run_database_that_cannot_be_written_is_one_line(run, made_run, monkeypatch, capsys):
    """sqlite's own refusal (a read-only run.sqlite in a writable directory) -- as root sees
    no permission bits, the OS double raises what sqlite raises there."""
    before = digest(run)
    real_connect = sqlite3.connect

    def readonly_db(database, *a, **k):
        if "mode=ro" not in os.fsdecode(database):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(database, *a, **k)

    monkeypatch.setattr(sqlite3, "connect", readonly_db)
    code, _, err = run_main(capsys, "search", "--out", run, "--resume", "--generations", "2")
    assert code == 2 and "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("gp-activations: error: ") and "readonly database" in line
    assert str(run) in line
    monkeypatch.undo()
    assert digest(run) == before and snapshot(run) == snapshot(made_run)


# ---------------------------------------------------------------------------------------------
# a file where a directory belongs (and the reverse)
# ---------------------------------------------------------------------------------------------
def test_report_when_run_report_is_a_file(run, made_run, capsys):
    (run / "report").write_text("mine\n")
    before = digest(run)
    code, _, err = run_main(capsys, "report", run)
    assert_one_line_error(code, err, f"report: cannot write the report directory {run / 'report'}",
                          "it is a file, not a directory")
    assert digest(run) == before and snapshot(run) == snapshot(made_run)


def test_transfer_out_onto_an_existing_file(run, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me\n")
    code, _, err = run_main(capsys, "transfer", run, "--tasks", "digits/mlp", "--out", out,
                            "--seeds", "2")
    assert_one_line_error(code, err, f"transfer: cannot write --out {out}", "is a file")
    assert out.read_text() == "keep me\n"
    code, _, err = run_main(capsys, "transfer", run, "--tasks", "digits/mlp", "--out",
                            out / "below", "--seeds", "2")
    assert_one_line_error(code, err, f"{out} is a file, not a directory")


def test_export_out_onto_a_directory_or_below_a_file(tmp_path, capsys):
    code, _, err = run_main(capsys, "export", "--expr", "relu", "--out", tmp_path)
    assert_one_line_error(code, err, f"export: cannot write --out {tmp_path}", "is a directory")
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run_main(capsys, "export", "--expr", "relu", "--out", afile / "x.py")
    assert_one_line_error(code, err, f"{afile} is a file, not a directory")


def test_search_out_onto_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    config = tmp_path / "c.toml"
    config.write_text(f'fitness = "{HELPERS}:score_fitness"\npopulation = 2\ngenerations = 1\n')
    code, _, err = run_main(capsys, "search", "--config", config, "--out", afile)
    assert_one_line_error(code, err, str(afile))
    assert afile.read_text() == "keep me\n"


def test_any_path_error_escaping_a_command_is_one_line(monkeypatch, capsys):
    """main's last line of defence: an OSError about a path, a UnicodeDecodeError, sqlite's
    environment errors -- and nothing else (a bug keeps its traceback)."""
    import gp_activations.cli as cli

    def failing(exc):
        def command(args):
            raise exc
        return command

    cases = [
        (OSError(errno.ENOSPC, "No space left on device", "RUN/search.log"),
         ["cannot write RUN/search.log: No space left on device", "disk is full"]),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "RUN/report/report.md"),
         ["RUN/report/report.md: Is a directory"]),
        (PermissionError(errno.EACCES, "Permission denied", "/cache/inductor"),
         ["cannot access /cache/inductor: Permission denied"]),
        (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"),
         ["not UTF-8 text", "byte 0xff"]),
        (sqlite3.OperationalError("database or disk is full"), ["disk is full"]),
    ]
    for exc, fragments in cases:
        monkeypatch.setattr(cli, "cmd_zoo", failing(exc))
        code, _, err = run_main(capsys, "zoo")
        assert_one_line_error(code, err, *fragments)
    # an error without a file name names the command's run
    monkeypatch.setattr(cli, "cmd_report", failing(
        sqlite3.OperationalError("attempt to write a readonly database")))
    code, _, err = run_main(capsys, "report", "RUN")
    assert_one_line_error(code, err, "cannot write the database of RUN: attempt to write a "
                          "readonly database", "copy the run to writable storage")
    monkeypatch.setattr(cli, "cmd_report", failing(OSError(errno.EROFS, "Read-only file system")))
    code, _, err = run_main(capsys, "report", "RUN")
    assert_one_line_error(code, err, "cannot write RUN: Read-only file system")
    for bug in (sqlite3.OperationalError("no such column: fitnes"), OSError("no errno")):
        monkeypatch.setattr(cli, "cmd_zoo", failing(bug))
        with pytest.raises(type(bug)):
            main(["zoo"])


def test_search_help_lists_every_dataset(capsys):
    from gp_activations.data import dataset_names

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in dataset_names():
        assert name in help_text


# ---------------------------------------------------------------------------------------------
# kill -9 of a search: its orphaned workers exit quietly
# ---------------------------------------------------------------------------------------------
DRIVER = '''
import multiprocessing, os, signal, sys, time
from gp_activations.search import executors


def slow(task):
    time.sleep(task)
    return {"slept": task}


def child(conn, env):
    executors.evaluate_task = slow
    executors._worker_main(conn, env)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    parent, end = ctx.Pipe()
    worker = ctx.Process(target=child, args=(end, {}), daemon=True)
    worker.start()
    end.close()
    assert parent.recv() == "ready"
    parent.send(60.0)  # busy when the driver dies: its result has nowhere to go
    print(worker.pid, flush=True)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_workers_of_a_killed_driver_exit_quietly(tmp_path):
    """A real spawned worker (the process executor's _worker_main) mid-task when its driver
    is killed with SIGKILL: it exits within seconds, not after its task, with nothing on the
    stderr it shares with the driver.  (The pipe closes only when the worker has exited.)"""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert int(proc.stdout.readline()) > 0  # the worker is ready and busy
    assert proc.wait(timeout=60) == -9
    died = time.time()
    err = proc.stderr.read()  # EOF once the orphaned worker has exited too
    assert time.time() - died < 15, "the orphaned worker kept running its task"
    assert "Traceback" not in err and "Error" not in err, err

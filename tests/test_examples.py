"""Every shipped example runs: each ``experiments/*`` file and every runnable documented snippet.

A refactor that breaks an example must fail ``make test`` (one did, and landed), so nothing
here is a copy of an example: the commands and Python blocks are read out of ``README.md``,
``experiments/README.md`` and the user guide ``docs/*.md``, and the configs out of
``experiments/``, then run on a tiny budget
(CIFAR on the fake CIFAR the suite writes).  The budget is the only thing changed: a search gets
``--budget 2 --epochs 0.05``, an evaluation one seed of 0.05 epochs with ReLU as the only
baseline, ``train`` 0.05 epochs and one seed.

How commands are read: fenced blocks that mention ``gp-activations``; in a ``console`` block the
lines after ``$ ``, in a plain block every line.  ``make`` lines are skipped (they are what CI
runs around this suite).  Each block is run by bash with ``gp-activations`` defined as a shell
function that records its arguments -- so loops, ``$s`` and ``$(...)`` expand exactly as a user's
shell would -- and the recorded commands are then executed in order, in-process, in a scratch
directory where ``experiments/`` is the repository's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_fake_cifar
from gp_activations.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
#: The user guide's pages (relative to ROOT): their Python blocks and commands run here too.
DOC_PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("**/*.md"))

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# Reading the documents
# ---------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced block, including indented ones (inside a list)."""
    text = path.read_text()
    text = re.sub(r"^[ \t]+```", "```", text, flags=re.M)  # a fence inside a list item
    blocks = []
    for lang, body in _FENCE.findall(text):
        lines = body.splitlines()
        indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
        blocks.append((lang, "\n".join(line[indent:] for line in lines)))
    return blocks


def shell_script(lang: str, body: str) -> str:
    """The block's commands as a bash script (console: the ``$`` lines), ``make`` lines out."""
    lines = []
    for line in body.splitlines():
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if line.strip().startswith("make "):
            continue
        lines.append(line)
    return "\n".join(lines)


def recorded_commands(script: str, cwd: Path) -> list[list[str]]:
    """Run ``script`` with ``gp-activations`` recording its argv; return the argv lists."""
    record = cwd / "commands.rec"
    record.write_bytes(b"")
    prelude = ('gp-activations() { for a in "$@"; do printf "%s\\037" "$a"; done >> "$REC"; '
               'printf "\\036" >> "$REC"; }\n')
    subprocess.run(["bash", "-e", "-c", prelude + script], cwd=cwd, check=True,
                   env={**os.environ, "REC": str(record)})
    out = []
    for rec in record.read_bytes().decode().split("\x1e")[:-1]:
        out.append(rec.split("\x1f")[:-1])
    return out


def doc_commands(path: Path, cwd: Path) -> list[list[str]]:
    commands = []
    for lang, body in code_blocks(path):
        if lang in ("", "console", "bash", "sh", "shell") and "gp-activations" in body:
            commands += recorded_commands(shell_script(lang, body), cwd)
    return commands


def python_blocks(path: Path) -> list[str]:
    return [body for lang, body in code_blocks(path) if lang == "python"]


# ---------------------------------------------------------------------------------------------
# The tiny budget
# ---------------------------------------------------------------------------------------------
def _drop(argv: list[str], flag: str) -> list[str]:
    """argv without ``flag`` and its value."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        out.append(a)
    return out


def _config(argv: list[str]):
    """The SearchConfig of ``--config FILE`` in argv (None without one)."""
    if "--config" not in argv:
        return None
    from gp_activations.search import SearchConfig

    return SearchConfig.from_toml(argv[argv.index("--config") + 1])


def _run_decides(run_dir: str) -> bool:
    """Whether the run's stored ``[evaluate]`` asks for seeds until decided (``max_seeds``)."""
    from gp_activations.search import RunStore

    if not (Path(run_dir) / "run.sqlite").is_file():
        return False
    store = RunStore.open(run_dir, readonly=True)
    try:
        return "max_seeds" in (store.config().get("evaluate") or {})
    finally:
        store.close()


def tiny(argv: list[str], data_dir: Path, keep_executor: bool = False,
         sequential: bool = False) -> list[str]:
    """The same command on a tiny budget (and on the fake CIFAR where it names a data dir);
    ``sequential``: the run's ``[evaluate]`` asks for seeds until decided (``max_seeds``)."""
    argv = [str(data_dir) if a == "DIR" else a for a in argv]
    command = argv[0] if argv else ""
    uses_cifar = "--data-dir" in argv
    if command == "search" and "--resume" not in argv:
        argv = _drop(_drop(argv, "--budget"), "--generations")
        argv += ["--budget", "2", "--no-progress", "--no-fused"]
        if "--lookup" not in argv:  # a table has its own budgets; a lookup costs nothing
            argv += ["--epochs", "0.05"]
        if not keep_executor:
            argv += ["--executor", "serial", "--workers", "1"]
        cfg = _config(argv)
        if "--race" in argv or (cfg and cfg.race_top):  # the race's full schedule, cut like the fitness's
            argv += ["--race-epochs", "0.05", "--race-min-seeds", "2", "--race-max-seeds", "3"]
        if cfg and cfg.val_size:  # larger generated splits: 200 samples more, not 19,000
            argv += ["--val-size", "1200"]
        if cfg and cfg.test_size:
            argv += ["--test-size", "4200"]
        if uses_cifar:
            argv += ["--no-verify", "--device", "cpu"]
    elif command == "evaluate":
        # a sequential evaluation needs two seeds at least (and its maximum cut to match)
        sequential = sequential or "--max-seeds" in argv or _run_decides(argv[1])
        seeds = ["--seeds", "2", "--max-seeds", "3"] if sequential else ["--seeds", "1"]
        argv += ["--top", "1", *seeds, "--epochs", "0.05", "--baselines", "relu",
                 "--executor", "serial", "--workers", "1", "--no-progress"]
    elif command == "transfer":
        argv += ["--top", "1", "--seeds", "2", "--epochs", "0.05", "--baselines", "relu",
                 "--executor", "serial", "--workers", "1", "--no-progress"]
    elif command == "train":
        argv += ["--epochs", "0.05", "--seeds", "1"]
    return argv


def run_cli(argv: list[str], capsys) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"gp-activations {' '.join(argv)} exited {code}:\n{err[-2000:]}"
    return out + err


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working directory with the repository's experiments/ and benchmarks/ (the tabular
    benchmark) and a tiny fake CIFAR-10/100 (60 training, 20 test images each)."""
    (tmp_path / "experiments").symlink_to(EXPERIMENTS, target_is_directory=True)
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks", target_is_directory=True)
    data = tmp_path / "cifar-data"
    # as few images as the pipeline needs (a validation split of ~10 %, a batch, a test
    # set): a step of MobileNetV2 / ResNet-56 on CPU costs ~proportionally to its images
    write_fake_cifar(data, "cifar10", n_train=60, n_test=20)
    write_fake_cifar(data, "cifar100", n_train=60, n_test=20)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GP_ACTIVATIONS_DATA", str(data))
    return tmp_path


# ---------------------------------------------------------------------------------------------
# experiments/
# ---------------------------------------------------------------------------------------------
TOMLS = sorted(p.name for p in EXPERIMENTS.glob("*.toml"))


def test_the_suite_sees_every_experiment_file():
    shipped = {p.name for p in EXPERIMENTS.iterdir() if p.is_file()}
    covered = set(TOMLS) | {"README.md"} | set(PY_EXAMPLES)
    assert shipped == covered, f"experiments/ files no test runs: {sorted(shipped - covered)}"
    assert len(TOMLS) >= 13  # mnist1d, headline, digits, 10 CIFAR, custom task


@pytest.mark.parametrize("name", TOMLS)
def test_experiment_config_searches_evaluates_and_reports(name, scratch, capsys):
    """search --config FILE, evaluate RUN, report RUN -- as the file's header says, tiny."""
    config = f"experiments/{name}"
    cifar = name.startswith("cifar")
    search = ["search", "--config", config, "--out", "runs/x"]
    if cifar:
        search += ["--data-dir", "DIR"]
    # the default search (`make run`) keeps its own executor: 2 worker processes
    out = run_cli(tiny(search, scratch / "cifar-data", keep_executor=name == "mnist1d.toml"), capsys)
    assert "Top functions of runs/x" in out and "(ReLU under the same budget)" in out
    from gp_activations.search import SearchConfig

    cfg = SearchConfig.from_toml(EXPERIMENTS / name)
    run_cli(tiny(["evaluate", "runs/x"], scratch / "cifar-data",
                 sequential="max_seeds" in (cfg.evaluate or {})), capsys)
    tasks = cfg.tasks
    results = (["results.csv"] if tasks is None else
               [f"results_{t['dataset']}_{t['model']}.csv" for t in tasks])  # one per task
    for stem in results:
        csv = (scratch / "runs/x" / stem).read_text().splitlines()
        # found #1 + relu (+ the run's [evaluate] reference, which joins the baselines)
        extra = (cfg.evaluate or {}).get("reference", "relu") != "relu"
        assert csv[0].startswith("label,kind,expression") and len(csv) == 3 + extra
    run_cli(["report", "runs/x"], capsys)
    report = (scratch / "runs/x/report/report.md").read_text()
    assert "Measured on the test split" in report
    if tasks is None:
        assert "## Final evaluation (test set)" in report
    else:
        for t in tasks:
            assert f"## Final evaluation on {t['dataset']} / {t['model']} (test set)" in report


PY_EXAMPLES = sorted(p.name for p in EXPERIMENTS.glob("*.py"))


@pytest.mark.parametrize("name", PY_EXAMPLES)
def test_python_example_runs_as_a_script(name, tmp_path):
    """``python experiments/NAME`` from a fresh directory (as a user would run it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / name)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank  fitness  function" in proc.stdout
    assert "(ReLU under the same budget)" in proc.stdout
    assert "\r" not in proc.stderr  # no progress bar rewrites into a redirected stream


# ---------------------------------------------------------------------------------------------
# README.md, experiments/README.md and docs/
# ---------------------------------------------------------------------------------------------
def write_file_blocks(path: Path, cwd: Path) -> list[str]:
    """Write the Python blocks that name a file on their first line (``# my_space.py``: a file
    the document asks the user to write) into ``cwd``; return their names."""
    names = []
    for body in python_blocks(path):
        first = body.splitlines()[0].strip() if body.strip() else ""
        if re.fullmatch(r"# [\w.-]+\.py", first):
            (cwd / first[2:]).write_text(body + "\n")
            names.append(first[2:])
    return names


@pytest.mark.parametrize("doc", ["README.md"] + DOC_PAGES)
def test_documented_python_blocks_run(doc, scratch, capsys):
    """Every ```python block of the page, in order, in one namespace (a page's later blocks may
    use its earlier ones' names), in a scratch directory -- the examples carry their own tiny
    budgets."""
    blocks = python_blocks(ROOT / doc)
    if doc == "README.md":
        assert len(blocks) >= 2
    write_file_blocks(ROOT / doc, scratch)
    namespace = {"__name__": "__doc_snippet__"}
    for body in blocks:
        first = body.splitlines()[0].strip() if body.strip() else ""
        exec(compile(body, f"{doc} snippet {first!r}", "exec"), namespace)  # noqa: S102
    capsys.readouterr()
    if (scratch / "my_space.py").is_file():  # a search space file works where it says it does
        out = run_cli(["primitives", "my_space.py"], capsys)
        assert "log1psq" in out


def test_the_docs_show_a_search_space_file(tmp_path):
    assert any("my_space.py" in write_file_blocks(ROOT / d, tmp_path)
               for d in ["README.md"] + DOC_PAGES)


@pytest.mark.parametrize("doc", ["README.md", "experiments/README.md"] + DOC_PAGES)
def test_documented_commands_run(doc, scratch, capsys):
    write_file_blocks(ROOT / doc, scratch)  # e.g. my_space.py, which a command then names
    commands = doc_commands(ROOT / doc, scratch)
    expected = {"README.md": {"search", "evaluate", "report", "export", "train", "zoo",
                              "primitives"},
                "experiments/README.md": {"search", "evaluate", "report", "transfer"}}.get(doc, set())
    assert expected <= {c[0] for c in commands if c}, commands
    for argv in commands:
        if argv and argv[0] in ("evaluate", "report", "export") and not Path(argv[1]).exists() \
                and not argv[1].startswith("-"):
            pytest.fail(f"{doc}: {' '.join(argv)} names a run no earlier command made")
        if argv and argv[0] == "transfer":
            runs = [a for a in argv[1:argv.index("--tasks")] if not a.startswith("-")]
            missing = [r for r in runs if not Path(r).exists()]
            if missing:
                pytest.fail(f"{doc}: {' '.join(argv)} names a run no earlier command made: {missing[0]}")
        run_cli(tiny(argv, scratch / "cifar-data"), capsys)

"""The tabular benchmark's build for any config (``benchmarks/tabular/build.py --config``) and
the shipped, partial resnet1d table (``benchmarks/tabular/mnist1d_hard_resnet1d.csv``).

No training here: the build's naming, columns and order are pure functions of the config, the
table is written from a journal, and the shipped table is checked against its shipped journal.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from gp_activations.activation import Activation
from gp_activations.tabular import load_table

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks" / "tabular"
RESNET = ROOT / "experiments" / "mnist1d_resnet1d.toml"
SHIPPED = HERE / "mnist1d_hard_resnet1d.csv"
JOURNAL = HERE / "mnist1d_hard_resnet1d.journal.jsonl"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("tabular_build_resnet1d", HERE / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def functions(build):
    return build._functions()


def _rows(path: Path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_config_names_its_table_and_columns(build):
    cfg = build.load_config(RESNET)
    assert build.table_name(cfg) == "mnist1d_hard_resnet1d"
    specs = build.column_specs(cfg)
    assert list(specs) == ["fitness", "fitness_e2.667", "fitness_s1", "fitness_s2", "test"]
    got = {name: (train["epochs"], seed, split) for name, (train, seed, split) in specs.items()}
    assert got == {"fitness": (8, 0, "val"), "fitness_e2.667": (2.667, 0, "val"),
                   "fitness_s1": (8, 1, "val"), "fitness_s2": (8, 2, "val"),
                   "test": (15, 0, "test")}
    # the first rung is the one halving asks the table for
    assert cfg.rung_list()[0]["epochs"] == 2.667
    # the default config still describes the shipped cnn1d table, column for column
    default = build.load_config(build.CONFIG)
    assert build.table_name(default) == "mnist1d_cnn1d"
    shipped = json.loads((HERE / "mnist1d_cnn1d.json").read_text())["columns"]
    assert {n: {"epochs": t["epochs"], "seed": s, "split": p}
            for n, (t, s, p) in build.column_specs(default).items()} == shipped


def test_the_build_order_is_a_seeded_permutation_with_the_references_first(build, functions):
    n = len(functions)
    assert n == 1009
    perm = build.order(n)
    assert sorted(perm) == list(range(n)) and perm == build.order(n, 0)
    assert perm != list(range(n)) and perm != build.order(n, 1)
    specs = build.column_specs(build.load_config(RESNET))
    cells = build.plan(functions, specs, 240)
    assert len(cells) == len(set(cells)) == 2 * n + 3 * 240
    fitness = [e for e, c in cells if c == "fitness"]
    assert fitness[:2] == ["relu(x)", "mul(x, sigmoid(x))"]  # ReLU, SiLU
    rest = [functions[i][1] for i in perm if functions[i][1] not in fitness[:2]]
    assert fitness[2:] == rest  # then the permutation: any prefix a uniform random sample
    assert [c for _, c in cells[:n]] == ["fitness"] * n
    assert [c for _, c in cells[n:n + 720]] == ["fitness_s1"] * 240 + ["fitness_s2"] * 240 \
        + ["test"] * 240  # the random subset before the rung column, the least needed
    assert {c for _, c in cells[n + 720:]} == {"fitness_e2.667"}
    # the noise subset is the cnn1d table's: its rows with seeds 1 and 2
    subset = {functions[i][1] for i in build.noise_subset(n, 240)}
    assert subset == {r["expression"] for r in _rows(HERE / "mnist1d_cnn1d.csv") if r["fitness_s1"]}


def test_a_table_written_from_a_journal_marks_what_is_missing(build, functions, tmp_path):
    cfg = build.load_config(RESNET)
    journal = tmp_path / "journal.jsonl"
    entries = [{"session": {"started_at": 100.0, "machine": "m", "processor": "P / AVX2",
                            "cpus": 2, "workers": 1, "threads": 1}},
               {"expression": "relu(x)", "column": "fitness", "status": "done",
                "accuracy": 0.9, "error": "", "seconds": 10.0, "finished_at": 110.0},
               {"expression": "mul(x, sigmoid(x))", "column": "fitness", "status": "failed",
                "accuracy": None, "error": "diverged", "seconds": 5.0, "finished_at": 115.0}]
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"torn')
    path = tmp_path / "t.csv"
    meta = build.write_table(cfg, journal, path, 240, config_path=RESNET)
    rows = _rows(path)
    assert list(rows[0]) == ["expression", "shape", "fitness", "fitness_e2.667", "fitness_s1",
                             "fitness_s2", "test", "seconds", "order"]
    assert len(rows) == len(functions)
    assert meta["partial"]["functions_with_fitness"] == 2 and meta["partial"]["of"] == 1009
    assert meta["trainings"] == 2 and meta["wall_seconds"] == 15.0
    assert meta["processor"] == "P / AVX2"
    assert "--config experiments/mnist1d_resnet1d.toml" in meta["command"]
    table = load_table(path)
    assert table.accuracy(Activation.from_string("relu(x)", "pangaea"), 8, 0) == 0.9
    assert math.isnan(table.accuracy(Activation.from_string("sigmul(x, x)", "pangaea"), 8, 0))
    with pytest.raises(LookupError, match="no fitness for"):
        table.accuracy(Activation.from_string("tanh(x)", "pangaea"), 8, 0)
    with pytest.raises(LookupError, match="no fitness_e2.667"):
        table.accuracy(Activation.from_string("relu(x)", "pangaea"), 2.667, 0)


def test_the_shipped_partial_table_is_its_journal(build, tmp_path):
    """The shipped CSV and sidecar are exactly what the shipped journal writes, the sidecar's
    counts are the CSV's, and ``lookup`` reads it."""
    cfg = build.load_config(RESNET)
    meta = json.loads(SHIPPED.with_suffix(".json").read_text())
    top = meta.get("top_functions", {}).get("count", 0)
    again = build.write_table(cfg, JOURNAL, tmp_path / SHIPPED.name, meta["noise_functions"],
                              config_path=RESNET, top=top)
    assert (tmp_path / SHIPPED.name).read_text() == SHIPPED.read_text()
    assert {k: v for k, v in again.items() if k != "command"} == \
        {k: v for k, v in meta.items() if k != "command"}
    assert meta["dataset"] == "mnist1d_hard" and meta["model"] == "resnet1d"
    assert meta["processor"] and meta["space"]["functions"] == 1009
    rows = _rows(SHIPPED)
    assert len(rows) == 1009
    cells = {c: sum(r[c] != "" for r in rows) for c in meta["columns"]}
    assert cells["fitness"] >= 2
    if "partial" in meta:
        assert meta["partial"]["cells"] == cells
        assert meta["partial"]["functions_with_fitness"] == cells["fitness"]
    assert sum(cells.values()) == meta["trainings"]
    # the functions trained: the references, then a prefix of the build order
    refs = meta["order"]["references"]
    assert refs == ["relu(x)", "mul(x, sigmoid(x))"]
    ref_ranks = {int(r["order"]) for r in rows if r["expression"] in refs}
    trained = sorted(int(r["order"]) for r in rows if r["fitness"] and r["expression"] not in refs)
    assert trained == [k for k in range(1009) if k not in ref_ranks][:len(trained)]
    table = load_table(SHIPPED)
    for expression, spelling in zip(refs, ("abs(relu(x))", "sigmul(x, x)")):
        value = float(next(r["fitness"] for r in rows if r["expression"] == expression))
        assert table.accuracy(Activation.from_string(spelling, "pangaea"), 8, 0) == value


def test_the_top_functions_by_fitness_come_after_the_fitness_column(build, functions):
    """``--top N``: once every function has its fitness, the best N (a hand-picked table: ties
    broken in build order, a failed training never among them) get the test split and seeds 1-2
    before the first rung; the random noise subset keeps the rest."""
    n = len(functions)
    specs = build.column_specs(build.load_config(RESNET))
    perm = build.order(n)
    names = [e for _, e, _ in functions]
    done = {(e, "fitness"): {"status": "done", "accuracy": 0.5} for e in names}
    a, b, c, d = (names[perm[k]] for k in (700, 10, 20, 5))  # build ranks 700, 10, 20, 5
    done[(a, "fitness")] = {"status": "done", "accuracy": 0.93}
    done[(b, "fitness")] = {"status": "done", "accuracy": 0.91}
    done[(c, "fitness")] = {"status": "done", "accuracy": 0.91}  # ties b: later in build order
    done[(d, "fitness")] = {"status": "failed", "accuracy": None}  # never a candidate
    partial = dict(done)
    del partial[(names[perm[900]], "fitness")]
    assert build.top_functions(functions, partial, 3) == []  # not known before the column is full
    assert build.plan(functions, specs, 240, top=3, done=partial) == build.plan(functions, specs, 240)
    assert [names[i] for i in build.top_functions(functions, done, 3)] == [a, b, c]
    cells = build.plan(functions, specs, 240, top=3, done=done)
    assert cells[n:n + 9] == [(a, "test"), (b, "test"), (c, "test"),
                              (a, "fitness_s1"), (b, "fitness_s1"), (c, "fitness_s1"),
                              (a, "fitness_s2"), (b, "fitness_s2"), (c, "fitness_s2")]
    assert len(cells) == len(set(cells))  # a top function in the random subset is trained once
    subset = build.noise_subset(n, 240) | {perm[700], perm[10], perm[20]}
    assert len(cells) == 2 * n + 3 * len(subset)
    assert {col for _, col in cells[n + 9:-n]} == {"fitness_s1", "fitness_s2", "test"}
    assert {col for _, col in cells[-n:]} == {"fitness_e2.667"}  # the rung column last

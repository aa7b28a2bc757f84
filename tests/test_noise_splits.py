"""benchmarks/noise.py (issue 19): its pure helpers against hand-worked numbers, the variance
model against a simulation, and a --quick smoke run (cnn1d on mnist1d, 1 epoch, tiny splits)
that checks the extra generated splits and that the kept network is train()'s."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def noise():
    spec = importlib.util.spec_from_file_location("bench_noise", ROOT / "benchmarks" / "noise.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_binomial_std(noise):
    # p = 0.9 on 1,000 samples: sqrt(0.9 * 0.1 / 1000) = 0.0094868 (0.95 points)
    assert noise.binomial_std(0.9, 1000) == pytest.approx(math.sqrt(0.09 / 1000))
    assert noise.binomial_std(0.9, 1000) == pytest.approx(0.0094868, abs=1e-7)
    assert noise.binomial_std(0.9, 4000) == pytest.approx(noise.binomial_std(0.9, 1000) / 2)


def test_disagreement(noise):
    assert noise.disagreement([0, 1, 2, 3], [0, 1, 2, 4]) == 0.25
    assert noise.disagreement([True, False], [True, False]) == 0.0
    # three seeds: pairs (a,b) 1/4, (a,c) 2/4, (b,c) 1/4 -> mean 1/3
    a, b, c = [0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5, 4]
    assert noise.mean_pairwise_disagreement([a, b, c]) == pytest.approx(1 / 3)
    assert math.isnan(noise.mean_pairwise_disagreement([a]))
    with pytest.raises(ValueError):
        noise.disagreement([0, 1], [0, 1, 2])


def test_decomposition_hand_worked(noise):
    # correctness disagreement D = 0.02 between two seeds: a 1,000-sample split adds
    # D / (2 n) = 1e-5 to the seed-to-seed variance (0.32 points of std)
    assert noise.split_variance(0.02, 1000) == pytest.approx(1e-5)
    small = [0.90, 0.91, 0.92]  # sample variance 1e-4
    big = [0.901, 0.911, 0.921]  # the same spread on the big split: 1e-4
    d = noise.decompose(small, big, 1000, 50_000, 0.02)
    assert d["var_small"] == pytest.approx(1e-4)
    assert d["var_net"] == pytest.approx(1e-4 - 0.02 / 100_000)
    assert d["split_var"] == pytest.approx(1e-5)
    assert d["split_share"] == pytest.approx(1e-5 / (1e-4 - 2e-7 + 1e-5))
    assert d["var_diff"] == pytest.approx(0.0, abs=1e-15)
    # no spread on the big split: all of the small split's spread is the split's
    d = noise.decompose(small, [0.9, 0.9, 0.9], 1000, 50_000, 0.2)
    assert d["var_net"] == 0.0 and d["split_share"] == pytest.approx(1.0)


def test_split_variance_matches_a_simulation(noise):
    """Per-example errors independent given the networks (each example i right with its own
    probability p_i): the variance of accuracy across networks on the fixed split is
    D / (2 n), D the mean pairwise correctness disagreement."""
    rng = np.random.default_rng(0)
    n, nets = 400, 3000
    p = rng.beta(2.0, 0.3, size=n)  # most examples easy, some hard
    correct = rng.random((nets, n)) < p
    accs = correct.mean(1)
    d = float(np.mean(2 * p * (1 - p)))  # expected pairwise disagreement
    assert np.var(accs, ddof=1) == pytest.approx(noise.split_variance(d, n), rel=0.1)
    measured = noise.mean_pairwise_disagreement(list(correct[:60]))
    assert measured == pytest.approx(d, rel=0.1)


def test_spearman(noise):
    assert noise.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert noise.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert list(noise.ranks([1.0, 1.0, 2.0])) == [1.5, 1.5, 3.0]
    assert math.isnan(noise.spearman([1, 1, 1], [1, 2, 3]))


def test_resolve_found_functions(noise):
    act = noise.resolve("hswish_clip")
    assert "min(relu(add(x, 3.0)), 6.0)" in str(act) and "[8]" in str(act)
    assert "[2]" in str(noise.resolve("mul(x, sigmoid(x))@2"))
    assert str(noise.resolve("relu")) == "relu(x)"


def test_quick_run(noise, tmp_path, capsys):
    """cnn1d on mnist1d, 1 epoch, 2 seeds, tiny extra splits: the tables print, the JSON has
    every number, the extra splits are the sizes asked for and share no row with the dataset
    (extra_splits raises otherwise), and the kept network scored train()'s val accuracy
    (train_and_score raises otherwise)."""
    out = tmp_path / "noise.json"
    assert noise.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Decomposition of the seed-to-seed std" in printed and "Spearman" in printed
    result = json.loads(out.read_text())
    assert result["sizes"] == {"val": 1000, "test": 2000, "val_big": 300, "test_big": 500}
    assert result["generation"]["equal_to_original_rows"] == 0
    runs = [r for r in result["runs"] if r["status"] == "ok"]
    assert len(runs) == 5  # 2 functions x 2 seeds + 1 rank function x 1 seed
    for r in runs:
        assert r["acc"]["val"] == pytest.approx(r["val_acc_reported"])
        assert set(r["acc"]) == {"val", "test", "val_big", "test_big"}
    assert set(result["summary"]["rank"]["functions"]) == {"relu", "silu", "gelu"}


def test_bad_sizes_are_one_line_errors(noise, capsys):
    for flag in ("--val-size", "--test-size", "--seeds"):
        with pytest.raises(SystemExit) as exc:
            noise.main([flag, "0"])
        assert exc.value.code == 2
        assert "must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        noise.main(["--val-size", "abc"])

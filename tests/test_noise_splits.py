"""benchmarks/noise.py (issue 19): its pure helpers against hand-worked numbers, the variance
model against a simulation, and a --quick smoke run (cnn1d on mnist1d_hard, 1 epoch, tiny splits)
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
    """cnn1d on mnist1d_hard, 1 epoch, 2 seeds, tiny extra splits: the tables print, the JSON has
    every number, the extra splits are the sizes asked for and share no row with the dataset
    (extra_splits raises otherwise), and the kept network scored train()'s val accuracy
    (train_and_score raises otherwise)."""
    out = tmp_path / "noise.json"
    assert noise.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Decomposition of the seed-to-seed std" in printed and "Spearman" in printed
    result = json.loads(out.read_text())
    assert result["sizes"] == {"val": 1000, "test": 4000, "val_big": 300, "test_big": 500}
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


# ---------------------------------------------------------------------------------------------
# mnist1d_hard's opt-in larger splits (gp_activations.data, issue 19 item 2)
# ---------------------------------------------------------------------------------------------
def _rows(x) -> set:
    return {r.tobytes() for r in x.reshape(len(x), -1).numpy()}


def test_larger_mnist1d_hard_splits():
    import torch

    from gp_activations import data as D

    base = D.load_dataset("mnist1d_hard")
    assert (len(base.y_train), len(base.y_val), len(base.y_test)) == (7000, 1000, 4000)
    big = D.load_dataset("mnist1d_hard", val_size=1500, test_size=4600)
    assert (len(big.y_train), len(big.y_val), len(big.y_test)) == (7000, 1500, 4600)
    # the training set is the same; the dataset's own samples come first
    assert torch.equal(big.x_train, base.x_train) and torch.equal(big.y_train, base.y_train)
    assert torch.equal(big.x_val[:1000], base.x_val) and torch.equal(big.x_test[:4000], base.x_test)
    assert "600 generated" in big.test_source
    extra_val, extra_test = _rows(big.x_val[1000:]), _rows(big.x_test[4000:])
    assert len(extra_val) == 500 and len(extra_test) == 600  # no repeated rows
    original = _rows(base.x_train) | _rows(base.x_val) | _rows(base.x_test)
    assert not (extra_val & original) and not (extra_test & original)
    assert not extra_val & extra_test
    for y in (big.y_val, big.y_test):
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    # same distribution: standardised with the original's constants, like the dataset
    assert abs(float(big.x_test[4000:].mean())) < 0.1
    assert abs(float(big.x_test[4000:].std()) - float(base.x_test.std())) < 0.1
    # the test split does not depend on the seed; a smaller size is a prefix
    assert torch.equal(D.load_dataset("mnist1d_hard", seed=1, test_size=4600).x_test, big.x_test)
    assert torch.equal(D.load_dataset("mnist1d_hard", val_size=300).x_val, base.x_val[:300])


def test_larger_splits_are_cached_on_disk():
    from gp_activations import data as D

    D.load_dataset("mnist1d_hard", test_size=4600)
    files = list(D.default_data_dir().glob("mnist1d-extra-test-600-*.npz"))
    assert files, "the generated samples are cached in the data directory"
    first = D._mnist1d_hard_extra("test", 600)
    D._mnist1d_hard_extra.cache_clear()
    again = D._mnist1d_hard_extra("test", 600)  # read back from the file
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not again[0].flags.writeable


@pytest.mark.parametrize("value", [0, -3, 2.5, "100", True])
def test_bad_split_sizes_are_one_line_user_errors(value):
    from gp_activations import data as D
    from gp_activations.errors import UserError

    with pytest.raises(UserError) as exc:
        D.load_dataset("mnist1d_hard", val_size=value)
    assert "val_size must be a positive integer" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_split_sizes_beyond_the_generator_and_other_datasets_are_user_errors():
    from gp_activations import data as D
    from gp_activations.errors import UserError

    with pytest.raises(UserError, match="test_size of 200,001 is more than the 200,000"):
        D.load_dataset("mnist1d_hard", test_size=D.MNIST1D_MAX_SPLIT + 1)
    with pytest.raises(UserError, match="mnist1d_hard only"):
        D.load_dataset("mnist1d", val_size=2000)

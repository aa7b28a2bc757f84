"""mnist1d_hard's larger splits reach every training (search, race, evaluate, train), and a
training scores a large split fully only after its last epoch (``monitor_samples``)."""

from __future__ import annotations

import pytest

from gp_activations.cli import main
from gp_activations.evaluate import protocol_key
from gp_activations.search import RunStore, SearchConfig, run_search
from gp_activations.train import TrainConfig, default_config, train

pytestmark = pytest.mark.usefixtures("one_thread")

#: a few steps of cnn1d on mnist1d_hard: the split sizes matter, not the accuracy
TINY = dict(epochs=2, max_steps_per_epoch=3, chance_check=False)


def _config(**changes) -> TrainConfig:
    return default_config("mnist1d_hard", "fitness", "cnn1d").replace(**TINY, **changes)


def test_a_monitored_training_ends_exactly_as_a_fully_scored_one():
    """Scoring only 100 samples after the first epoch changes nothing the training does: the
    final accuracy is the full split's (the same as scoring it every epoch), the first epoch's
    is a multiple of 1/100."""
    full = train("relu", "mnist1d_hard", "cnn1d", _config(), seed=3, device="cpu")
    watched = train("relu", "mnist1d_hard", "cnn1d", _config(monitor_samples=100), seed=3,
                    device="cpu")
    assert watched.accuracy == full.accuracy and watched.loss_curve == full.loss_curve
    first = watched.accuracy_curve[0]
    assert round(first * 100) == pytest.approx(first * 100, abs=1e-9)
    assert len(watched.accuracy_curve) == 2


def test_train_uses_the_larger_validation_split():
    small = train("relu", "mnist1d_hard", "cnn1d", _config(), seed=0, device="cpu")
    big = train("relu", "mnist1d_hard", "cnn1d", _config(), seed=0, device="cpu", val_size=3000)
    assert small.loss_curve == big.loss_curve  # the same training set and steps
    assert round(big.accuracy * 3000) == pytest.approx(big.accuracy * 3000, abs=1e-9)
    assert big.accuracy != small.accuracy


def test_a_search_trains_on_its_larger_validation_split(tmp_path):
    cfg = SearchConfig(dataset="mnist1d_hard", model="cnn1d", population=2, generations=1,
                       param_variants=0, init_zoo=False, init_shapes=["u(u(x))"], seed=2,
                       train=TINY, val_size=3000, executor="serial")
    run_search(cfg, out=tmp_path / "run", progress=False)
    store = RunStore.open(tmp_path / "run", readonly=True)
    done = [c for c in store.candidates() if c.fitness is not None]
    store.close()
    assert done
    for cand in done:  # the fitness is what train() measures on the 3,000-sample split
        expected = train(cand.expression, "mnist1d_hard", "cnn1d", cfg.train_config(),
                         seed=cfg.fitness_seed, device="cpu", val_size=3000)
        assert cand.fitness == expected.accuracy


def test_a_larger_test_split_is_its_own_evaluation_protocol():
    cfg = _config().to_dict()
    assert protocol_key(cfg, "mnist1d_hard", "cnn1d") != \
        protocol_key(cfg, "mnist1d_hard", "cnn1d", 50_000)
    assert "test_size" not in protocol_key(cfg, "mnist1d_hard", "cnn1d")  # earlier keys stay


@pytest.mark.parametrize("argv, words", [
    (["train", "--act", "relu", "--dataset", "mnist1d", "--val-size", "2000"],
     "--val-size and --test-size are options of mnist1d_hard only"),
    (["train", "--act", "relu", "--dataset", "mnist1d_hard", "--test-size", "0"],
     "--test-size must be a positive integer"),
    (["search", "--dataset", "mnist1d_hard", "--val-size", "300000", "--out", "{tmp}/r"],
     "more than the 200,000 samples"),
    (["search", "--dataset", "digits", "--test-size", "5000", "--out", "{tmp}/r"],
     "options of mnist1d_hard only"),
])
def test_bad_split_sizes_are_one_line_before_any_work(argv, words, tmp_path, capsys):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert words in err
    assert not (tmp_path / "r").exists()  # nothing written




def test_the_split_cost_benchmark_runs():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "split_cost.py"), "--quick"],
                         capture_output=True, text=True, check=True, timeout=300)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["val_size"] for r in rows] == [1000, 1500, 1500]
    assert rows[1]["accuracy"] == rows[2]["accuracy"]  # the same network, scored in full at the end


def test_a_training_that_stops_at_chance_is_scored_on_the_whole_split():
    cfg = default_config("mnist1d_hard", "fitness", "cnn1d").replace(
        epochs=3, max_steps_per_epoch=3, chance_check=True)
    full = train("mul(x, zero)", "mnist1d_hard", "cnn1d", cfg, seed=0, device="cpu",
                 val_size=3000)
    watched = train("mul(x, zero)", "mnist1d_hard", "cnn1d", cfg.replace(monitor_samples=7),
                    seed=0, device="cpu", val_size=3000)
    assert full.status == watched.status == "chance"
    assert watched.accuracy == full.accuracy  # not the 7 samples' score


@pytest.mark.parametrize("value, ok", [(100.0, 100), (100, 100), (100.5, None), ("abc", None),
                                       (True, None), (0, None)])
def test_monitor_samples_takes_whole_numbers_only(value, ok):
    from gp_activations.errors import UserError

    if ok is None:
        with pytest.raises(UserError, match="monitor_samples must be a positive integer"):
            TrainConfig(monitor_samples=value)
    else:
        assert TrainConfig(monitor_samples=value).monitor_samples == ok


def test_the_recheck_script_runs_paired_seeds():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "recheck.py"), "--quick"],
                         capture_output=True, text=True, check=True, timeout=300)
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [(r["function"], r["seed"]) for r in runs] == [
        ("mul(x, sigmoid(x))", 0), ("relu(x)", 0), ("mul(x, sigmoid(x))", 1), ("relu(x)", 1)]
    for r in runs:  # scored on the 1,500-sample validation split
        assert round(r["accuracy"] * 1500) == pytest.approx(r["accuracy"] * 1500, abs=1e-9)


def test_the_recheck_script_reads_a_found_function_as_evaluate_prints_it():
    """``EXPR @ params [0]``: node 0 (the root) carries a learnable scale, initialised to 1."""
    import importlib.util
    import math
    import subprocess
    import sys
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "recheck.py"
    spec = importlib.util.spec_from_file_location("recheck", path)
    recheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recheck)
    module = recheck.activation("add(relu(x), cosh(erfc(0.01))) @ params [0]").factory()()
    (scale,) = list(module.parameters())
    with torch.no_grad():
        scale.fill_(0.75)
        y = module(torch.tensor([-2.0, 0.0, 1.5]))
    c = math.cosh(math.erfc(0.01))  # the hand-worked value: 0.75 * (relu(x) + c)
    assert y.tolist() == pytest.approx([0.75 * c, 0.75 * c, 0.75 * (1.5 + c)], rel=1e-6)
    bad = subprocess.run([sys.executable, str(path), "--functions", "relu(x) @ params [x]"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "expected 'EXPR @ params [0, 3]'" in bad.stderr.splitlines()[-1]


def test_a_job_with_fields_this_worker_does_not_know_fails_instead_of_half_running():
    """A Ray worker of an older version would otherwise drop ``normalize`` / ``val_size`` and
    train another experiment than the driver asked for."""
    from gp_activations.search.jobs import Job, JobKey, JobKind, JobResult, JobStatus
    from gp_activations.search.worker import evaluate_task

    wire = Job(JobKey(JobKind.CANDIDATE, 7), "relu(x)", "pangaea", dataset="mnist1d").to_wire()
    assert Job.from_wire(wire).key == JobKey(JobKind.CANDIDATE, 7)
    result = JobResult.from_wire(evaluate_task({**wire, "added_in_a_later_version": 1}))
    assert result.status is JobStatus.FAILED and "added_in_a_later_version" in result.error
    assert "install the driver's version" in result.error

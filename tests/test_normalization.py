"""Output normalisation (AQuaSurF's): the constants against textbook moments and numerical
integration by scipy, the normalised function's moments on independent random samples, and the
export carrying it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from gp_activations.errors import UserError
from gp_activations.normalization import Normalization, moments, normal_grid


def _quad_moments(f):
    """E[f(Z)] and std[f(Z)] by adaptive quadrature against the normal density (scipy)."""
    mean = integrate.quad(lambda x: f(x) * stats.norm.pdf(x), -np.inf, np.inf)[0]
    second = integrate.quad(lambda x: (f(x) - mean) ** 2 * stats.norm.pdf(x), -np.inf, np.inf)[0]
    return mean, math.sqrt(second)


def test_relu_and_square_have_their_textbook_moments():
    shift, scale = moments(torch.relu)
    assert shift == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-6)
    assert scale == pytest.approx(math.sqrt(0.5 - 1 / (2 * math.pi)), abs=1e-6)
    shift, scale = moments(torch.square)  # E[Z^2] = 1, Var[Z^2] = 2
    assert shift == pytest.approx(1.0, abs=1e-9) and scale == pytest.approx(math.sqrt(2), abs=1e-9)
    shift, scale = moments(torch.exp)  # lognormal: e^{1/2}, sqrt((e - 1) e)
    assert shift == pytest.approx(math.exp(0.5), abs=1e-9)
    assert scale == pytest.approx(math.sqrt((math.e - 1) * math.e), abs=1e-9)


@pytest.mark.parametrize("name, torch_fn, np_fn", [
    ("silu", torch.nn.functional.silu, lambda x: x * special.expit(x)),
    ("tanh", torch.tanh, math.tanh),
    ("gelu", torch.nn.functional.gelu, lambda x: x * stats.norm.cdf(x)),
])
def test_moments_agree_with_scipy_quadrature(name, torch_fn, np_fn):
    assert moments(torch_fn) == pytest.approx(_quad_moments(np_fn), abs=1e-7)


def test_the_grid_integrates_against_the_normal_density():
    x, w = normal_grid()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    # E[Z^4] = 3, E[e^Z] = e^{1/2}, E[|Z|] = sqrt(2/pi): textbook moments
    assert float((w * x ** 4).sum()) == pytest.approx(3.0, abs=1e-9)
    assert float((w * torch.exp(x)).sum()) == pytest.approx(math.exp(0.5), abs=1e-9)
    assert float((w * x.abs()).sum()) == pytest.approx(math.sqrt(2 / math.pi), abs=1e-8)


def test_a_normalised_function_has_mean_zero_and_unit_variance_on_fresh_samples():
    norm = Normalization.of(torch.nn.functional.silu)
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = norm.apply(torch.nn.functional.silu(z))
    assert abs(float(y.mean())) < 3e-3 and float(y.std()) == pytest.approx(1.0, abs=3e-3)


@pytest.mark.parametrize("fn, words", [
    (lambda x: torch.zeros_like(x) + 3.0, "constant"),
    (torch.log, "not finite"),  # nan for negative inputs
])
def test_functions_without_a_normalisation_are_refused_with_the_reason(fn, words):
    with pytest.raises(UserError, match=words):
        Normalization.of(fn, "f")


@pytest.mark.parametrize("data", [{"shift": 0.1}, {"shift": 0.1, "scale": 0.0},
                                  {"shift": float("nan"), "scale": 1.0},
                                  {"shift": "0", "scale": 1.0}, [0.1, 1.0]])
def test_bad_normalisation_records_are_one_clear_error(data):
    with pytest.raises(UserError, match="normalization"):
        Normalization.from_dict(data)


# -- an Activation normalised: moments, gradients, every export -----------------------------------
from gp_activations.activation import Activation  # noqa: E402


@pytest.mark.parametrize("expr, params", [("mul(x, sigmoid(x))", []),
                                          ("add(tanh(x), mul(x, erf(x)))", [1, 3]),
                                          ("max(x, mul(x, x))", [])])
def test_a_normalised_activation_has_zero_mean_and_unit_variance(expr, params):
    act = Activation.from_string(expr, params=params).normalized()
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = act(z)
    assert abs(float(y.mean())) < 5e-3 and float(y.std()) == pytest.approx(1.0, abs=5e-3)
    plain = Activation.from_string(expr, params=params)(z)
    assert float(plain.std()) != pytest.approx(1.0, abs=0.05)  # it really changed something


def test_the_normalised_module_trains_its_scalars_through_the_constants():
    act = Activation.from_string("mul(x, sigmoid(x))", params=[3]).normalized()  # x σ(p x)
    module = act.module(num_channels=3)
    x = torch.randn(4, 3, 5)
    module(x).sum().backward()
    # d/dp of (x sigmoid(p x) - shift)/scale at p = 1, by hand: x^2 s (1 - s) / scale
    s = torch.sigmoid(x)
    expected = (x * x * s * (1 - s) / act.normalization.scale).sum(dim=(0, 2))
    assert torch.allclose(module.get_parameter(module.param_names[0]).grad, expected, atol=1e-5)


def test_every_export_of_a_normalised_function_computes_the_same_function():
    act = Activation.from_string("add(tanh(x), mul(x, erf(x)))", params=[1]).normalized()
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    want = act(x)
    namespace: dict = {}
    exec(act.torch_source(), namespace)  # noqa: S102 -- our own generated file
    exported = namespace["EvolvedActivation"]().double()
    assert torch.allclose(exported(x), want, atol=1e-12)
    assert torch.allclose(act.module().double()(x), want, atol=1e-12)
    again = Activation.from_json(act.to_json())
    assert again == act and torch.allclose(again(x), want)
    form = act.sympy(values={act.slot_names[0]: 1.0})  # sympy's numbers, not the torch code
    symbol = sorted(form.free_symbols, key=str)[0]
    for v in (-2.0, 0.5, 3.0):
        assert float(form.subs(symbol, v)) == pytest.approx(float(act(torch.tensor([v],
                                                                   dtype=torch.float64))))
    latex = act.latex()
    assert latex.startswith(r"\frac{") and f"{act.normalization.scale:.4f}"[:5] in latex
    assert act != act.with_normalization(None) and "normalized" in str(act)


def test_a_bad_normalisation_in_json_is_one_clear_error():
    data = Activation.from_string("tanh(x)").normalized().to_dict()
    data["normalization"] = {"shift": 0.0, "scale": -1.0}
    with pytest.raises(UserError, match="activation JSON: normalization"):
        Activation.from_json(data)


# -- a search that normalises its candidates -----------------------------------------------------
def test_a_normalising_search_trains_every_candidate_normalised_and_exports_it(tmp_path):
    from search_helpers import CHEAP, HELPERS

    from gp_activations.report import export_from_run
    from gp_activations.search import SearchConfig, run_search

    cfg = SearchConfig(**dict(CHEAP, fitness=f"{HELPERS}:output_moments_fitness",
                              normalize=True, executor="serial"))
    run_search(cfg, out=tmp_path / "run", progress=False)
    from gp_activations.search import RunStore

    store = RunStore.open(tmp_path / "run", readonly=True)
    done = [c for c in store.candidates() if c.fitness is not None]
    store.close()
    assert len(done) >= 4
    for cand in done:  # every one trained as (f - shift) / scale: unit std, zero mean
        assert abs(cand.metrics["mean"]) < 1e-4 and cand.metrics["std"] == pytest.approx(1, abs=1e-4)
    assert export_from_run(tmp_path / "run", 1, "latex").startswith(r"\frac{")


def test_normalising_a_lookup_search_is_refused():
    from gp_activations.search import SearchConfig

    with pytest.raises(UserError, match="normalize = false"):
        SearchConfig(dataset="mnist1d", model="cnn1d", lookup="benchmarks/tabular/mnist1d_cnn1d.csv",
                     primitives="benchmarks/tabular/primitives.py", param_variants=0,
                     normalize=True, train={"epochs": 12})


@pytest.mark.parametrize("expr, words", [
    ("div(x, x)", "constant"),                      # 1 except the protected 0/0
    ("div(one, x)", "shifted by half a step"),      # the protected pole dominates the grid
    ("cosh(cosh(x))", "within ±6"),                 # a variance from far tails only
])
def test_functions_whose_moments_are_artefacts_are_refused(expr, words):
    with pytest.raises(UserError, match=words):
        Activation.from_string(expr).normalized()


def test_the_constants_do_not_depend_on_the_thread_count():
    act = Activation.from_string("mul(x, sigmoid(x))")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = Normalization.of(act)
        torch.set_num_threads(2)
        two = Normalization.of(act)
    finally:
        torch.set_num_threads(threads)
    assert one == two  # bit for bit: the same function in a worker and in an export
    assert str(Normalization(-0.5, 2.0)) == "(f(x) + 0.5) / 2"


def test_the_normalisation_benchmark_runs():
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(root / "benchmarks" / "normalization.py"), "--quick",
                        "--out", f"{tmp}/n.json"], capture_output=True, text=True, check=True,
                       timeout=300, cwd=root)
        rows = json.loads(Path(f"{tmp}/n.json").read_text())
    assert [r["function"] for r in rows] == ["relu", "silu"]
    for r in rows:  # the stored constants are the function's moments (textbook for ReLU)
        assert len(r["plain"]) == len(r["normalised"]) == 2
    assert rows[0]["normalization"]["shift"] == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-6)

"""gp_activations.statistics: fixed-sample tests against worked examples, the sequential rule
and the race on simulated draws (fixed numpy seeds, deterministic).

Oracles are computed another way than the module does: the t statistics and Welch-Satterthwaite
df from the textbook formulas written out here, p-values quoted from R's output for the
``sleep`` data, Friedman's statistic from its closed form, power by Monte Carlo, the
sequential false-positive rate by a vectorised re-implementation of the looks.

Numbers these tests measured when written (alpha 0.05, looks at 3..10 seeds, step 1,
O'Brien-Fleming-type spending, per-seed std 0.4):
  * false-positive rate, SequentialTest.decide, 1,000 null evaluations, generator seed 0:
    Welch 0.044, paired 0.043.  Over seeds 0..9 (not asserted): Welch 0.034-0.045 (mean 0.039),
    paired 0.037-0.060 (mean 0.045; seeds 2 and 4 gave 0.060 and 0.057 -- 1,000 draws have a
    standard error of 0.007, so the precise check is the next one);
  * vectorised, 100,000 each: Welch 0.041 (std ratio 1), 0.046 (ratio 2), 0.049 (ratio 4);
    paired 0.049; a plain t-test at 0.05 repeated at every look: 0.145 (5,000);
  * power at a true difference 0.6 (Welch, independent arms): 0.837 over 1,000 evaluations,
    mean 7.9 seeds per arm; at a difference 1.6: always found, mean 4.85 seeds;
  * race, 1 clearly best (+1.0) vs 3 others: the best was never dropped and was the only survivor
    in 189/200 races (mean 7.75 seeds); 5 identical candidates: all 5 survived to 10 seeds in
    196/200 races.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import stdtr

from gp_activations.errors import UserError
from gp_activations.statistics import (Decision, Race, SequentialTest, Status, Summary,
                                       format_p, friedman_p, min_detectable_difference,
                                       paired_t, race_survivors, spent_alpha, summarize,
                                       welch_p)

# Student's sleep data (Cushny & Peebles 1905), R's ``sleep``: extra hours of sleep of the
# same 10 patients under two drugs.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def _mean_var(x):
    m = sum(x) / len(x)
    return m, sum((v - m) ** 2 for v in x) / (len(x) - 1)


# ------------------------------------------------------------------------------------------
# fixed-sample tests


def test_welch_matches_the_worked_sleep_example():
    # by hand: t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2), Welch-Satterthwaite df
    m1, v1 = _mean_var(SLEEP_1)
    m2, v2 = _mean_var(SLEEP_2)
    se1, se2 = v1 / 10, v2 / 10
    t = (m1 - m2) / math.sqrt(se1 + se2)
    df = (se1 + se2) ** 2 / (se1 ** 2 / 9 + se2 ** 2 / 9)
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939
    assert t == pytest.approx(-1.8608, abs=5e-5)
    assert df == pytest.approx(17.776, abs=5e-4)
    assert welch_p(SLEEP_1, SLEEP_2) == pytest.approx(0.07939, abs=5e-6)
    assert welch_p(SLEEP_2, SLEEP_1) == welch_p(SLEEP_1, SLEEP_2)
    # t-table, df 17 and 18: two-sided 0.10 at 1.740/1.734, 0.05 at 2.110/2.101
    assert 0.05 < welch_p(SLEEP_1, SLEEP_2) < 0.10


def test_paired_t_matches_the_worked_sleep_example():
    d = [a - b for a, b in zip(SLEEP_1, SLEEP_2)]
    md, vd = _mean_var(d)
    t = md / math.sqrt(vd / 10)
    # R: t.test(extra ~ group, data = sleep, paired = TRUE) -> t = -4.0621, df = 9, p = 0.002833
    assert t == pytest.approx(-4.0621, abs=5e-5)
    assert paired_t(SLEEP_1, SLEEP_2) == pytest.approx(0.002833, abs=5e-7)
    # t-table df 9: two-sided 0.01 at 3.250, 0.001 at 4.781
    assert 0.001 < paired_t(SLEEP_1, SLEEP_2) < 0.01


def test_welch_edge_cases_match_evaluate_semantics():
    assert welch_p([1.0], [1.0, 2.0]) is None and welch_p([1.0, 2.0], []) is None
    assert welch_p([90.0, 90.0], [90.0, 90.0, 90.0]) == 1.0  # both constant, same value
    assert welch_p([90.0, 90.0], [91.0, 91.0]) == 0.0  # both constant, different
    p = welch_p([90.0, 90.0, 90.0], [89.0, 90.0, 91.0])  # one constant: an ordinary test
    # t = 0 (same means) -> p = 1
    assert p == pytest.approx(1.0)
    p = welch_p([90.0, 90.0, 90.0], [88.0, 89.0, 90.0])
    # by hand: t = 1 / sqrt(1/3), df = n - 1 = 2 (the constant arm adds nothing)
    assert p == pytest.approx(2 * stdtr(2, -math.sqrt(3)), rel=1e-12)
    assert welch_p(iter([1.0, 2.0, 3.0]), (4.0, 5.0, 6.5)) is not None  # any iterable


def test_welch_agrees_with_scipy_on_random_samples():
    from scipy import stats

    rng = np.random.default_rng(3)
    for _ in range(50):
        a = rng.normal(70, rng.uniform(0.1, 3), rng.integers(2, 12)).tolist()
        b = rng.normal(70, rng.uniform(0.1, 3), rng.integers(2, 12)).tolist()
        assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue,
                                              rel=1e-9, abs=1e-15)
        c = rng.normal(70, 1, len(a)).tolist()
        assert paired_t(a, c) == pytest.approx(stats.ttest_rel(a, c).pvalue, rel=1e-9)


def test_paired_edge_cases():
    assert paired_t([1.0], [2.0]) is None
    assert paired_t([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == 0.0  # same nonzero shift every seed
    assert paired_t([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # no difference at all
    with pytest.raises(UserError, match="one value per seed"):
        paired_t([1.0, 2.0], [1.0, 2.0, 3.0])


def test_format_p():
    assert format_p(None) == ""
    assert format_p(0.07939) == "0.079"
    assert format_p(0.001) == "0.001"
    assert format_p(0.0002833) == "2.8e-04"
    assert format_p(0.0) == "0.0e+00"


def test_summary():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert isinstance(s, Summary) and s.n == 4 and s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof 1
    assert s.sem == pytest.approx(math.sqrt(5 / 3) / 2)
    assert s.values == (1.0, 2.0, 3.0, 4.0)
    one = summarize([7.0])
    assert one.mean == 7.0 and one.std == 0.0 and math.isnan(one.sem)
    assert math.isnan(summarize([]).mean) and summarize([]).n == 0
    with pytest.raises(Exception):
        s.mean = 3.0  # frozen


def test_friedman_against_closed_form_and_scipy():
    from scipy import stats

    # every seed ranks the 3 treatments the same way: Q = n (k - 1) = 8, chi2(2) sf = exp(-Q/2)
    block = [[1.0, 1.1, 0.9, 1.2], [2.0, 2.2, 2.1, 2.3], [3.0, 3.1, 3.3, 3.2]]
    assert friedman_p(block) == pytest.approx(math.exp(-4.0), rel=1e-12)
    rng = np.random.default_rng(4)
    for _ in range(20):
        b = rng.normal(0, 1, (4, 6)).round(1)  # rounding makes ties
        assert friedman_p(b) == pytest.approx(stats.friedmanchisquare(*b).pvalue, rel=1e-9)
    assert friedman_p([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]) == 1.0  # all tied
    assert friedman_p([[1.0, 2.0]]) is None


# ------------------------------------------------------------------------------------------
# the sequential rule

WELCH = SequentialTest(alpha=0.05, min_seeds=3, max_seeds=10)
PAIRED = SequentialTest(alpha=0.05, min_seeds=3, max_seeds=10, paired=True)


def _simulate(test, delta, count, seed, std=0.4):
    rng = np.random.default_rng(seed)
    decisions = [test.decide(rng.normal(delta, std, 10), rng.normal(0.0, std, 10))
                 for _ in range(count)]
    rate = sum(d.status is Status.DIFFERENT for d in decisions) / count
    return rate, float(np.mean([d.n for d in decisions])), decisions


@pytest.mark.parametrize("test,seed,limit", [(WELCH, 0, 0.05), (PAIRED, 0, 0.05)])
def test_sequential_false_positive_rate_with_identical_functions(test, seed, limit):
    rate, mean_n, decisions = _simulate(test, 0.0, 1000, seed)
    print(f"{'paired' if test.paired else 'Welch'} FPR over 1000: {rate:.3f}")
    assert rate <= limit
    assert all(d.decided for d in decisions)
    assert mean_n > 9.5  # nearly all run to the last look


def _vectorised_fpr(levels, paired, ratio, sims, seed, plain=False):
    """The looks re-implemented on arrays: t and Welch df from the formulas, p from stdtr."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((sims, 10)) * 0.4
    b = rng.standard_normal((sims, 10)) * 0.4 * ratio
    rejected = np.zeros(sims, bool)
    for k, n in enumerate(range(3, 11)):
        x, y = a[:, :n], b[:, :n]
        if paired:
            d = x - y
            t, df = d.mean(1) / np.sqrt(d.var(1, ddof=1) / n), n - 1
        else:
            vx, vy = x.var(1, ddof=1) / n, y.var(1, ddof=1) / n
            t = (x.mean(1) - y.mean(1)) / np.sqrt(vx + vy)
            df = (vx + vy) ** 2 / (vx ** 2 / (n - 1) + vy ** 2 / (n - 1))
        rejected |= 2 * stdtr(df, -np.abs(t)) <= (0.05 if plain else levels[k])
    return float(rejected.mean())


def test_sequential_rate_on_many_simulations_and_unequal_variances():
    rates = {("Welch", r): _vectorised_fpr(WELCH.boundaries, False, r, 100_000, 10 + i)
             for i, r in enumerate((1.0, 2.0, 4.0))}
    rates["paired", 1.0] = _vectorised_fpr(PAIRED.boundaries, True, 1.0, 100_000, 20)
    print(rates)
    assert all(v <= 0.05 for v in rates.values()), rates
    # the oracle can fail: a plain t-test at 0.05 repeated at every look is far above alpha
    naive = _vectorised_fpr(None, False, 1.0, 5_000, 30, plain=True)
    print("plain t-test at every look:", naive)
    assert naive > 0.1


def test_sequential_power_and_early_stopping():
    power, mean_n, _ = _simulate(WELCH, 0.6, 1000, 3)
    print(f"power at 0.6 (std 0.4): {power:.3f}, mean seeds {mean_n:.2f}")
    assert power >= 0.8
    big, mean_big, _ = _simulate(WELCH, 1.6, 300, 4)
    print(f"power at 1.6: {big:.3f}, mean seeds {mean_big:.2f}")
    assert big == 1.0 and mean_big <= 6.0


def test_decide_is_a_replay_of_the_stored_values():
    t = SequentialTest(min_seeds=3, max_seeds=10, step=2)  # looks 3, 5, 7, 9, 10
    assert t.looks == (3, 5, 7, 9, 10)
    d = t.decide([80.0, 81.0], [79.0, 80.0, 81.0])
    assert d.status is Status.MORE_SEEDS and d.p is None and d.look == 0
    assert d.seeds_needed == 1 and d.next_n == 3
    # a huge difference is decided at the first look that reaches the boundary ...
    a = [90.0, 90.1, 89.9, 90.05, 89.95, 90.0, 90.1]
    b = [80.0, 80.1, 79.9, 80.05, 79.95, 80.0, 80.1]
    first = t.decide(a[:3], b[:3])
    assert first.status is Status.DIFFERENT and first.look == 1 and first.n == 3
    # ... and storing more seeds afterwards does not change that decision
    assert t.decide(a, b) == first
    # undecided values: wait for the next look (6 stored -> look at 5 done, 7 next)
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 0.4, 10).tolist(), rng.normal(0, 0.4, 10).tolist()
    mid = t.decide(x[:6], y[:6])
    assert mid.status is Status.MORE_SEEDS and mid.look == 2 and mid.n == 5
    assert mid.boundary == t.boundaries[1] and mid.seeds_needed == 1 and mid.next_n == 7
    end = t.decide(x, y)
    assert end.status is Status.UNDECIDED_AT_MAX and end.look == 5 and end.n == 10
    assert end.seeds_needed == 0 and end.min_detectable > 0
    assert isinstance(end, Decision)


def test_levels_follow_the_spending_function():
    b = WELCH.boundaries
    assert all(x < y for x, y in zip(b, b[1:]))  # O'Brien-Fleming type: strict early
    assert b[-1] < 0.05
    assert b == SequentialTest().boundaries  # deterministic
    pocock = Race().boundaries  # paired, Pocock type
    assert pocock[0] > PAIRED.boundaries[0] and pocock[-1] < PAIRED.boundaries[-1]
    assert spent_alpha(1.0, 0.05) == pytest.approx(0.05)
    assert spent_alpha(1.0, 0.05, "pocock") == pytest.approx(0.05)
    assert spent_alpha(0.3, 0.05) < spent_alpha(0.3, 0.05, "pocock")


# ------------------------------------------------------------------------------------------
# minimum detectable difference


def test_min_detectable_difference_approaches_the_normal_formula():
    from scipy.stats import norm

    for n in (500, 2000):
        hand = (norm.isf(0.025) + norm.ppf(0.8)) * 0.4 * math.sqrt(2 / n)
        assert min_detectable_difference(0.4, n) == pytest.approx(hand, rel=0.005)
    # 1/sqrt(n) scaling for paired differences
    hand = (norm.isf(0.025) + norm.ppf(0.8)) * 0.4 / math.sqrt(2000)
    assert min_detectable_difference(0.4, 2000, paired=True) == pytest.approx(hand, rel=0.005)
    assert min_detectable_difference(0.0, 10) == 0.0


@pytest.mark.parametrize("paired", [False, True])
def test_min_detectable_difference_has_the_stated_power_by_simulation(paired):
    n, std = 6, 0.4
    delta = min_detectable_difference(std, n, 0.05, 0.8, paired=paired)
    assert delta > (2.8 * std * (1 / math.sqrt(n) if paired else math.sqrt(2 / n)))  # small n
    rng = np.random.default_rng(6)
    sims = 40_000
    if paired:
        d = rng.normal(delta, std, (sims, n))
        t, df = d.mean(1) / np.sqrt(d.var(1, ddof=1) / n), n - 1
    else:
        x, y = rng.normal(delta, std, (sims, n)), rng.normal(0, std, (sims, n))
        sp = np.sqrt((x.var(1, ddof=1) + y.var(1, ddof=1)) / 2)
        t, df = (x.mean(1) - y.mean(1)) / (sp * math.sqrt(2 / n)), 2 * n - 2
    power = float((2 * stdtr(df, -np.abs(t)) <= 0.05).mean())
    assert power == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("n, alpha", [(5, 2.0713709181757113e-4), (8, 4.0014072790661905e-3)])
def test_min_detectable_difference_at_the_tiny_levels_of_early_looks(n, alpha):
    """The first looks of SequentialTest(0.05, 5, 15) ask for p below 2e-4 (n = 5) and 4e-3
    (n = 8): scipy's noncentral t lower tail underflows to NaN there (it crashed evaluate's
    table).  The value still has the stated power, by simulation."""
    delta = min_detectable_difference(1.0, n, alpha, 0.8)
    assert math.isfinite(delta)
    rng = np.random.default_rng(n)
    sims = 60_000
    x, y = rng.normal(delta, 1.0, (sims, n)), rng.normal(0.0, 1.0, (sims, n))
    sp = np.sqrt((x.var(1, ddof=1) + y.var(1, ddof=1)) / 2)
    t, df = (x.mean(1) - y.mean(1)) / (sp * math.sqrt(2 / n)), 2 * n - 2
    power = float((2 * stdtr(df, -np.abs(t)) <= alpha).mean())
    assert power == pytest.approx(0.8, abs=0.01)


# ------------------------------------------------------------------------------------------
# racing


def test_race_with_a_clearly_best_candidate():
    race = Race(alpha=0.05, min_seeds=3, max_seeds=10)
    rng = np.random.default_rng(7)
    sole, kept, seeds = 0, 0, []
    for _ in range(200):
        results = {"best": rng.normal(1.0, 0.4, 10).tolist()}
        results.update({f"other{i}": rng.normal(0.0, 0.4, 10).tolist() for i in range(3)})
        state = race.state(results)
        assert state.finished
        sole += state.survivors == ("best",)
        kept += "best" not in state.eliminated
        seeds.append(state.n)
    print(f"clear best: sole survivor {sole}/200, never dropped {kept}/200, "
          f"mean seeds {np.mean(seeds):.2f}")
    assert kept == 200 and sole >= 180
    assert np.mean(seeds) < 10


def test_race_with_identical_candidates_mostly_keeps_them_all():
    race = Race(alpha=0.05, min_seeds=3, max_seeds=10)
    rng = np.random.default_rng(8)
    all_kept = 0
    for _ in range(200):
        state = race.state({f"c{i}": rng.normal(0.0, 0.4, 10).tolist() for i in range(5)})
        assert state.finished and state.n == 10 and state.look == len(race.looks)
        all_kept += len(state.survivors) == 5
    print(f"identical: all 5 kept in {all_kept}/200 races")
    assert all_kept >= 190


def test_race_replays_and_waits_for_seeds():
    a = [90.0, 90.1, 89.9, 90.0, 90.05, 90.0]
    b = [80.0, 80.1, 79.9, 80.0, 80.05]
    c = [89.95, 89.8, 89.89, 89.8, 89.95, 89.9]  # a bit below a on every seed, by 0.01-0.3
    # Friedman with k = 3 and n = 3 or 4 seeds has p >= exp(-n) > the looks' levels: no drop
    assert math.exp(-4.0) > Race().boundaries[1]
    state = race_survivors({"a": a, "b": b[:3], "c": c}, alpha=0.05, min_seeds=3, max_seeds=10)
    assert state.eliminated == {} and state.look == 1 and state.n == 3
    assert not state.finished and state.seeds_needed == 1 and state.next_n == 4  # b lacks seed 3
    # at 5 seeds Friedman fires (every seed ranks a > c > b: p = exp(-5) < level); b, 10 below
    # a on every seed, is dropped; c (paired t p = 0.07) stays
    state = race_survivors({"a": a[:5], "b": b, "c": c[:5]})
    assert state.eliminated == {"b": 5} and state.survivors == ("a", "c")
    assert state.leader == "a" and state.p_values["c"] > 0.05 and state.look == 3
    assert state.friedman_p == pytest.approx(math.exp(-5.0))
    assert state.seeds_needed == 1 and state.next_n == 6
    # a dropped candidate needs no later seeds: the race goes on with a and c only
    later = race_survivors({"a": a, "b": b, "c": c})
    assert later.eliminated == {"b": 5} and later.look == 4 and later.n == 6
    # with two candidates the paired t-test alone decides (constant shift: p = 0)
    two = race_survivors({"a": a[:3], "b": b[:3]})
    assert two.survivors == ("a",) and two.eliminated == {"b": 3} and two.finished
    assert two.p_values["b"] < 0.001
    waiting = race_survivors({"a": [1.0, 2.0], "b": [1.5, 2.5]})
    assert waiting.look == 0 and waiting.seeds_needed == 1 and waiting.next_n == 3
    assert not waiting.finished and set(waiting.survivors) == {"a", "b"}


# ------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("kwargs,message", [
    (dict(min_seeds=1), "min_seeds must be at least 2"),
    (dict(min_seeds=5, max_seeds=4), "cannot hold min_seeds=5"),
    (dict(alpha=0.0), "alpha must be between 0 and 1"),
    (dict(alpha=1.5), "alpha must be between 0 and 1"),
    (dict(step=0), "step must be at least 1"),
    (dict(min_seeds=2.5), "whole number"),
    (dict(spending="bonferroni"), "unknown alpha spending"),
])
def test_bad_design_is_a_user_error(kwargs, message):
    for cls in (SequentialTest, Race):
        with pytest.raises(UserError, match=message) as info:
            cls(**kwargs)
        assert "\n" not in str(info.value)


def test_bad_values_are_user_errors():
    with pytest.raises(UserError, match="finite"):
        WELCH.decide([1.0, float("nan"), 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(UserError, match="numbers"):
        WELCH.decide([1.0, None, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(UserError, match="one value per seed"):
        PAIRED.decide([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(UserError, match="at least two candidates"):
        race_survivors({"a": [1.0, 2.0, 3.0]})
    with pytest.raises(UserError, match="n must be"):
        min_detectable_difference(0.4, 1)
    with pytest.raises(UserError, match="power must be"):
        min_detectable_difference(0.4, 10, alpha=0.05, power=0.04)
    with pytest.raises(UserError, match="std must be"):
        min_detectable_difference(-1.0, 10)

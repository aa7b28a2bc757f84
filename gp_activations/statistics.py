"""Statistics for comparing activation functions over training seeds.

Pure Python + numpy/scipy (no torch); the only import from the package is
:class:`~gp_activations.errors.UserError`.

Fixed-sample pieces (drop-in equivalents of ``evaluate.welch_p`` / ``evaluate.format_p``)
---------------------------------------------------------------------------------------
* :func:`welch_p` -- two-sided Welch t-test p-value; ``None`` when either sample has fewer
  than two values; when *both* samples have zero variance it is 1.0 for equal means and 0.0
  for different values (scipy would return nan); otherwise the value of scipy's
  ``ttest_ind(equal_var=False)``, computed directly from the formulas (faster).
* :func:`paired_t` -- two-sided paired t-test p-value; ``None`` for fewer than two pairs; when
  all differences are equal (zero variance of the differences) it is 0.0 if the common
  difference is nonzero and 1.0 if it is zero (the t statistic is +-inf or 0/0: a constant
  nonzero shift on every seed is taken as a certain difference, no shift as none).
* :func:`format_p`, :class:`Summary` / :func:`summarize` (mean, sample std with ddof=1,
  standard error).  ``std`` follows the tables' existing convention: 0.0 for n <= 1;
  ``sem`` is nan for n < 2 (undefined, and nan cannot be misread as certainty).

Sequential comparison (:class:`SequentialTest`)
-----------------------------------------------
Seeds are added in rounds and the comparison is looked at after each round; a plain t-test
repeated at every look inflates the false-positive rate (Welch at 0.05 after each of 3..10
seeds: 0.145, measured).  The rule used here is a **group-sequential design with a Lan-DeMets alpha
spending function** (Lan & DeMets, Biometrika 70:659-663, 1983; Jennison & Turnbull, *Group
Sequential Methods with Applications to Clinical Trials*, 2000, ch. 7):

* the planned looks are ``n = min_seeds, min_seeds+step, ..., max_seeds`` seeds per arm
  (``max_seeds`` is always the last look); information fraction ``t_k = n_k / max_seeds``;
* the spending function ``alpha(t)`` says how much of the two-sided alpha may have been used
  by fraction ``t``: O'Brien-Fleming type ``2 - 2 Phi(z_{1-alpha/2} / sqrt(t))`` (default for
  :class:`SequentialTest`) or Pocock type ``alpha ln(1 + (e - 1) t)`` (default for racing);
* the variance is unknown and the looks are small (3 seeds: 2-4 degrees of freedom), so the
  classical z-scale boundaries (Brownian-motion model; recursive integration of Armitage,
  McPherson & Rowe 1969), applied as nominal levels to t-test p-values -- Jennison & Turnbull's
  "significance level approach" -- were measured here to exceed alpha: 0.057 for the paired
  test with looks at 3..10 seeds (200,000 simulated null evaluations).  Instead each look's
  **nominal significance level** ``p_k`` (applied to that look's Welch or paired t-test
  p-value) is **calibrated by simulation of the exact null**: ``CALIBRATION_PATHS`` (2^18)
  simulated evaluations under the null (fixed generator seed, so a design is a deterministic
  function of its parameters; cached), and ``p_k`` is chosen so that the fraction of them
  first rejected at look k is exactly the spending increment ``alpha*(t_k) - alpha*(t_{k-1})``
  for ``alpha* = alpha - 3 SE`` (SE = the calibration's Monte Carlo standard error), which
  keeps the true rate at or below alpha despite the calibration noise.  The paired t
  statistics' null distribution does not depend on the mean or the std, so the paired
  calibration is exact up to Monte Carlo error.  Welch's null distribution depends on the
  arms' std ratio (Welch's df is an approximation: even a fixed-sample Welch test at 10 seeds
  rejects 5.1 % at ratio 2-5, and levels calibrated at ratio 1 alone reached 6.1 % at ratio
  5-10), so each look's level is the smallest of those calibrated at the
  std ratios ``WELCH_STD_RATIOS`` (1 to 30); a smaller level at every look can only reject
  less, so the rate is <= alpha at each of those ratios.  Measured with independent simulations
  (tests/test_statistics.py and the numbers in its docstring): false-positive rate below 0.05
  for 3..10 seeds, step 1, alpha 0.05, Welch and paired.

Why O'Brien-Fleming type for a final comparison: it spends almost nothing at the first looks,
so the last look's nominal level stays close to alpha (about 0.03 for 3..10 seeds) and the
power at ``max_seeds`` is nearly that of a fixed-sample test, while a very large difference
still stops early.  Pocock type spends evenly: more early stops, lower final power.  There is
no futility boundary: a comparison that is not decided at ``max_seeds`` is reported as
``UNDECIDED_AT_MAX`` (not "equal"), together with the smallest difference the design could
have detected (:func:`min_detectable_difference`).

The test is stateless ("resumable from the stored values"): :meth:`SequentialTest.decide`
replays every planned look that the stored values reach, in seed order, and stops at the first
look that crosses its boundary -- so calling it again with more values than needed gives the
same decision, and nothing but the accuracies has to be stored.

Racing (:class:`Race`, :func:`race_survivors`)
----------------------------------------------
For a final race among the top-k candidates plus baselines, seeds are paired across candidates
(seed i is trained for every surviving candidate).  At each planned look (same grid and
spending as above, Pocock type by default because dropping clear losers early is the point of
racing) the race, as in F-race (Birattari et al., GECCO 2002; irace, Lopez-Ibanez et al. 2016):

1. with three or more survivors, runs a **Friedman test** on the seeds x survivors block; only
   if its p-value is at most the look's nominal level are candidates dropped (this gates the
   post-hoc tests, so with all candidates equal an elimination needs the omnibus test to fire);
2. compares every other survivor with the **leader** (highest mean over the look's seeds) by a
   two-sided **paired t-test** and drops those significant under a **Holm** step-down correction
   over the ``m - 1`` comparisons at the look's nominal level (with two survivors: the paired
   t-test alone).

Paired t rather than Friedman's rank post-hoc: accuracies are continuous and nearly normal
across seeds, and the t-test uses the size of the differences (ranks at 3..10 seeds cannot
reach small nominal levels).  The leader is chosen from the data, which biases "leader vs
other" towards significance; the Friedman gate and the two-sided test counter that.  The race
is finished when one survivor remains or the last look (``max_seeds``) is done.  Like
:class:`SequentialTest` it is a replay over the stored values: a candidate dropped at a look
does not need values for later seeds.

Minimum detectable difference
-----------------------------
:func:`min_detectable_difference` solves the exact power equation of the two-sided t-test with
the noncentral t distribution (``scipy.stats.nct``): two arms of ``n`` seeds each with common
std ``sigma`` (df ``2n - 2``, noncentrality ``delta / (sigma sqrt(2/n))``), or ``n`` paired
differences with std ``sigma`` (df ``n - 1``, noncentrality ``delta / (sigma / sqrt(n))``).  For
large ``n`` it approaches ``(z_{1-alpha/2} + z_power) sigma sqrt(2/n)``.
"""

from __future__ import annotations

import enum
import math
import statistics as _stats
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import UserError

SPENDING = ("obrien-fleming", "pocock")


# ---------------------------------------------------------------------------------------------
# fixed-sample statistics


def _moments(x: list) -> tuple:
    """Mean and sum of squared deviations (compensated sums: accurate for tight samples)."""
    mean = math.fsum(x) / len(x)
    return mean, math.fsum((v - mean) ** 2 for v in x)


def _t_p(t: float, df: float) -> float:
    """Two-sided p-value of a t statistic."""
    from scipy.special import stdtr

    return float(2.0 * stdtr(df, -abs(t)))


def welch_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided Welch's t-test p-value, or None when it is undefined (n < 2).

    Both samples with zero variance: 1.0 when their (common) values are equal, else 0.0.
    Otherwise the same statistic and Welch-Satterthwaite df as scipy's
    ``ttest_ind(equal_var=False)``, computed directly (scipy's wrapper costs milliseconds a
    call, and the sequential test and the race call it many times)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):  # exact test, like statistics.pvariance == 0
        return 1.0 if a[0] == b[0] else 0.0
    ma, ssa = _moments(a)
    mb, ssb = _moments(b)
    va, vb = ssa / (na - 1) / na, ssb / (nb - 1) / nb  # squared standard errors
    se2 = va + vb
    df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    return _t_p((ma - mb) / math.sqrt(se2), df)


def paired_t(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided paired t-test p-value of ``a[i] - b[i]``, or None for fewer than two pairs.

    All differences equal (zero variance): 0.0 when the common difference is nonzero, 1.0 when
    it is zero.  Samples of different lengths are a :class:`UserError`.  Otherwise the same
    as scipy's ``ttest_rel`` (computed directly, as :func:`welch_p`)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b):
        raise UserError(f"paired t-test needs one value per seed in both samples, "
                        f"got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        return None
    d = [x - y for x, y in zip(a, b)]
    if max(d) == min(d):
        return 0.0 if d[0] != 0 else 1.0
    md, ss = _moments(d)
    return _t_p(md / math.sqrt(ss / (n - 1) / n), n - 1)


def friedman_p(block: Sequence[Sequence[float]]) -> Optional[float]:
    """Friedman test p-value (chi-square approximation, ties corrected) for ``k >= 2``
    treatments (rows of ``block``) measured on the same ``n >= 2`` seeds (columns); 1.0 when
    every seed ties all treatments, None for fewer than two treatments or seeds."""
    from scipy.special import chdtrc
    from scipy.stats import rankdata

    x = np.asarray(block, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return None
    k, n = x.shape
    ranks = rankdata(x, axis=0)  # rank the treatments within each seed
    ties = 0.0
    for col in x.T:
        _, counts = np.unique(col, return_counts=True)
        ties += float(np.sum(counts ** 3 - counts))
    c = 1.0 - ties / (n * (k ** 3 - k))
    if c <= 0:
        return 1.0
    q = (12.0 / (n * k * (k + 1)) * float(np.sum(ranks.sum(axis=1) ** 2)) - 3.0 * n * (k + 1)) / c
    return float(chdtrc(k - 1, max(q, 0.0)))


def format_p(p: Optional[float]) -> str:
    """A p-value for a table: three decimals, or scientific notation below 0.001 (so that a
    highly significant result does not print as 0.000); "" for None."""
    if p is None:
        return ""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1; 0.0 for n <= 1 as in the result tables), standard error of
    the mean (nan for n < 2) and the values themselves; mean is nan for no values."""
    n: int
    mean: float
    std: float
    sem: float
    values: tuple


def summarize(values: Sequence[float]) -> Summary:
    values = tuple(values)
    n = len(values)
    mean = _stats.fmean(values) if n else float("nan")
    std = _stats.stdev(values) if n > 1 else 0.0
    sem = std / math.sqrt(n) if n > 1 else float("nan")
    return Summary(n, mean, std, sem, values)


# ---------------------------------------------------------------------------------------------
# alpha spending and group-sequential boundaries


def spent_alpha(t, alpha: float, spending: str = "obrien-fleming"):
    """Cumulative two-sided alpha a Lan-DeMets spending function allows by information
    fraction ``t`` (0 < t <= 1; ``alpha`` at t = 1)."""
    from scipy.stats import norm

    t = np.asarray(t, dtype=float)
    if spending == "obrien-fleming":
        return 2.0 * norm.sf(norm.isf(alpha / 2.0) / np.sqrt(t))
    if spending == "pocock":
        return alpha * np.log1p((math.e - 1.0) * t)
    raise UserError(f"unknown alpha spending {spending!r}; choose one of {', '.join(SPENDING)}")


CALIBRATION_PATHS = 1 << 18  # simulated null evaluations per design
CALIBRATION_SEED = 20240607  # fixed: a design's levels are a deterministic function of it


WELCH_STD_RATIOS = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 30.0)  # worst case over these


@lru_cache(maxsize=32)
def nominal_levels(looks: tuple, alpha: float, spending: str, paired: bool) -> tuple:
    """Nominal significance levels, one per look, for t-test p-values (see the module
    docstring): calibrated on ``CALIBRATION_PATHS`` simulated null evaluations so that the
    fraction first rejected at look k is the spending increment for ``alpha - 3 SE``; for
    Welch the smallest level over the arms' std ratios ``WELCH_STD_RATIOS``."""
    m = CALIBRATION_PATHS
    target = alpha - 3.0 * math.sqrt(alpha * (1.0 - alpha) / m)
    cum = np.floor(spent_alpha(np.asarray(looks) / looks[-1], target, spending) * m)
    counts = np.diff(np.concatenate([[0.0], cum])).astype(int)
    rng = np.random.default_rng(CALIBRATION_SEED)
    arms = 1 if paired else 2
    ratios = (1.0,) if paired else WELCH_STD_RATIOS
    s1, s2 = np.zeros((arms, m)), np.zeros((arms, m))
    alive = np.ones((len(ratios), m), bool)
    levels, k = [], 0
    for n in range(1, looks[-1] + 1):
        x = rng.standard_normal((arms, m))
        s1 += x
        s2 += x * x
        if n != looks[k]:
            continue
        mean = s1 / n
        var = np.maximum(s2 - n * mean * mean, 0.0) / (n - 1) / n  # variance of each mean
        level = 1.0
        for i, r in enumerate(ratios):
            if paired:
                t, df = mean[0] / np.sqrt(var[0]), n - 1.0
            else:  # arm b has r times arm a's std (common random numbers for all r)
                vb = var[1] * r * r
                se2 = var[0] + vb
                t = (mean[0] - r * mean[1]) / np.sqrt(se2)
                df = se2 * se2 / ((var[0] ** 2 + vb ** 2) / (n - 1))
            lv, rejected = _kth_smallest_p(t, df, alive[i], int(counts[k]))
            alive[i][rejected] = False
            level = min(level, lv)
        levels.append(level)
        k += 1
    return tuple(levels)


def _kth_smallest_p(t, df, alive, c: int):
    """The c-th smallest two-sided t p-value among the ``alive`` paths, and the indices of the
    alive paths at or below it ((0.0, none) for c = 0).  The exact p is computed only where the
    normal-tail lower bound 2 Phi(-|t|) <= p could put a path among the c smallest."""
    from scipy.special import ndtr, stdtr

    if c <= 0:
        return 0.0, np.zeros(0, dtype=np.intp)
    lower = np.where(alive, 2.0 * ndtr(-np.abs(t)), np.inf)
    n_alive = int(alive.sum())
    q = min(4 * c, n_alive)
    while True:
        cut = np.partition(lower, q - 1)[q - 1]
        idx = np.flatnonzero(lower <= cut)
        p = 2.0 * stdtr(df if np.ndim(df) == 0 else df[idx], -np.abs(t[idx]))
        level = float(np.partition(p, c - 1)[c - 1])
        if level <= cut or q == n_alive:  # no path outside idx can have p <= level
            return level, idx[p <= level]
        q = min(4 * q, n_alive)


def _looks(min_seeds: int, max_seeds: int, step: int) -> tuple:
    looks = list(range(min_seeds, max_seeds + 1, step))
    if looks[-1] != max_seeds:
        looks.append(max_seeds)
    return tuple(looks)


def _check_design(alpha, min_seeds, max_seeds, step, spending) -> None:
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    for name, v in (("min_seeds", min_seeds), ("max_seeds", max_seeds), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{name} must be a whole number, got {v!r}")
    if min_seeds < 2:
        raise UserError(f"min_seeds must be at least 2 (a t-test needs two seeds per arm), "
                        f"got {min_seeds}")
    if max_seeds < min_seeds:
        raise UserError(f"a budget of max_seeds={max_seeds} cannot hold min_seeds={min_seeds}")
    if step < 1:
        raise UserError(f"step must be at least 1 seed, got {step}")
    if spending not in SPENDING:
        raise UserError(f"unknown alpha spending {spending!r}; choose one of {', '.join(SPENDING)}")


def _finite(name, values) -> list:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{name}: accuracies must be numbers") from None
    if not all(math.isfinite(v) for v in out):
        raise UserError(f"{name}: accuracies must be finite (leave failed seeds out)")
    return out


class _Design:
    def __init__(self, alpha, min_seeds, max_seeds, step, spending, paired):
        _check_design(alpha, min_seeds, max_seeds, step, spending)
        self.alpha, self.min_seeds, self.max_seeds = float(alpha), min_seeds, max_seeds
        self.step, self.spending = step, spending
        self.looks = _looks(min_seeds, max_seeds, step)
        # nominal two-sided significance level applied to each look's t-test p-value
        self.nominal = nominal_levels(self.looks, self.alpha, spending, bool(paired))


# ---------------------------------------------------------------------------------------------
# sequential two-arm comparison


class Status(enum.Enum):
    MORE_SEEDS = "more seeds"  # no boundary crossed yet; add seeds_needed seeds per arm
    DIFFERENT = "different"  # a look's p-value reached its boundary
    UNDECIDED_AT_MAX = "undecided at max"  # max_seeds reached without crossing


@dataclass(frozen=True)
class Decision:
    status: Status
    p: Optional[float]  # p-value at the last look evaluated (None before the first look)
    look: int  # 1-based index of the last look evaluated (0: none yet)
    n: int  # seeds per arm used at that look
    boundary: Optional[float]  # nominal significance level of that look
    seeds_needed: int  # more seeds per arm before the next look (0 once decided)
    next_n: Optional[int] = None  # seeds per arm of the next look (None once decided)
    mean_difference: Optional[float] = None  # mean(a) - mean(b) at that look
    min_detectable: Optional[float] = None  # UNDECIDED_AT_MAX: smallest difference with 80 % power

    @property
    def decided(self) -> bool:
        return self.status is not Status.MORE_SEEDS


class SequentialTest:
    """Group-sequential two-sided t-test of ``a`` vs ``b`` with looks at ``min_seeds``,
    ``min_seeds + step``, ..., ``max_seeds`` seeds per arm (see the module docstring).

    ``paired=True``: seed i of ``a`` and of ``b`` share everything but the activation (paired
    t-test on the differences); otherwise Welch's t-test."""

    def __init__(self, alpha: float = 0.05, min_seeds: int = 3, max_seeds: int = 10,
                 step: int = 1, paired: bool = False, spending: str = "obrien-fleming"):
        self.paired = bool(paired)
        self._design = _Design(alpha, min_seeds, max_seeds, step, spending, self.paired)

    alpha = property(lambda self: self._design.alpha)
    min_seeds = property(lambda self: self._design.min_seeds)
    max_seeds = property(lambda self: self._design.max_seeds)
    step = property(lambda self: self._design.step)
    spending = property(lambda self: self._design.spending)
    looks = property(lambda self: self._design.looks)
    boundaries = property(lambda self: self._design.nominal, doc="nominal p-level per look")

    def __repr__(self):
        return (f"SequentialTest(alpha={self.alpha}, min_seeds={self.min_seeds}, "
                f"max_seeds={self.max_seeds}, step={self.step}, paired={self.paired}, "
                f"spending={self.spending!r})")

    def p_value(self, a: Sequence[float], b: Sequence[float]) -> Optional[float]:
        return paired_t(a, b) if self.paired else welch_p(a, b)

    def decide(self, a: Sequence[float], b: Sequence[float]) -> Decision:
        """The decision from the stored per-seed values (in seed order; failed seeds left out).

        Replays every planned look the values reach and stops at the first that crosses its
        boundary; extra values past the deciding look are ignored."""
        a, b = _finite("a", a), _finite("b", b)
        if self.paired and len(a) != len(b):
            raise UserError(f"paired comparison needs one value per seed in both arms, "
                            f"got {len(a)} and {len(b)}")
        have = min(len(a), len(b))
        last = None
        for k, n in enumerate(self.looks):
            if have < n:
                break
            p = self.p_value(a[:n], b[:n])
            diff = _stats.fmean(a[:n]) - _stats.fmean(b[:n])
            last = (k, n, p, diff)
            if p <= self._design.nominal[k]:
                return Decision(Status.DIFFERENT, p, k + 1, n, self._design.nominal[k], 0,
                                None, diff)
        if last is None:
            return Decision(Status.MORE_SEEDS, None, 0, have, None, self.looks[0] - have,
                            self.looks[0])
        k, n, p, diff = last
        if k + 1 == len(self.looks):
            return Decision(Status.UNDECIDED_AT_MAX, p, k + 1, n, self._design.nominal[k], 0,
                            None, diff, self.min_detectable_difference(self._pooled_std(a, b)))
        nxt = self.looks[k + 1]
        return Decision(Status.MORE_SEEDS, p, k + 1, n, self._design.nominal[k], nxt - have,
                        nxt, diff)

    def _pooled_std(self, a, b) -> float:
        n = self.max_seeds
        if self.paired:
            return _stats.stdev([x - y for x, y in zip(a[:n], b[:n])])
        return math.sqrt((_stats.variance(a[:n]) + _stats.variance(b[:n])) / 2.0)

    def min_detectable_difference(self, std: float, power: float = 0.8) -> float:
        """Smallest true difference the design detects with ``power`` at its last look, for a
        per-seed std ``std`` (of each arm; of the differences when paired).  Uses the last
        look's nominal level and ignores the earlier looks' chances, so it is slightly
        pessimistic."""
        return min_detectable_difference(std, self.max_seeds, self._design.nominal[-1], power,
                                         paired=self.paired)


def min_detectable_difference(std: float, n: int, alpha: float = 0.05, power: float = 0.8,
                              paired: bool = False) -> float:
    """Smallest true mean difference a two-sided t-test at level ``alpha`` detects with
    probability ``power`` (noncentral t; see the module docstring).

    Unpaired: ``n`` seeds per arm, both arms with std ``std``.  Paired: ``n`` pairs whose
    differences have std ``std``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise UserError(f"n must be a whole number of seeds, at least 2, got {n!r}")
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    if not isinstance(power, (int, float)) or not alpha < power < 1:
        raise UserError(f"power must be between alpha ({alpha}) and 1, got {power!r}")
    if not (isinstance(std, (int, float, np.floating)) and math.isfinite(std) and std >= 0):
        raise UserError(f"std must be a finite number >= 0, got {std!r}")
    df = n - 1 if paired else 2 * n - 2
    scale = 1.0 / math.sqrt(n) if paired else math.sqrt(2.0 / n)
    return _noncentrality(df, float(alpha), float(power)) * float(std) * scale


@lru_cache(maxsize=256)
def _noncentrality(df: int, alpha: float, power: float) -> float:
    """The noncentrality at which a two-sided t-test with ``df`` degrees of freedom at level
    ``alpha`` rejects with probability ``power``."""
    from scipy.optimize import brentq
    from scipy.stats import nct
    from scipy.stats import t as t_dist

    crit = float(t_dist.isf(alpha / 2.0, df))

    def short(lam):
        # the lower tail P(T < -crit) is below P(T < 0) = Phi(-lam); scipy's nct.cdf returns
        # NaN where it underflows (lam about 8 at df 8 and a level of 2e-4: the first looks of
        # a sequential design) -- it is then below 1e-15: zero
        lower = float(nct.cdf(-crit, df, lam))
        return float(nct.sf(crit, df, lam)) + (lower if math.isfinite(lower) else 0.0) - power

    hi = 1.0
    while short(hi) < 0:
        hi *= 2.0
    return float(brentq(short, 0.0, hi, xtol=1e-10))


# ---------------------------------------------------------------------------------------------
# racing


@dataclass(frozen=True)
class RaceState:
    survivors: tuple  # names still in the race, best mean first
    leader: str  # highest mean among the survivors at the last look
    p_values: dict  # name -> paired-t p vs the leader at the last look (or at elimination)
    eliminated: dict  # name -> seeds at the look that dropped it
    means: dict  # name -> mean over the seeds of its last look
    look: int  # 1-based index of the last look evaluated (0: none)
    n: int  # seeds at that look
    boundary: Optional[float]  # nominal level of that look
    finished: bool  # one survivor left, or the last look done
    seeds_needed: int = 0  # more seeds per survivor before the next look
    next_n: Optional[int] = None
    friedman_p: Optional[float] = None  # omnibus p at the last look (3+ survivors)


class Race:
    """Racing among candidates evaluated on paired seeds (see the module docstring)."""

    def __init__(self, alpha: float = 0.05, min_seeds: int = 3, max_seeds: int = 10,
                 step: int = 1, spending: str = "pocock"):
        self._design = _Design(alpha, min_seeds, max_seeds, step, spending, paired=True)

    looks = property(lambda self: self._design.looks)
    boundaries = property(lambda self: self._design.nominal, doc="nominal p-level per look")

    def state(self, results: Mapping[str, Sequence[float]]) -> RaceState:
        if len(results) < 2:
            raise UserError(f"a race needs at least two candidates, got {len(results)}")
        data = {str(k): _finite(str(k), v) for k, v in results.items()}
        order = list(data)
        survivors = list(order)
        eliminated, p_vs = {}, {}
        look, n_done, boundary, fp = 0, 0, None, None
        means = {}
        finished = False
        for k, n in enumerate(self._design.looks):
            if min(len(data[s]) for s in survivors) < n:
                break
            level = self._design.nominal[k]
            block = {s: data[s][:n] for s in survivors}
            means.update({s: _stats.fmean(v) for s, v in block.items()})
            leader = max(survivors, key=lambda s: (means[s], -order.index(s)))
            others = [s for s in survivors if s != leader]
            ps = {s: paired_t(block[leader], block[s]) for s in others}
            p_vs.update(ps)
            p_vs[leader] = None
            gate = True
            fp = None
            if len(survivors) >= 3:
                fp = friedman_p(list(block.values()))
                gate = fp <= level
            if gate:
                m = len(others)
                for i, s in enumerate(sorted(others, key=lambda s: ps[s])):  # Holm step-down
                    if ps[s] <= level / (m - i):
                        eliminated[s] = n
                    else:
                        break
            survivors = [s for s in survivors if s not in eliminated]
            look, n_done, boundary = k + 1, n, level
            if len(survivors) == 1 or k + 1 == len(self._design.looks):
                finished = True
                break
        if look == 0:
            means = {s: _stats.fmean(v) if v else float("nan") for s, v in data.items()}
        ranked = sorted(survivors, key=lambda s: (-means[s] if not math.isnan(means[s])
                                                  else math.inf, order.index(s)))
        seeds_needed, next_n = 0, None
        if not finished:
            next_n = self._design.looks[look]
            seeds_needed = next_n - min(len(data[s]) for s in survivors)
        return RaceState(tuple(ranked), ranked[0], p_vs, eliminated, means, look, n_done,
                         boundary, finished, seeds_needed, next_n, fp)


def race_survivors(results: Mapping[str, Sequence[float]], alpha: float = 0.05,
                   min_seeds: int = 3, max_seeds: int = 10, step: int = 1,
                   spending: str = "pocock") -> RaceState:
    """The state of a race from the stored per-seed accuracies ``{name: [acc per seed]}``
    (seed i trained for every candidate still in the race at seed i)."""
    return Race(alpha, min_seeds, max_seeds, step, spending).state(results)

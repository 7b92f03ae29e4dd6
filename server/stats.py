"""The statistics behind a verdict: intervals, tests and agreement, small and dependency-light.

An eval compares two models on the same frozen items, so its differences are *paired*: the
per-item difference removes what makes an item hard for both (a paired test on 220 items can be
ten times more sensitive than an unpaired one). A canary compares versions on different users, so
its differences are between two independent samples. Everything here is a pure function of
numbers (NumPy for the resampling, the standard library's ``NormalDist`` for quantiles); the tests
check each one against SciPy or statsmodels computing the same quantity, which the server itself
does not need.

Choices, and why:

- **Paired bootstrap, percentile interval, seeded** (``paired_bootstrap``): it makes no assumption
  about the shape of a score's distribution (exact match is 0/1, F1 is bounded and skewed), and a
  fixed seed makes a report repeatable. 10,000 resamples put the bounds' own noise below 0.005 for
  scores on a 0-1 scale.
- **McNemar's exact test** for exact match: only the items where the two models disagree carry
  information; the two-sided binomial p-value on them is exact at any sample size.
- **Minimum detectable effect** at 80 % power and the interval's level, from the paired
  differences' spread: what a report says when the interval spans zero ("n = 24 can only detect
  ≥ 0.18").
- **Newcombe's hybrid score interval** for a difference of two rates (errors, thumbs down): it
  stays inside [-1, 1] and keeps its coverage near 0 and 1, where a rate of errors lives.
- **Welch's interval** (normal quantile) for a difference of means of independent samples: a
  canary decides only after a minimum sample, where the normal and t quantiles agree closely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def summary(self, digits: int = 4) -> dict[str, Any]:
        return {
            "estimate": round(self.estimate, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
            "confidence": self.confidence,
        }

    def text(self, digits: int = 2) -> str:
        """``+0.12 [0.05, 0.19]``: signed estimate, then the bounds."""
        return f"{self.estimate:+.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The mean of ``b - a`` over paired items, with a percentile bootstrap interval: items are
    drawn with replacement, each keeping both of its scores."""
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diffs.size == 0:
        raise ValueError("no paired items")
    estimate = float(diffs.mean())
    if diffs.size == 1 or np.all(diffs == diffs[0]):
        return Interval(estimate, estimate, estimate, confidence)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // diffs.size)  # bounded memory for large sets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diffs[rng.integers(0, diffs.size, (stop - start, diffs.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), confidence)


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval (the paired bootstrap of their
    difference from zero)."""
    return paired_bootstrap([0.0] * len(values), values, resamples=resamples, confidence=confidence, seed=seed)


@dataclass(frozen=True)
class McNemar:
    """Items only ``a`` got right (``a_only``), only ``b`` got right (``b_only``), the exact p."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's exact test of two models' correctness on the same items (two-sided binomial on
    the discordant pairs)."""
    if len(a) != len(b):
        raise ValueError("paired sequences differ in length")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return McNemar(a_only, b_only, 1.0)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return McNemar(a_only, b_only, min(1.0, 2 * tail))


def min_detectable_effect(
    diffs: Sequence[float], *, confidence: float = CONFIDENCE, power: float = POWER
) -> float | None:
    """The smallest mean paired difference a two-sided test at ``confidence`` finds with
    probability ``power``, given the differences' spread (normal approximation); None with fewer
    than two items."""
    n = len(diffs)
    if n < 2:
        return None
    sd = float(np.std(np.asarray(diffs, dtype=float), ddof=1))
    return (_z(confidence) + NormalDist().inv_cdf(power)) * sd / math.sqrt(n)


def wilson(successes: int, n: int, *, confidence: float = CONFIDENCE) -> Interval:
    """A rate with Wilson's score interval."""
    if n <= 0:
        raise ValueError("no observations")
    p, z = successes / n, _z(confidence)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence)


def rate_difference(a_events: int, a_n: int, b_events: int, b_n: int, *, confidence: float = CONFIDENCE) -> Interval:
    """``rate(b) - rate(a)`` of two independent samples, with Newcombe's hybrid score interval
    (method 10 in Newcombe 1998)."""
    a, b = wilson(a_events, a_n, confidence=confidence), wilson(b_events, b_n, confidence=confidence)
    diff = b.estimate - a.estimate
    low = diff - math.sqrt((b.estimate - b.low) ** 2 + (a.high - a.estimate) ** 2)
    high = diff + math.sqrt((b.high - b.estimate) ** 2 + (a.estimate - a.low) ** 2)
    return Interval(diff, low, high, confidence)


@dataclass(frozen=True)
class Moments:
    """A sample's size, mean and variance, kept as running sums (cheap enough per request)."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> Moments:
        return Moments(self.n + 1, self.total + value, self.squares + value * value)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


def mean_difference(a: Moments, b: Moments, *, confidence: float = CONFIDENCE) -> Interval:
    """``mean(b) - mean(a)`` of two independent samples, with Welch's standard error and the
    normal quantile."""
    if a.n < 2 or b.n < 2:
        raise ValueError("each sample needs two observations")
    diff = b.mean - a.mean
    half = _z(confidence) * math.sqrt(a.variance / a.n + b.variance / b.n)
    return Interval(diff, diff - half, diff + half, confidence)


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="mergesort")
    ranks = np.empty(len(array))
    i = 0
    while i < len(array):
        j = i
        while j + 1 < len(array) and array[order[j + 1]] == array[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None when either side is constant or short."""
    if len(x) != len(y):
        raise ValueError("paired sequences differ in length")
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def weighted_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int]) -> float | None:
    """Cohen's kappa with quadratic weights, for two raters on an ordered scale (stars, 0-10
    scores): a near miss counts as partial agreement. None when it is undefined (no spread)."""
    if len(a) != len(b):
        raise ValueError("paired sequences differ in length")
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    if not a or k < 2:
        return None
    observed = np.zeros((k, k))
    for x, y in zip(a, b, strict=True):
        observed[index[x], index[y]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    denominator = float((weights * expected).sum())
    if denominator == 0:
        return None
    return 1 - float((weights * observed).sum()) / denominator


def bradley_terry(names: Sequence[str], wins: np.ndarray, *, iterations: int = 1000) -> dict[str, float]:
    """Bradley–Terry strengths (log scale, mean 0) from ``wins[i, j]``, how often ``names[i]``
    beat ``names[j]`` (a tie counts half to each), by Hunter's MM algorithm. A small prior (one
    tie against every other model) keeps a model that never lost finite."""
    k = len(names)
    w = np.asarray(wins, dtype=float) + 0.5 * (1 - np.eye(k))  # the prior tie
    games = w + w.T
    p = np.ones(k)
    for _ in range(iterations):
        denominators = np.array([sum(games[i, j] / (p[i] + p[j]) for j in range(k) if j != i) for i in range(k)])
        updated = w.sum(axis=1) / denominators
        updated /= np.exp(np.log(updated).mean())
        if np.allclose(updated, p, rtol=1e-10, atol=1e-12):
            p = updated
            break
        p = updated
    log = np.log(p)
    return {name: float(value - log.mean()) for name, value in zip(names, log, strict=True)}

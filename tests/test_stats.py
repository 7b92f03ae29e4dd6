"""server/stats.py against SciPy and statsmodels computing the same quantities, and textbook cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from server import stats


def test_the_paired_bootstrap_matches_scipys_and_is_repeatable() -> None:
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 1, 60)
    b = np.clip(a + rng.normal(0.1, 0.15, 60), 0, 1)
    ours = stats.paired_bootstrap(a, b, seed=3)
    theirs = scipy_stats.bootstrap(
        (a, b), lambda x, y: np.mean(y - x), paired=True, method="percentile", n_resamples=10_000, random_state=3
    ).confidence_interval
    assert ours.estimate == pytest.approx(float(np.mean(b - a)))
    assert ours.low == pytest.approx(theirs.low, abs=0.006) and ours.high == pytest.approx(theirs.high, abs=0.006)
    assert stats.paired_bootstrap(a, b, seed=3) == ours  # seeded: a report is repeatable
    assert ours.excludes_zero


def test_a_constant_difference_has_a_point_interval() -> None:
    interval = stats.paired_bootstrap([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert (interval.low, interval.estimate, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero
    with pytest.raises(ValueError):
        stats.paired_bootstrap([], [])


@pytest.mark.parametrize(
    ("a_only", "b_only", "both", "neither"), [(3, 12, 40, 5), (0, 0, 10, 2), (9, 1, 0, 0), (7, 7, 3, 3)]
)
def test_mcnemar_matches_statsmodels_exact(a_only: int, b_only: int, both: int, neither: int) -> None:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    ours = stats.mcnemar(a, b)
    table = [[both, a_only], [b_only, neither]]
    assert (ours.a_only, ours.b_only) == (a_only, b_only)
    assert ours.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue)


def test_the_minimum_detectable_effect_matches_statsmodels_power() -> None:
    diffs = np.random.default_rng(1).normal(0.05, 0.3, 24)
    sd = float(np.std(diffs, ddof=1))
    effect = NormalIndPower().solve_power(nobs1=24, ratio=0, alpha=0.05, power=0.8, alternative="two-sided")
    assert stats.min_detectable_effect(list(diffs)) == pytest.approx(effect * sd, rel=1e-3)
    assert stats.min_detectable_effect([0.1]) is None


@pytest.mark.parametrize(("k", "n"), [(0, 20), (3, 40), (19, 20), (50, 100)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    interval = stats.wilson(k, n)
    assert (interval.low, interval.high) == pytest.approx((low, high))


@pytest.mark.parametrize(("a", "b"), [((4, 200), (15, 210)), ((0, 50), (3, 60)), ((30, 40), (31, 40))])
def test_the_rate_difference_matches_statsmodels_newcombe(a: tuple[int, int], b: tuple[int, int]) -> None:
    low, high = confint_proportions_2indep(b[0], b[1], a[0], a[1], method="newcomb", compare="diff")
    interval = stats.rate_difference(a[0], a[1], b[0], b[1])
    assert interval.estimate == pytest.approx(b[0] / b[1] - a[0] / a[1])
    assert (interval.low, interval.high) == pytest.approx((low, high))


def test_the_mean_difference_is_welchs_with_the_normal_quantile() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(1.0, 1.0, 80), rng.normal(1.4, 2.0, 120)
    a, b = stats.Moments(), stats.Moments()
    for value in x:
        a = a.add(float(value))
    for value in y:
        b = b.add(float(value))
    assert (a.mean, a.variance) == pytest.approx((x.mean(), x.var(ddof=1)))
    interval = stats.mean_difference(a, b)
    se = np.sqrt(x.var(ddof=1) / 80 + y.var(ddof=1) / 120)
    z = scipy_stats.norm.ppf(0.975)
    assert (interval.low, interval.high) == pytest.approx((y.mean() - x.mean() - z * se, y.mean() - x.mean() + z * se))


def test_spearman_matches_scipy_with_ties() -> None:
    x = [1, 2, 2, 3, 5, 5, 5, 8, 9, 10]
    y = [2, 1, 4, 4, 6, 5, 9, 7, 10, 8]
    assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None


def test_weighted_kappa_matches_statsmodels_quadratic() -> None:
    a = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 3, 3, 4, 5, 2]
    b = [1, 2, 3, 5, 5, 4, 4, 3, 1, 1, 2, 3, 4, 5, 3]
    table = np.zeros((5, 5))
    for x, y in zip(a, b, strict=True):
        table[x - 1, y - 1] += 1
    assert stats.weighted_kappa(a, b, [1, 2, 3, 4, 5]) == pytest.approx(cohens_kappa(table, wt="quadratic").kappa)
    assert stats.weighted_kappa(a, a, [1, 2, 3, 4, 5]) == pytest.approx(1.0)


def test_bradley_terry_is_the_maximum_likelihood_fit() -> None:
    names = ["a", "b", "c"]
    wins = np.array([[0, 7, 9], [3, 0, 6], [1, 4, 0]], dtype=float)
    ours = stats.bradley_terry(names, wins)
    prior = wins + 0.5 * (1 - np.eye(3))

    def negative_log_likelihood(theta: np.ndarray) -> float:
        s = np.concatenate([[0.0], theta])
        return -sum(prior[i, j] * (s[i] - np.logaddexp(s[i], s[j])) for i in range(3) for j in range(3) if i != j)

    fit = optimize.minimize(negative_log_likelihood, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
    theirs = np.concatenate([[0.0], fit.x])
    theirs -= theirs.mean()
    assert [ours[n] for n in names] == pytest.approx(list(theirs), abs=1e-5)
    assert ours["a"] > ours["b"] > ours["c"]

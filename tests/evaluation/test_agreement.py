"""Judge–human and inter-rater agreement, checked against SciPy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from statsmodels.stats.inter_rater import cohens_kappa

from server.evaluation.agreement import agreement, markdown, strength


def _kappa(a: list[int], b: list[int], most: int) -> float:
    table = np.zeros((most + 1, most + 1))
    for x, y in zip(a, b, strict=True):
        table[x, y] += 1
    return float(cohens_kappa(table, wt="quadratic").kappa)


def test_agreement_between_the_judge_and_the_raters_and_among_raters() -> None:
    ana = [8, 6, 9, 3, 5, 7, 2, 10]
    bo = [7, 6, 10, 4, 5, 6, 3, 9]
    judge = [9, 5, 8, 2, 6, 8, 2, 10]
    ids = [f"a{i}" for i in range(8)]
    ratings = {k: {"ana.csv": float(x), "bo.csv": float(y)} for k, x, y in zip(ids, ana, bo, strict=True)}
    key = {k: {"model": "m", "item": f"q{i}"} for i, k in enumerate(ids)}
    judged = {("m", f"q{i}"): float(v) for i, v in enumerate(judge)}
    data = agreement(ratings, key, judged, 10)
    human = [(x + y) / 2 for x, y in zip(ana, bo, strict=True)]  # two raters: the mean
    assert data["judge_human"]["spearman"] == pytest.approx(spearmanr(human, judge).statistic, abs=1e-4)
    assert data["judge_human"]["kappa"] == pytest.approx(_kappa([round(h) for h in human], judge, 10), abs=1e-4)
    assert data["between_raters"]["mean_kappa"] == pytest.approx(_kappa(ana, bo, 10), abs=1e-4)
    assert data["raters"] == 2 and data["between_raters"]["pairs"] == 1
    text = markdown(data)
    assert "Judge vs raters, on 8 answers" in text and "almost perfect" in text


def test_strength_reads_kappa_on_landis_and_kochs_scale() -> None:
    assert [strength(k) for k in (None, -0.1, 0.1, 0.3, 0.5, 0.7, 0.9)] == [
        "undefined",
        "none",
        "slight",
        "fair",
        "moderate",
        "substantial",
        "almost perfect",
    ]

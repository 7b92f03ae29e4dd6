"""``benchmarks/turns.py``: pooled figures and their intervals from resampling whole turns."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from benchmarks.loadgen import _stats
from benchmarks.turns import Verdict, quantile_difference, throughput_ratio, verdict
from server.stats import Interval


def _turns(rng: np.random.Generator, centres: list[float], size: int, spread: float = 0.05) -> list[list[float]]:
    return [list(rng.normal(centre, spread, size)) for centre in centres]


def test_the_estimate_is_the_pooled_median_difference_the_report_prints() -> None:
    rng = np.random.default_rng(1)
    target, baseline = _turns(rng, [1.3, 1.5, 1.2], 7), _turns(rng, [0.9, 1.0, 0.8], 6)  # odd and even counts
    found = quantile_difference(target, baseline)
    pooled = statistics.median(sum(target, [])) - statistics.median(sum(baseline, []))
    assert found.estimate == pytest.approx(pooled, abs=1e-12)
    assert found.low <= found.estimate <= found.high


def test_a_p99_is_the_nearest_rank_loadgen_reports() -> None:
    rng = np.random.default_rng(2)
    target, baseline = _turns(rng, [2.0, 2.2, 2.1, 2.4], 50, 0.5), _turns(rng, [1.0, 1.1, 1.0, 1.2], 50, 0.5)
    found = quantile_difference(target, baseline, 0.99)
    # loadgen takes seconds and reports milliseconds: the same values, a thousandth each.
    p99 = (
        _stats([x / 1000 for x in sum(target, [])], "x")["p99_x_ms"]
        - _stats([x / 1000 for x in sum(baseline, [])], "x")["p99_x_ms"]
    )
    assert found.estimate == pytest.approx(p99, abs=1e-9)


def test_a_slow_spell_shared_by_both_targets_does_not_widen_the_interval() -> None:
    """Turns are resampled in pairs: a turn where the host was slow for both moves both medians,
    not their difference. Resampling each side's turns apart would see a spread of several ms."""
    rng = np.random.default_rng(3)
    host = [1.0, 5.0, 1.0, 5.0, 1.0, 5.0, 1.0, 5.0]  # every other turn four times slower, for both
    baseline = _turns(rng, host, 101, 0.01)
    target = [[x + 0.2 + rng.normal(0, 0.01) for x in turn] for turn in baseline]
    found = quantile_difference(target, baseline)
    assert found.estimate == pytest.approx(0.2, abs=0.01)
    assert found.high - found.low < 0.05


def test_a_difference_that_moves_from_turn_to_turn_gets_a_wide_interval() -> None:
    rng = np.random.default_rng(4)
    baseline = _turns(rng, [1.0] * 8, 51, 0.01)
    target = [[x + shift for x in turn] for turn, shift in zip(baseline, [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6])]
    found = quantile_difference(target, baseline)
    assert found.low < 0.4 and found.high > 0.6  # one run of eight such turns cannot place it closer
    assert quantile_difference(target, baseline) == found  # seeded: the same report every time


def test_throughput_is_pooled_requests_over_pooled_seconds() -> None:
    target = [(100, 1.0), (100, 2.0), (50, 0.5)]
    baseline = [(100, 0.5), (100, 1.0), (50, 0.25)]
    found = throughput_ratio(target, baseline)
    assert found.estimate == pytest.approx((250 / 3.5) / (250 / 1.75))
    assert found.low == pytest.approx(0.5) and found.high == pytest.approx(0.5)  # the same ratio in every turn
    uneven = throughput_ratio([(100, 1.0), (100, 1.5), (100, 1.0)], [(100, 1.0)] * 3)
    assert uneven.low < uneven.estimate < uneven.high and uneven.low >= 100 / 150


@pytest.mark.parametrize("low, high, expected", [(0.3, 0.45, "met"), (0.55, 0.7, "missed"), (0.4, 0.6, "unsettled")])
def test_a_latency_target_is_met_only_by_the_whole_interval(low: float, high: float, expected: str) -> None:
    assert verdict(Interval((low + high) / 2, low, high), 0.5, at_most=True) is Verdict(expected)


@pytest.mark.parametrize("low, high, expected", [(0.92, 1.1, "met"), (0.7, 0.85, "missed"), (0.85, 0.95, "unsettled")])
def test_a_throughput_target_is_met_only_by_the_whole_interval(low: float, high: float, expected: str) -> None:
    assert verdict(Interval((low + high) / 2, low, high), 0.9, at_most=False) is Verdict(expected)


def test_both_sides_need_the_same_turns() -> None:
    with pytest.raises(ValueError):
        quantile_difference([[1.0], [2.0]], [[1.0]])
    with pytest.raises(ValueError):
        throughput_ratio([], [])

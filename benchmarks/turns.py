"""What a benchmark run's turns say, with intervals: a figure pooled over all turns, and how far
it could move, from resampling whole turns.

A benchmark on this shared machine sends each target its requests in turns (``--rounds``), every
target one share per turn, so a slow spell of the host hits all of them alike. The requests of one
turn are not independent draws: they share that spell. So the interval resamples *turns*, each
keeping all of its requests and its place beside the other targets' requests of the same turn (a
paired cluster bootstrap), not single requests, which would pretend to a precision one run does
not have. The estimate is the pooled figure the report prints; the interval is the percentile
interval of that same figure over the resampled runs (seeded: a report is repeatable). With few
turns it is still too narrow rather than too wide: what it cannot see is how the host differs
from one run to the next, which only several runs show.

A target is then ``met`` when the whole interval is on its side, ``missed`` when the whole
interval is on the wrong side, and ``unsettled`` when it straddles the target: this run cannot
tell, whatever its point estimate says.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

from server.stats import CONFIDENCE, Interval

RESAMPLES = 4000  # the bounds' own noise stays well under the 0.01 ms (or 0.01x) they are printed to


class Verdict(StrEnum):
    MET = "met"
    MISSED = "missed"
    UNSETTLED = "unsettled"


def verdict(interval: Interval, target: float, *, at_most: bool) -> Verdict:
    """``at_most``: the figure must be ≤ ``target`` (a latency); else ≥ ``target`` (a ratio)."""
    if at_most:
        good, bad = interval.high <= target, interval.low > target
    else:
        good, bad = interval.low >= target, interval.high < target
    return Verdict.MET if good else Verdict.MISSED if bad else Verdict.UNSETTLED


def _draws(turns: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` runs of ``turns`` turns each, drawn with replacement; the first is the run itself."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, turns, (resamples, turns))
    draws[0] = np.arange(turns)
    return draws


def _interval(values: np.ndarray, confidence: float) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(float(values[0]), float(min(low, values[0])), float(max(high, values[0])), confidence)


def _quantile(values: np.ndarray, q: float) -> float:
    """The median as ``statistics.median`` takes it, another quantile as the nearest rank
    (``loadgen``'s p99): the figures the report prints."""
    return float(np.median(values) if q == 0.5 else np.quantile(values, q, method="nearest"))


def quantile_difference(
    target: Sequence[Sequence[float]],
    baseline: Sequence[Sequence[float]],
    q: float = 0.5,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The pooled ``q`` quantile (the median by default) of ``target``'s values less
    ``baseline``'s, each given as a list of turns (each turn a list of values, both the same number
    of turns), with its interval from resampling turns."""
    if len(target) != len(baseline) or not target:
        raise ValueError("both need the same number of turns, at least one")
    a = [np.asarray(turn, dtype=float) for turn in target]
    b = [np.asarray(turn, dtype=float) for turn in baseline]
    differences = np.empty(resamples)
    for i, draw in enumerate(_draws(len(a), resamples, seed)):
        differences[i] = _quantile(np.concatenate([a[t] for t in draw]), q) - _quantile(
            np.concatenate([b[t] for t in draw]), q
        )
    return _interval(differences, confidence)


def throughput_ratio(
    target: Sequence[tuple[int, float]],
    baseline: Sequence[tuple[int, float]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """``target``'s pooled requests per second over ``baseline``'s, each given per turn as
    (requests, seconds), with its interval from resampling turns."""
    if len(target) != len(baseline) or not target:
        raise ValueError("both need the same number of turns, at least one")
    a, b = np.asarray(target, dtype=float), np.asarray(baseline, dtype=float)
    draws = _draws(len(a), resamples, seed)
    ta, tb = a[draws].sum(axis=1), b[draws].sum(axis=1)  # (resamples, 2): requests, seconds
    return _interval((ta[:, 0] / ta[:, 1]) / (tb[:, 0] / tb[:, 1]), confidence)

"""What a traffic split has shown so far, per version, and the verdict it supports.

A split's versions answer different end users (assignment is sticky per user), so a version is
compared with the split's baseline as two independent samples, one metric at a time:

=================  ==========================================================  ==============
metric             per version                                                 better when
=================  ==========================================================  ==============
``feedback``       each end user's mean rating, scaled to 0-1 (thumbs up 1,     higher
                   down 0; stars 1-5 as 0-1), one value per user: a user who
                   votes twenty times is one opinion
``error_rate``     server errors (5xx) per request                              lower
``malformed_rate`` tool calls and JSON documents that did not parse, did not   lower
                   match their schema or were cut by ``max_tokens``, per
                   request that asked for tools or a JSON ``response_format``
``latency_s``      seconds per answered request                                 lower
=================  ==========================================================  ==============

A rule (``auto_promote``, or the ``margins`` of ``auto_abort`` in the split file) names metrics
and a margin for each, in the metric's own unit. With the difference oriented so that positive
means "the candidate is better": ``auto_abort`` fires when a metric's interval lies wholly below
``-margin`` (the candidate is worse by more than the margin), and ``auto_promote`` when every
metric it names lies wholly above ``margin`` (better by more than it; a negative margin asks only
"no worse than this"). Two equal versions therefore never end a split with a margin of 0 or more,
except by the error rate the confidence allows.

That error rate holds although the evidence is looked at again and again: each metric is looked
at only when the smaller of the two samples reaches ``min_sample``, then twice that, four times,
and so on, and look ``k`` (from 0) uses confidence ``1 - (1 - confidence) / 2**(k + 1)``. The
one-sided error spent over all looks sums to at most ``(1 - confidence) / 2`` per metric and
direction (alpha spending with Bonferroni's bound), whatever the split's length. A promotion's
looks are counted on the smallest sample among its metrics, and all of them must agree at one look.

Intervals: ``server.stats.mean_difference`` (Welch) for ``feedback`` and ``latency_s``,
``server.stats.rate_difference`` (Newcombe) for the rates. Counting is in memory, from the
split's start on this gateway process: a restart, or another gateway, counts afresh.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..stats import Interval, Moments, mean_difference, rate_difference

EvidenceMetric = Literal["feedback", "error_rate", "malformed_rate", "latency_s"]
EVIDENCE_METRICS: tuple[EvidenceMetric, ...] = ("feedback", "error_rate", "malformed_rate", "latency_s")
HIGHER_IS_BETTER: dict[str, bool] = {
    "feedback": True,
    "error_rate": False,
    "malformed_rate": False,
    "latency_s": False,
}
MAX_USERS = 100_000  # per version: beyond it, new users' ratings are not counted (memory bound)


@dataclass(frozen=True)
class EvidenceRule:
    """Metrics and their margins, the sample a verdict needs, and the confidence it is held to."""

    margins: tuple[tuple[EvidenceMetric, float], ...]
    min_sample: int = 30
    confidence: float = 0.95

    def summary(self) -> dict[str, Any]:
        return {"margins": dict(self.margins), "min_sample": self.min_sample, "confidence": self.confidence}


@dataclass
class Arm:
    """What one version of a split has shown."""

    requests: int = 0
    errors: int = 0
    checked: int = 0  # requests that asked for tools or a JSON format
    malformed: int = 0
    latency: Moments = field(default_factory=Moments)
    users: dict[str, tuple[float, int]] = field(default_factory=dict)  # user: (sum of scores, ratings)

    def sample(self, metric: str) -> int:
        """How many observations ``metric`` has (checked on every request under a rule: no allocation)."""
        if metric == "feedback":
            return len(self.users)
        if metric == "error_rate":
            return self.requests
        if metric == "malformed_rate":
            return self.checked
        return self.latency.n

    def feedback(self) -> Moments:
        moments = Moments()
        for total, count in self.users.values():
            moments = moments.add(total / count)
        return moments

    def value(self, metric: str) -> float | None:
        if self.sample(metric) == 0:
            return None
        if metric == "feedback":
            return self.feedback().mean
        if metric == "error_rate":
            return self.errors / self.requests
        if metric == "malformed_rate":
            return self.malformed / self.checked
        return self.latency.mean


def better_by(metric: str, baseline: Arm, candidate: Arm, confidence: float) -> Interval | None:
    """How much better ``candidate`` is than ``baseline`` on ``metric`` (positive: better), with
    its interval; None while either sample is too small for one."""
    if min(baseline.sample(metric), candidate.sample(metric)) < 2:
        return None
    if metric == "feedback":
        change = mean_difference(baseline.feedback(), candidate.feedback(), confidence=confidence)
    elif metric == "latency_s":
        change = mean_difference(baseline.latency, candidate.latency, confidence=confidence)
    elif metric == "error_rate":
        change = rate_difference(
            baseline.errors, baseline.requests, candidate.errors, candidate.requests, confidence=confidence
        )
    else:
        change = rate_difference(
            baseline.malformed, baseline.checked, candidate.malformed, candidate.checked, confidence=confidence
        )
    if HIGHER_IS_BETTER[metric]:
        return change
    return Interval(-change.estimate, -change.high, -change.low, change.confidence)


@dataclass(frozen=True)
class Verdict:
    """A rule that fired: what to do, for which version, and the evidence."""

    action: Literal["promote", "abort"]
    version: int
    metric: str
    margin: float
    interval: Interval
    sample: tuple[int, int]  # baseline's, candidate's
    at: float

    def describe(self) -> str:
        baseline_n, candidate_n = self.sample
        direction = "worse" if self.action == "abort" else "better"
        bound = self.interval.high if self.action == "abort" else self.interval.low
        return (
            f"v{self.version}: {self.metric} {direction} than the baseline by more than {self.margin:g} "
            f"(better by {self.interval.estimate:+.4g}, {self.interval.confidence:.4g} interval "
            f"[{self.interval.low:+.4g}, {self.interval.high:+.4g}], bound {bound:+.4g}; "
            f"n = {baseline_n} vs {candidate_n})"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "metric": self.metric,
            "margin": self.margin,
            "interval": self.interval.summary(),
            "sample": list(self.sample),
            "at": int(self.at),
            "reason": self.describe(),
        }


def look(sample: int, min_sample: int) -> int:
    """Which look a sample of this size has reached: -1 before ``min_sample``, then 0, 1, 2... at
    ``min_sample`` times 1, 2, 4..."""
    if sample < min_sample:
        return -1
    return int(math.floor(math.log2(sample / min_sample)))


def look_confidence(confidence: float, k: int) -> float:
    """The confidence of look ``k``: the error ``1 - confidence`` is spent a half at the first
    look, a quarter at the second, and so on, two-sided; so one direction spends at most half of
    it over every look there will ever be."""
    return 1 - (1 - confidence) / 2 ** (k + 1)


class SplitEvidence:
    """The arms of one split (by version) and the looks already taken, per rule and metric."""

    def __init__(self, baseline: int, versions: tuple[int, ...]) -> None:
        self.baseline = baseline
        self.arms: dict[int, Arm] = {v: Arm() for v in versions}
        self._looked: dict[tuple[str, str, int], int] = {}
        self.verdict: Verdict | None = None

    def arm(self, version: int) -> Arm | None:
        return self.arms.get(version)

    def decide(self, abort: EvidenceRule | None, promote: EvidenceRule | None) -> Verdict | None:
        """The first verdict the evidence supports at a new look, or None (kept once found)."""
        if self.verdict is not None:
            return None
        base = self.arms[self.baseline]
        for version, arm in self.arms.items():
            if version == self.baseline:
                continue
            if abort is not None:
                for metric, margin in abort.margins:
                    interval = self._new_look("abort", metric, version, base, arm, abort)
                    if interval is not None and interval.high < -margin:
                        return self._found("abort", version, metric, margin, interval, base, arm)
            if promote is not None and promote.margins:
                verdict = self._promotion(version, base, arm, promote)
                if verdict is not None:
                    return verdict
        return None

    def _new_look(
        self, rule: str, metric: str, version: int, base: Arm, arm: Arm, spec: EvidenceRule
    ) -> Interval | None:
        """The interval at a look not taken before, else None (no new look: nothing to decide)."""
        k = look(min(base.sample(metric), arm.sample(metric)), spec.min_sample)
        key = (rule, metric, version)
        if k < 0 or k <= self._looked.get(key, -1):
            return None
        self._looked[key] = k
        return better_by(metric, base, arm, look_confidence(spec.confidence, k))

    def _promotion(self, version: int, base: Arm, arm: Arm, spec: EvidenceRule) -> Verdict | None:
        """Promote when every metric of the rule is better by more than its margin. The rule's
        looks are counted on its smallest sample, so each look judges all its metrics at once."""
        smallest = min(min(base.sample(m), arm.sample(m)) for m, _ in spec.margins)
        k = look(smallest, spec.min_sample)
        key = ("promote", "*", version)
        if k < 0 or k <= self._looked.get(key, -1):
            return None
        self._looked[key] = k
        confidence = look_confidence(spec.confidence, k)
        found: list[tuple[str, float, Interval]] = []
        for metric, margin in spec.margins:
            interval = better_by(metric, base, arm, confidence)
            if interval is None or interval.low <= margin:
                return None
            found.append((metric, margin, interval))
        first, first_margin, first_interval = found[0]
        return self._found("promote", version, first, first_margin, first_interval, base, arm)

    def _found(
        self,
        action: Literal["promote", "abort"],
        version: int,
        metric: str,
        margin: float,
        interval: Interval,
        base: Arm,
        arm: Arm,
    ) -> Verdict:
        self.verdict = Verdict(
            action, version, metric, margin, interval, (base.sample(metric), arm.sample(metric)), time.time()
        )
        return self.verdict

    def report(self, confidence: float = 0.95) -> dict[str, Any]:
        """Each metric per version: its value and sample, and (for a version other than the
        baseline) how much better it is than the baseline, with a ``confidence`` interval."""
        base = self.arms[self.baseline]
        versions = []
        for version, arm in self.arms.items():
            metrics: dict[str, Any] = {}
            for metric in EVIDENCE_METRICS:
                row: dict[str, Any] = {"value": _round(arm.value(metric)), "sample": arm.sample(metric)}
                if version != self.baseline:
                    interval = better_by(metric, base, arm, confidence)
                    row["better_by"] = None if interval is None else interval.summary()
                metrics[metric] = row
            versions.append(
                {
                    "version": version,
                    "baseline": version == self.baseline,
                    "requests": arm.requests,
                    "raters": len(arm.users),
                    "metrics": metrics,
                }
            )
        return {"versions": versions, "verdict": None if self.verdict is None else self.verdict.summary()}


def parse_margins(raw: Mapping[str, object], where: str) -> tuple[tuple[EvidenceMetric, float], ...]:
    """``{"feedback": 0.05}`` checked: known metrics, finite numbers (``ValueError`` saying why)."""
    margins: list[tuple[EvidenceMetric, float]] = []
    for metric, margin in raw.items():
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f'"{where}.margins" names {metric!r}; metrics: {", ".join(EVIDENCE_METRICS)}')
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
            raise ValueError(f'"{where}.margins.{metric}" must be a number')
        margins.append((metric, float(margin)))  # type: ignore[arg-type]
    return tuple(margins)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def table(data: Mapping[str, Any]) -> str:
    """The split report as the CLI prints it: each metric per version, with how much better than
    the baseline and its interval, and the verdict."""
    lines = [f"Split of {data['name']}"]
    split = data.get("split")
    if split is None:
        lines.append("no split now")
    else:
        rules = {k: split[k] for k in ("auto_abort", "auto_promote") if k in split}
        lines.append(f"versions {split['versions']} (baseline v{split['baseline']}); rules: {rules or 'none'}")
        lines += [
            "",
            "| version | metric | value | sample | better than baseline [95 % interval] |",
            "|---|---|---|---|---|",
        ]
        for row in data.get("versions", []):
            for metric, cell in row["metrics"].items():
                better = cell.get("better_by")
                shown = (
                    "baseline"
                    if row["baseline"]
                    else "–"
                    if better is None
                    else f"{better['estimate']:+.4g} [{better['low']:+.4g}, {better['high']:+.4g}]"
                )
                value = "–" if cell["value"] is None else f"{cell['value']:.4g}"
                lines.append(f"| v{row['version']} | {metric} | {value} | {cell['sample']} | {shown} |")
    verdict = data.get("verdict") or data.get("last_verdict")
    lines += ["", f"verdict: {verdict['action']}: {verdict['reason']}" if verdict else "verdict: none yet"]
    return "\n".join(lines)

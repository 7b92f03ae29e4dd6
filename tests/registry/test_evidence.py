"""Verdicts by evidence: a worse version aborts, a better one is promoted, equal versions keep
their split (at the error rate the confidence allows), and decisions are taken only at looks."""

from __future__ import annotations

import random

import pytest

from server.errors import AdapterRejected
from server.registry.evidence import EvidenceRule, SplitEvidence, look, look_confidence, table
from server.registry.splits import parse_split


def _rate(evidence: SplitEvidence, version: int, user: str, score: float) -> None:
    arm = evidence.arms[version]
    total, count = arm.users.get(user, (0.0, 0))
    arm.users[user] = (total + score, count + 1)


FEEDBACK_ABORT = EvidenceRule((("feedback", 0.05),), min_sample=20)
FEEDBACK_PROMOTE = EvidenceRule((("feedback", 0.0),), min_sample=20)


def _run(p_base: float, p_candidate: float, seed: int, users: int = 1500) -> tuple[str | None, int]:
    """Users of each version rate thumbs up with their version's probability, one rating each,
    alternating versions; the verdict and how many users it took."""
    rng = random.Random(seed)
    evidence = SplitEvidence(1, (1, 2))
    for i in range(users):
        version = 1 + i % 2
        _rate(evidence, version, f"u{i}", float(rng.random() < (p_base if version == 1 else p_candidate)))
        verdict = evidence.decide(FEEDBACK_ABORT, FEEDBACK_PROMOTE)
        if verdict is not None:
            return verdict.action, i + 1
    return None, users


def test_a_clearly_worse_version_is_aborted_and_a_better_one_promoted() -> None:
    assert _run(0.8, 0.4, seed=1)[0] == "abort"
    assert _run(0.4, 0.8, seed=1)[0] == "promote"


def test_equal_versions_keep_their_split_at_the_promised_error_rate() -> None:
    """200 splits of two equal versions, 1,500 users each, looked at after every rating: at most
    (1 - 0.95) / 2 per direction may end, by design; with the margin on abort, fewer."""
    verdicts = [_run(0.7, 0.7, seed)[0] for seed in range(200)]
    assert verdicts.count("promote") <= 10 and verdicts.count("abort") <= 10, verdicts
    assert verdicts.count(None) >= 180


def test_decisions_are_taken_only_at_looks() -> None:
    assert [look(n, 20) for n in (0, 19, 20, 39, 40, 80, 159, 160)] == [-1, -1, 0, 0, 1, 2, 2, 3]
    assert look_confidence(0.95, 0) == pytest.approx(0.975) and look_confidence(0.95, 2) == pytest.approx(0.99375)
    evidence = SplitEvidence(1, (1, 2))
    for i in range(19):  # a candidate every one of whose users is unhappy: still no verdict before 20 each
        _rate(evidence, 1, f"a{i}", 1.0)
        _rate(evidence, 2, f"b{i}", 0.0)
        assert evidence.decide(FEEDBACK_ABORT, None) is None
    _rate(evidence, 1, "a19", 1.0)
    _rate(evidence, 2, "b19", 0.0)
    verdict = evidence.decide(FEEDBACK_ABORT, None)
    assert verdict is not None and verdict.action == "abort" and verdict.sample == (20, 20)
    assert "v2: feedback worse than the baseline by more than 0.05" in verdict.describe()
    assert evidence.decide(FEEDBACK_ABORT, None) is None  # decided once


def test_one_user_voting_many_times_is_one_opinion() -> None:
    evidence = SplitEvidence(1, (1, 2))
    for _ in range(50):
        _rate(evidence, 2, "loud", 0.0)
    assert evidence.arms[2].sample("feedback") == 1 and evidence.arms[2].feedback().mean == 0.0


def test_rates_and_latency_are_oriented_so_that_lower_is_better() -> None:
    evidence = SplitEvidence(1, (1, 2))
    base, candidate = evidence.arms[1], evidence.arms[2]
    base.requests, base.errors, candidate.requests, candidate.errors = 400, 2, 400, 40
    rule = EvidenceRule((("error_rate", 0.01),), min_sample=100)
    verdict = evidence.decide(rule, None)
    assert verdict is not None and verdict.metric == "error_rate" and verdict.interval.estimate == pytest.approx(-0.095)
    report = evidence.report()
    row = report["versions"][1]["metrics"]["error_rate"]
    assert row["value"] == 0.1 and row["better_by"]["high"] < 0
    assert "verdict: abort" in table({"name": "shop", "split": None, **report})


def test_a_promotion_needs_every_metric_it_names() -> None:
    evidence = SplitEvidence(1, (1, 2))
    for i in range(40):
        _rate(evidence, 1, f"a{i}", 0.0)
        _rate(evidence, 2, f"b{i}", 1.0)
    rule = EvidenceRule((("feedback", 0.0), ("latency_s", 0.0)), min_sample=20)
    assert evidence.decide(None, rule) is None  # no latency yet: the smallest sample sets the looks
    for i in range(40):
        evidence.arms[1].latency = evidence.arms[1].latency.add(1.0 + (i % 3) / 10)
        evidence.arms[2].latency = evidence.arms[2].latency.add(0.5 + (i % 3) / 10)
    verdict = evidence.decide(None, rule)
    assert verdict is not None and verdict.action == "promote" and verdict.version == 2


@pytest.mark.parametrize(
    ("rules", "why"),
    [
        ({"auto_promote": {}}, "needs margins"),
        ({"auto_promote": {"margins": {"speed": 1}}}, "names 'speed'"),
        ({"auto_promote": {"margins": {"feedback": "x"}}}, "must be a number"),
        ({"auto_abort": {"margins": {"feedback": 0.1}, "min_sample": 1}}, "min_sample"),
        ({"auto_abort": {"margins": {"feedback": 0.1}, "confidence": 1.0}}, "confidence"),
    ],
)
def test_bad_evidence_rules_say_what_is_wrong(rules: dict[str, object], why: str) -> None:
    with pytest.raises(AdapterRejected, match=why):
        parse_split({"versions": {"1": 50, "2": 50}, **rules}, "split")


def test_rules_round_trip_through_the_split_file() -> None:
    raw = {
        "versions": {"1": 50, "2": 50},
        "auto_abort": {"margins": {"feedback": 0.05, "error_rate": 0.01}, "min_sample": 30},
        "auto_promote": {"margins": {"feedback": 0.0}, "confidence": 0.9},
    }
    split = parse_split(raw, "t").resolve("shop", 2, 1, {1, 2})
    written = split.to_json()
    assert written["auto_promote"] == {"margins": {"feedback": 0.0}, "min_sample": 30, "confidence": 0.9}
    assert written["auto_abort"]["margins"] == {"feedback": 0.05, "error_rate": 0.01}
    again = parse_split(written, "t").resolve("shop", 2, 1, {1, 2})
    assert (again.auto_abort, again.auto_promote) == (split.auto_abort, split.auto_promote)

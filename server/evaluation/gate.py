"""Run an eval gate's questions: ask a model each one (greedy, one at a time), score the answers
against their references and with the judge, and return the mean per metric the gate names.

The gate itself, its file and its decision, is the registry's (``server.registry.gate_spec``);
``server.evaluation.proving`` runs this against the engine when a new version arrives.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from statistics import fmean

from ..datasets.testset import EvalItem
from ..registry.gate_spec import Gate
from ..stats import Interval, paired_bootstrap
from ..terms.scores import JUDGE_METRIC, REFERENCE_METRICS
from .judge import DEFAULT_RUBRIC, JudgeAsk, judge_with
from .metrics import scores as reference_scores

Ask = Callable[[EvalItem], Awaitable[str]]


async def score(gate: Gate, ask: Ask, judge: JudgeAsk | None) -> tuple[dict[str, list[float]], int]:
    """(per-item scores for each metric the gate names, in item order; judge failures) of one
    model, asked one question at a time: a gate takes one of the engine's slots, never the batch
    live traffic needs. An item without a score (no reference, a judge failure) is NaN, so the
    lists stay paired by item; the judge's failures are counted, and fail the gate (``proving``)."""
    answers = [await ask(item) for item in gate.items]
    per_item = [reference_scores(text, item.reference) for item, text in zip(gate.items, answers, strict=True)]
    result: dict[str, list[float]] = {}
    for metric in REFERENCE_METRICS:
        if metric in gate.spec.metrics and any(metric in s for s in per_item):
            # Items without a reference have no reference score: NaN keeps positions paired.
            result[metric] = [s.get(metric, math.nan) for s in per_item]
    errors = 0
    if gate.spec.uses_judge and judge is not None:
        tasks = [(str(i), item, text) for i, (item, text) in enumerate(zip(gate.items, answers, strict=True))]
        verdicts = await judge_with(judge, tasks, DEFAULT_RUBRIC, concurrency=1)
        errors = sum(1 for v in verdicts.values() if v.error is not None)
        result[JUDGE_METRIC] = [
            v.total if v.error is None else math.nan for _, v in sorted(verdicts.items(), key=lambda kv: int(kv[0]))
        ]
    return result, errors


def means(per_item: dict[str, list[float]]) -> dict[str, float]:
    """Each metric's mean over the items that have a score."""
    result = {}
    for metric, values in per_item.items():
        scored = [v for v in values if not math.isnan(v)]
        result[metric] = fmean(scored) if scored else 0.0
    return result


def changes(candidate: dict[str, list[float]], serving: dict[str, list[float]]) -> dict[str, Interval]:
    """The candidate's paired change from the serving version per metric (items both scored)."""
    result = {}
    for metric, values in candidate.items():
        pairs = [
            (s, c)
            for s, c in zip(serving.get(metric, []), values, strict=False)
            if not (math.isnan(s) or math.isnan(c))
        ]
        if len(pairs) >= 2:
            result[metric] = paired_bootstrap([s for s, _ in pairs], [c for _, c in pairs])
    return result

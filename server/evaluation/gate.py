"""Run an eval gate's questions: ask a model each one (greedy, one at a time), score the answers
against their references and with the judge, and return the mean per metric the gate names.

The gate itself, its file and its decision, is the registry's (``server.registry.gate_spec``);
``server.evaluation.proving`` runs this against the engine when a new version arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from statistics import fmean

from ..datasets.testset import EvalItem
from ..registry.gate_spec import Gate
from ..terms.scores import JUDGE_METRIC, REFERENCE_METRICS
from .judge import DEFAULT_RUBRIC, JudgeAsk, judge_with
from .metrics import scores as reference_scores

Ask = Callable[[EvalItem], Awaitable[str]]


async def score(gate: Gate, ask: Ask, judge: JudgeAsk | None) -> tuple[dict[str, float], int]:
    """(mean score per metric the gate names, judge failures) of one model, asked one question at
    a time: a gate takes one of the engine's slots, never the batch live traffic needs."""
    answers = [await ask(item) for item in gate.items]
    per_item = [reference_scores(text, item.reference) for item, text in zip(gate.items, answers, strict=True)]
    result: dict[str, float] = {}
    for metric in REFERENCE_METRICS:
        values = [s[metric] for s in per_item if metric in s]
        if metric in gate.spec.metrics and values:
            result[metric] = fmean(values)
    errors = 0
    if gate.spec.uses_judge and judge is not None:
        tasks = [(str(i), item, text) for i, (item, text) in enumerate(zip(gate.items, answers, strict=True))]
        verdicts = await judge_with(judge, tasks, DEFAULT_RUBRIC, concurrency=1)
        usable = [v.total for v in verdicts.values() if v.error is None]
        errors = len(verdicts) - len(usable)
        result[JUDGE_METRIC] = fmean(usable) if usable else 0.0
    return result, errors

"""The pairwise judge: which of two answers to the same question is better, asked twice.

A pointwise score drifts with the judge's mood; a preference between two answers is what a
reviewer actually decides. LLM judges are known to favour a position, so every pair is judged
twice with the answers swapped: a model wins an item only when both verdicts name it; a pair of
verdicts that names each answer once, one per position, is a *flip* and counts as a tie, and the
share of flips is reported (the judge's position bias on this set). Win, tie and loss rates come
with Wilson intervals; the win rate (a tie counts half) with a paired bootstrap interval over items;
and with three or more models a Bradley–Terry ranking with bootstrap intervals (items resampled).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import stats
from ..datasets.testset import EvalItem
from .judge import JUDGE_MAX_TOKENS, REASON_CHARS, JudgeAsk
from .runner import Answer

INSTRUCTIONS = (
    "You compare two answers of customer-service assistants to the same conversation. Say which "
    "answer is better for the customer (correct, complete, courteous), or 'tie' when neither is, and "
    "give your reason in one short sentence. You do not know which systems wrote them; their order "
    "means nothing."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "better": {"enum": ["A", "B", "tie"]},
        "reason": {"type": "string", "maxLength": REASON_CHARS},
    },
    "required": ["better", "reason"],
    "additionalProperties": False,
}
BOOTSTRAP_RANKINGS = 500


def request(item: EvalItem, first: str, second: str) -> dict[str, Any]:
    """The chat request (without ``model``) asking which of ``first`` (A) and ``second`` (B) is better."""
    parts = [f"Conversation so far:\n{json.dumps(list(item.messages), ensure_ascii=False)}"]
    if item.reference is not None:
        parts.append(f"Reference answer (what a good answer says):\n{item.reference}")
    parts += [f"Answer A:\n{first}", f"Answer B:\n{second}"]
    return {
        "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "\n\n".join(parts)}],
        "temperature": 0,
        "max_tokens": JUDGE_MAX_TOKENS,
        "response_format": {"type": "json_schema", "json_schema": {"name": "preference", "schema": SCHEMA}},
    }


def parse(content: str) -> str | None:
    """``A``, ``B`` or ``tie``; None for an answer that is none of them."""
    try:
        better = json.loads(content)["better"]
    except (ValueError, KeyError, TypeError):
        return None
    return better if better in ("A", "B", "tie") else None


@dataclass(frozen=True)
class Comparison:
    """One item, one pair of models: the two verdicts (``a`` first, then ``b`` first)."""

    item: str
    a: str
    b: str
    a_first: str | None  # the verdict with a's answer as A
    b_first: str | None  # the verdict with b's answer as A

    @property
    def winner(self) -> str | None:
        """``a``, ``b``, ``tie``, or None when a verdict was unusable."""
        if self.a_first is None or self.b_first is None:
            return None
        picks = {_picked(self.a_first, self.a, self.b), _picked(self.b_first, self.b, self.a)}
        if len(picks) == 1 and "tie" not in picks:
            return picks.pop()
        return "tie"

    @property
    def flipped(self) -> bool:
        """Each verdict preferred the answer in the same position: the order decided, not the answers."""
        return self.a_first is not None and self.a_first == self.b_first and self.a_first != "tie"


def _picked(verdict: str, first: str, second: str) -> str:
    return first if verdict == "A" else second if verdict == "B" else "tie"


async def judge_pairs(
    ask: JudgeAsk,
    labels: Sequence[str],
    items: Sequence[EvalItem],
    answers: Sequence[Answer],
    *,
    concurrency: int = 4,
    seed: int = 0,
) -> list[Comparison]:
    """Every pair of models on every item both answered, each judged twice with positions swapped
    (in a shuffled order, so neither position comes first in time)."""
    text = {(a.target, a.item): a.text for a in answers if a.error is None}
    jobs = [
        (item, a, b)
        for item in items
        for a, b in itertools.combinations(labels, 2)
        if (a, item.key) in text and (b, item.key) in text
    ]
    calls = [(job, swapped) for job in jobs for swapped in (False, True)]
    random.Random(seed).shuffle(calls)
    gate = asyncio.Semaphore(concurrency)
    verdicts: dict[tuple[str, str, str, bool], str | None] = {}

    async def one(item: EvalItem, a: str, b: str, swapped: bool) -> None:
        first, second = (b, a) if swapped else (a, b)
        async with gate:
            try:
                content = await ask(request(item, text[(first, item.key)], text[(second, item.key)]))
            except Exception:  # a failed verdict leaves its pair undecided, never ends the run
                content = ""
        verdicts[(item.key, a, b, swapped)] = parse(content)

    await asyncio.gather(*(one(item, a, b, swapped) for (item, a, b), swapped in calls))
    return [
        Comparison(item.key, a, b, verdicts[(item.key, a, b, False)], verdicts[(item.key, a, b, True)])
        for item, a, b in jobs
    ]


def summarize(labels: Sequence[str], comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """Win/tie/loss per pair with intervals, the flip rate, and a ranking for three or more models."""
    pairs = []
    for a, b in itertools.combinations(labels, 2):
        decided = [c for c in comparisons if (c.a, c.b) == (a, b) and c.winner is not None]
        n = len(decided)
        if n == 0:
            continue
        wins = sum(1 for c in decided if c.winner == a)
        losses = sum(1 for c in decided if c.winner == b)
        ties = n - wins - losses
        points = [1.0 if c.winner == a else 0.0 if c.winner == b else 0.5 for c in decided]
        pairs.append(
            {
                "a": a,
                "b": b,
                "n": n,
                "wins": wins,
                "ties": ties,
                "losses": losses,
                "win_rate": stats.wilson(wins, n).summary(),
                "tie_rate": stats.wilson(ties, n).summary(),
                "loss_rate": stats.wilson(losses, n).summary(),
                "score": stats.bootstrap_mean(points).summary(),
                "flips": sum(1 for c in decided if c.flipped),
                "unusable": sum(1 for c in comparisons if (c.a, c.b) == (a, b) and c.winner is None),
            }
        )
    judged = [c for c in comparisons if c.winner is not None]
    flips = sum(1 for c in judged if c.flipped)
    return {
        "pairs": pairs,
        "judged": len(judged),
        "flips": flips,
        "flip_rate": None if not judged else stats.wilson(flips, len(judged)).summary(),
        "ranking": ranking(labels, judged) if len(labels) >= 3 and judged else None,
    }


def _wins(labels: Sequence[str], comparisons: Sequence[Comparison]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    wins = np.zeros((len(labels), len(labels)))
    for c in comparisons:
        i, j = index[c.a], index[c.b]
        if c.winner == c.a:
            wins[i, j] += 1
        elif c.winner == c.b:
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    return wins


def ranking(labels: Sequence[str], comparisons: Sequence[Comparison], seed: int = 0) -> list[dict[str, Any]]:
    """Bradley–Terry strengths (log scale, mean 0), best first, with 95 % bootstrap intervals:
    items are resampled with all their comparisons."""
    strengths = stats.bradley_terry(labels, _wins(labels, comparisons))
    by_item: dict[str, list[Comparison]] = {}
    for c in comparisons:
        by_item.setdefault(c.item, []).append(c)
    keys = sorted(by_item)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(BOOTSTRAP_RANKINGS):
        sample = [c for k in rng.choice(len(keys), len(keys)) for c in by_item[keys[k]]]
        for label, value in stats.bradley_terry(labels, _wins(labels, sample), iterations=200).items():
            draws[label].append(value)
    rows = []
    for label in sorted(labels, key=lambda name: -strengths[name]):
        low, high = np.quantile(draws[label], [0.025, 0.975])
        rows.append(
            {
                "model": label,
                "strength": round(strengths[label], 4),
                "low": round(float(low), 4),
                "high": round(float(high), 4),
            }
        )
    return rows


def markdown(data: dict[str, Any] | None) -> str:
    if not data or not data["pairs"]:
        return ""
    lines = [
        "\n## Pairwise (the judge prefers one answer; each pair judged twice, positions swapped)\n",
        "A model wins an item only when both verdicts name it; verdicts that follow the position are a "
        "flip and count as a tie. Rates with 95 % Wilson intervals; the score counts a tie as half "
        "(95 % bootstrap interval).\n",
        "| A | B | n | A wins | ties | B wins | A's score [95 %] | flips |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in data["pairs"]:
        s = p["score"]
        lines.append(
            f"| {p['a']} | {p['b']} | {p['n']} | {p['wins']} ({p['win_rate']['estimate']:.0%}) | {p['ties']} | "
            f"{p['losses']} ({p['loss_rate']['estimate']:.0%}) | {s['estimate']:.2f} [{s['low']:.2f}, {s['high']:.2f}] "
            f"| {p['flips']} |"
        )
    rate = data["flip_rate"]
    if rate is not None:
        lines.append(
            f"\nPosition bias: {data['flips']} of {data['judged']} pairs flipped with the order "
            f"({rate['estimate']:.0%}, 95 % interval {rate['low']:.0%}–{rate['high']:.0%})."
        )
    if data.get("ranking"):
        lines += ["", "Ranking (Bradley–Terry strength, log scale; 95 % bootstrap interval):", ""]
        lines += [
            f"{k}. {r['model']}: {r['strength']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
            for k, r in enumerate(data["ranking"], 1)
        ]
    return "\n".join(lines) + "\n"

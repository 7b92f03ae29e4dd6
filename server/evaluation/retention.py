"""What an adapter lost: the same general-ability questions to the base and to each adapter.

Fine-tuning a support persona can cost the model things it could do (write code, translate, do
sums). ``--retention`` asks a small general set (``examples/retention.jsonl`` by default, written
for this project) of the base and of every model compared, and reports each one's reference
scores next to the base's: a negative difference is ability lost.
"""

from __future__ import annotations

import statistics
from typing import Any

import httpx

from ..datasets.testset import EvalItem
from ..terms.scores import RETAINED_METRICS
from .metrics import scores
from .runner import AnswerCache, Sampling, Target, ask_all


def served_base(base_url: str, api_key: str | None) -> str | None:
    """The gateway's base model: the card of ``/v1/models`` without a parent."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        cards = httpx.get(f"{base_url}/models", headers=headers, timeout=10).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return next((c["id"] for c in cards if not c.get("parent")), None)


async def retention(
    targets: list[Target], base: Target, items: list[EvalItem], sampling: Sampling, cache: AnswerCache, concurrency: int
) -> dict[str, Any]:
    asked = [base, *(t for t in targets if t.label != base.label)]
    answers = await ask_all(asked, items, sampling, cache, concurrency=concurrency)
    by_item = {item.key: item for item in items}
    means: dict[str, dict[str, float | None]] = {}
    for target in asked:
        scored = [
            scores(a.text, by_item[a.item].reference) for a in answers if a.target == target.label and a.error is None
        ]
        scored = [s for s in scored if s]
        means[target.label] = {
            k: (statistics.fmean(s[k] for s in scored) if scored else None) for k in RETAINED_METRICS
        }
    rows = {}
    for label, mean in means.items():
        row: dict[str, float | None] = dict(mean)
        for k in RETAINED_METRICS:
            own, ref = mean[k], means[base.label][k]
            row[f"{k}_vs_base"] = None if own is None or ref is None else own - ref
        rows[label] = row
    return {"questions": len(items), "base": base.label, "models": rows}


def markdown(section: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:+.3f}" if abs(value) < 10 else f"{value:.3f}"

    lines = [
        f"\n## Retention ({section['questions']} general questions, against the base `{section['base']}`)\n",
        "| model | char F1 | vs base | ROUGE-L | vs base |",
        "|---|---|---|---|---|",
    ]
    for label, row in section["models"].items():
        f1 = "–" if row["f1"] is None else f"{row['f1']:.3f}"
        rouge = "–" if row["rouge_l"] is None else f"{row['rouge_l']:.3f}"
        lines.append(f"| {label} | {f1} | {fmt(row['f1_vs_base'])} | {rouge} | {fmt(row['rouge_l_vs_base'])} |")
    return "\n".join(lines) + "\n"

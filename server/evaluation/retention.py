"""What an adapter lost: the same general-ability questions to the base and to each adapter.

Fine-tuning a support persona can cost the model things it could do (write code, translate, do
sums). ``--retention`` asks a small general set (``examples/retention.jsonl`` by default, written
for this project) of the base and of every model compared, and reports each one's reference
scores next to the base's: a negative difference is ability lost. On a gateway serving several
bases, each model is compared with the base it was trained on (its ``parent`` in ``/v1/models``).
"""

from __future__ import annotations

import statistics
from typing import Any

import httpx

from ..datasets.testset import EvalItem
from ..terms.scores import RETAINED_METRICS
from .metrics import scores
from .runner import AnswerCache, Sampling, Target, ask_all


def served_models(base_url: str, api_key: str | None) -> dict[str, str | None]:
    """The gateway's models and each one's base (``parent`` in ``/v1/models``; None for a base)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        cards = httpx.get(f"{base_url}/models", headers=headers, timeout=10).json()["data"]
        return {str(c["id"]): c.get("parent") or None for c in cards}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}


def served_base(base_url: str, api_key: str | None) -> str | None:
    """The gateway's (first) base model: the card of ``/v1/models`` without a parent."""
    return next((m for m, parent in served_models(base_url, api_key).items() if parent is None), None)


async def retention(
    targets: list[Target],
    bases: list[Target],
    items: list[EvalItem],
    sampling: Sampling,
    cache: AnswerCache,
    concurrency: int,
    base_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Each model against its own base (``base_of``: target label -> base label; a gateway serving
    several bases compares each adapter with the one it was trained on), the first base otherwise."""
    labels = {b.label for b in bases}
    asked = [*bases, *(t for t in targets if t.label not in labels)]
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
    rows, against = {}, {}
    for label, mean in means.items():
        base = label if label in labels else (base_of or {}).get(label, bases[0].label)
        against[label] = base
        row: dict[str, float | None] = dict(mean)
        for k in RETAINED_METRICS:
            own, ref = mean[k], means[base][k]
            row[f"{k}_vs_base"] = None if own is None or ref is None else own - ref
        rows[label] = row
    return {"questions": len(items), "base": bases[0].label, "bases": against, "models": rows}


def markdown(section: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:+.3f}" if abs(value) < 10 else f"{value:.3f}"

    against = section.get("bases") or {}
    several = len(set(against.values())) > 1
    title = "each against its own base" if several else f"against the base `{section['base']}`"
    lines = [
        f"\n## Retention ({section['questions']} general questions, {title})\n",
        "| model | base | char F1 | vs base | ROUGE-L | vs base |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in section["models"].items():
        f1 = "–" if row["f1"] is None else f"{row['f1']:.3f}"
        rouge = "–" if row["rouge_l"] is None else f"{row['rouge_l']:.3f}"
        base = against.get(label, section["base"])
        lines.append(
            f"| {label} | {base} | {f1} | {fmt(row['f1_vs_base'])} | {rouge} | {fmt(row['rouge_l_vs_base'])} |"
        )
    return "\n".join(lines) + "\n"

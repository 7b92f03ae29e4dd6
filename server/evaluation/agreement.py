"""Whether to trust the judge: judge–human agreement and agreement between the human raters.

When raters' sheets (``eval --rating-sheet``, then ``--import-ratings``) and the judge scored the
same answers, the report says how far the judge ranks answers as the raters do (Spearman's rank
correlation of its total with the raters' trimmed mean) and how far it gives the same scores
(Cohen's kappa with quadratic weights on the rubric's whole-number totals), and the same two
figures between each pair of raters: a judge that agrees with raters about as well as they agree
with each other can stand in for them on this kind of question. Kappa is read on Landis and
Koch's scale (slight below 0.2, fair, moderate, substantial, almost perfect above 0.8).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping
from typing import Any

from .. import stats
from .ratings import trimmed_mean

_SCALE = ((0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"), (float("inf"), "almost perfect"))


def strength(kappa: float | None) -> str:
    if kappa is None:
        return "undefined"
    return next(label for bound, label in _SCALE if kappa <= bound) if kappa > 0 else "none"


def _pair(x: list[float], y: list[float], most: int) -> dict[str, Any]:
    categories = list(range(most + 1))
    kappa = stats.weighted_kappa([round(v) for v in x], [round(v) for v in y], categories)
    return {"n": len(x), "spearman": _round(stats.spearman(x, y)), "kappa": _round(kappa), "strength": strength(kappa)}


def agreement(
    ratings: Mapping[str, Mapping[str, float]],
    key: Mapping[str, Mapping[str, str]],
    judge: Mapping[tuple[str, str], float],
    most: int,
) -> dict[str, Any]:
    """``ratings``: ``{answer_id: {rater: total}}``; ``key``: ``{answer_id: {"model", "item"}}``;
    ``judge``: ``{(model, item): total}``; ``most``: the rubric's highest total."""
    raters = sorted({r for by_rater in ratings.values() for r in by_rater})
    between = []
    for a, b in itertools.combinations(raters, 2):
        common = [k for k, by_rater in ratings.items() if a in by_rater and b in by_rater]
        if len(common) >= 2:
            between.append(_pair([ratings[k][a] for k in common], [ratings[k][b] for k in common], most))
    human, machine = [], []
    for answer_id, by_rater in ratings.items():
        found = judge.get((key[answer_id]["model"], key[answer_id]["item"]))
        if found is not None and by_rater:
            human.append(trimmed_mean(list(by_rater.values())))
            machine.append(found)
    kappas = [p["kappa"] for p in between if p["kappa"] is not None]
    return {
        "judge_human": _pair(human, machine, most) if len(human) >= 2 else None,
        "raters": len(raters),
        "between_raters": {
            "pairs": len(between),
            "mean_kappa": _round(statistics.fmean(kappas)) if kappas else None,
            "mean_spearman": _round(statistics.fmean(s for p in between if (s := p["spearman"]) is not None))
            if any(p["spearman"] is not None for p in between)
            else None,
        },
    }


def markdown(data: Mapping[str, Any] | None) -> str:
    if not data:
        return ""
    lines = ["\n## Agreement (can the judge stand in for the raters?)\n"]
    pair = data.get("judge_human")
    if pair:
        lines.append(
            f"- Judge vs raters, on {pair['n']} answers: Spearman {_text(pair['spearman'])}, weighted kappa "
            f"{_text(pair['kappa'])} ({pair['strength']})."
        )
    between = data["between_raters"]
    if between["pairs"]:
        kappa = between["mean_kappa"]
        lines.append(
            f"- Between the {data['raters']} raters ({between['pairs']} pairs): mean Spearman "
            f"{_text(between['mean_spearman'])}, mean weighted kappa {_text(kappa)} ({strength(kappa)})."
        )
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"

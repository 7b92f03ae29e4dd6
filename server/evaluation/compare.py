"""Paired comparisons: how each model differs from the baseline on the same frozen items, with an
interval, so a report says "+0.12 F1 [0.05, 0.19]" or "no detectable difference (n = 24 can only
detect ≥ 0.18)" instead of two point estimates.

The baseline is the first model of the run (``--model`` order). For every metric, the items both
models answered without an error are paired; the difference's interval is the seeded paired
bootstrap (``server.stats``), exact match also gets McNemar's exact test, and every metric the
minimum effect detectable at this sample size. Each model's own mean gets a bootstrap interval
too (the charts' error bars).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import stats
from ..datasets.testset import EvalItem
from ..terms.scores import JUDGE_METRIC, LABELS, METRICS
from .judge import Verdict
from .metrics import scores
from .runner import Answer, Target


def answer_id(answer: Answer) -> str:
    """How a judge's verdict is keyed: the model and the item."""
    return f"{answer.target}\x00{answer.item}"


def item_scores(
    items: Sequence[EvalItem], answers: Sequence[Answer], verdicts: Mapping[str, Verdict] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {item key: {metric: score}}}`` for every answer without an error."""
    by_item = {item.key: item for item in items}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for answer in answers:
        if answer.error is not None:
            continue
        row = dict(scores(answer.text, by_item[answer.item].reference))
        verdict = (verdicts or {}).get(answer_id(answer))
        if verdict is not None and verdict.error is None:
            row[JUDGE_METRIC] = verdict.total
        table.setdefault(answer.target, {})[answer.item] = row
    return table


def mean_intervals(per_item: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Each metric's mean over one model's items, with its bootstrap interval."""
    result: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        values = [row[metric] for row in per_item.values() if metric in row]
        if len(values) >= 2:
            result[metric] = stats.bootstrap_mean(values).summary()
    return result


def compare(targets: Sequence[Target], table: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """One row per (model other than the baseline, metric) with at least two paired items."""
    if len(targets) < 2:
        return []
    baseline = targets[0].label
    base = table.get(baseline, {})
    rows = []
    for target in targets[1:]:
        mine = table.get(target.label, {})
        for metric in METRICS:
            keys = [k for k in base if k in mine and metric in base[k] and metric in mine[k]]
            if len(keys) < 2:
                continue
            a = [base[k][metric] for k in keys]
            b = [mine[k][metric] for k in keys]
            interval = stats.paired_bootstrap(a, b)
            mde = stats.min_detectable_effect([y - x for x, y in zip(a, b, strict=True)])
            row: dict[str, Any] = {
                "model": target.label,
                "baseline": baseline,
                "metric": metric,
                "n": len(keys),
                "difference": interval.summary(),
                "min_detectable": None if mde is None else round(mde, 4),
                "significant": interval.excludes_zero,
            }
            if metric == "exact":
                test = stats.mcnemar([x >= 1 for x in a], [y >= 1 for y in b])
                row["mcnemar"] = {"baseline_only": test.a_only, "model_only": test.b_only, "p_value": test.p_value}
            row["verdict"] = verdict(row)
            rows.append(row)
    return rows


def verdict(row: Mapping[str, Any]) -> str:
    """The comparison in words: the difference and its interval, or what the sample can detect."""
    difference = row["difference"]
    label = LABELS[row["metric"]]
    if row["significant"]:
        return f"{difference['estimate']:+.2f} {label} [{difference['low']:.2f}, {difference['high']:.2f}]"
    detectable = row["min_detectable"]
    if not detectable:  # every item scored the same for both models
        return f"no difference in {label} on any of the {row['n']} items"
    return f"no detectable difference in {label} (n = {row['n']} can only detect ≥ {detectable:.2f})"


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    lines = [
        f"\n## Against {rows[0]['baseline']} (paired, same items)\n",
        "Differences are the model's score minus the baseline's over the items both answered, with a 95 % "
        "paired bootstrap interval (10,000 resamples, seeded); exact match adds McNemar's exact test. "
        "The last column is the smallest difference this many items detect at 80 % power.\n",
        "| model | metric | n | difference [95 % interval] | McNemar p | detectable | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d = row["difference"]
        p = f"{row['mcnemar']['p_value']:.3g}" if "mcnemar" in row else "–"
        mde = "–" if row["min_detectable"] is None else f"{row['min_detectable']:.3f}"
        lines.append(
            f"| {row['model']} | {LABELS[row['metric']]} | {row['n']} | {d['estimate']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}] | {p} | {mde} | {row['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def slices(
    targets: Sequence[Target], items: Sequence[EvalItem], table: Mapping[str, Mapping[str, Mapping[str, float]]]
) -> list[dict[str, Any]]:
    """Per tag (a slice of the items carrying it, at least two): each model's mean per metric and,
    past the first model, the paired difference from it with its interval."""
    tags = sorted({tag for item in items for tag in item.tags})
    rows = []
    for tag in tags:
        keys = {item.key for item in items if tag in item.tags}
        if len(keys) < 2:
            continue
        sliced = {label: {k: v for k, v in per.items() if k in keys} for label, per in table.items()}
        means = {
            t.label: {
                metric: round(sum(vals) / len(vals), 4)
                for metric in METRICS
                if (vals := [row[metric] for row in sliced.get(t.label, {}).values() if metric in row])
            }
            for t in targets
        }
        rows.append({"tag": tag, "items": len(keys), "means": means, "comparisons": compare(targets, sliced)})
    return rows


def slices_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["\n## By slice (items' `tags`)\n", "| slice | items | model | metric | mean | against the first model |"]
    lines.append("|---|---|---|---|---|---|")
    for row in rows:
        verdicts = {(c["model"], c["metric"]): c["verdict"] for c in row["comparisons"]}
        for model, means in row["means"].items():
            for metric, mean in means.items():
                said = verdicts.get((model, metric), "–")
                lines.append(f"| {row['tag']} | {row['items']} | {model} | {LABELS[metric]} | {mean:.3f} | {said} |")
    return "\n".join(lines) + "\n"

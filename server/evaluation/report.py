"""The comparison: one row per model (scores, latency, speed), written as ``report.md`` (the table
teams paste into a review), ``report.json`` (the same, for tools) and ``answers.jsonl`` (every
answer with every score, so any number in the table can be traced to the answers behind it)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..datasets.testset import EvalItem
from ..terms.scores import LABELS, REFERENCE_METRICS
from . import compare
from .agreement import markdown as agreement_markdown
from .compare import answer_id
from .judge import Verdict
from .leakage import markdown as leakage_markdown
from .metrics import scores
from .pairwise import markdown as pairwise_markdown
from .runner import Answer, Sampling, Target

SCORES: tuple[str, ...] = REFERENCE_METRICS  # the table is server.terms.scores


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(
    targets: list[Target],
    items: list[EvalItem],
    answers: list[Answer],
    verdicts: dict[str, Verdict] | None = None,
    memory: dict[str, int | None] | None = None,
    per_item: dict[str, dict[str, dict[str, float]]] | None = None,
) -> list[dict[str, Any]]:
    """One summary per target, in the order given. ``memory``: the peak memory of the engine that
    served each target (models on one gateway share one engine, so they share the figure);
    ``per_item``: ``compare.item_scores`` when the caller has it already."""
    by_item = {item.key: item for item in items}
    verdicts = verdicts or {}
    if per_item is None:
        per_item = compare.item_scores(items, answers, verdicts)
    rows = []
    for target in targets:
        mine = [a for a in answers if a.target == target.label]
        judged = [verdicts[answer_id(a)] for a in mine if answer_id(a) in verdicts]
        good = [v for v in judged if v.error is None]
        ok = [a for a in mine if a.error is None]
        scored = [scores(a.text, by_item[a.item].reference) for a in ok if by_item[a.item].reference is not None]
        speeds = [s for s in (a.tokens_per_second for a in ok) if s is not None]
        rows.append(
            {
                "model": target.label,
                "endpoint": target.base_url,
                "model_id": target.model,
                "version": target.version,
                "questions": len(mine),
                "errors": len(mine) - len(ok),
                "error_reason": next((a.error for a in mine if a.error is not None), None),  # the first, as said
                "with_reference": len(scored),
                **{name: (statistics.fmean(s[name] for s in scored) if scored else None) for name in SCORES},
                "ttft_p50_s": _percentile([a.ttft for a in ok if a.ttft is not None], 0.5),
                "ttft_p90_s": _percentile([a.ttft for a in ok if a.ttft is not None], 0.9),
                "tokens_per_s": statistics.median(speeds) if speeds else None,
                "e2e_p50_s": _percentile([a.e2e for a in ok], 0.5),
                "cached": sum(1 for a in mine if a.cached),
                "peak_memory_bytes": (memory or {}).get(target.label),
                "judge_total": statistics.fmean(v.total for v in good) if good else None,
                "judge_criteria": {
                    name: statistics.fmean(v.scores[name] for v in good) for name in (good[0].scores if good else {})
                },
                "judge_errors": len(judged) - len(good),
                "intervals": compare.mean_intervals(per_item.get(target.label, {})),
            }
        )
    return rows


def write_report(
    out: Path,
    name: str,
    targets: list[Target],
    items: list[EvalItem],
    answers: list[Answer],
    sampling: Sampling,
    seconds: float,
    verdicts: dict[str, Verdict] | None = None,
    retention: dict[str, Any] | None = None,
    memory: dict[str, int | None] | None = None,
    pairwise: dict[str, Any] | None = None,
    leakage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    by_item = {item.key: item for item in items}
    versions = {t.label: t.version for t in targets}
    with (out / "answers.jsonl").open("w", encoding="utf-8") as file:
        for answer in answers:
            item = by_item[answer.item]
            record = {
                "model": answer.target,
                "version": versions[answer.target],
                "source": item.source,
                "question": item.question,
                "reference": item.reference,
                "rubric": item.rubric,
                **asdict(answer),
                "tokens_per_s": answer.tokens_per_second,
                "scores": scores(answer.text, item.reference) if answer.error is None else {},
                "judge": asdict(verdicts[answer_id(answer)]) if verdicts and answer_id(answer) in verdicts else None,
            }
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    per_item = compare.item_scores(items, answers, verdicts)  # once: the summary, comparisons and slices
    summary = summarize(targets, items, answers, verdicts, memory, per_item)
    report = {
        "name": name,
        "questions": len(items),
        "sampling": asdict(sampling),
        "seconds": seconds,
        "models": summary,
        "comparisons": compare.compare(targets, per_item),
        "slices": compare.slices(targets, items, per_item),
        "pairwise": pairwise,
        "leakage": leakage,
        "retention": retention,
    }
    report["answers"] = [
        {
            "model": answer.target,
            "question": by_item[answer.item].question,
            "reference": by_item[answer.item].reference,
            "answer": answer.text,
            "error": answer.error,
            "judge_reason": verdicts[answer_id(answer)].reason or verdicts[answer_id(answer)].error
            if verdicts and answer_id(answer) in verdicts
            else None,
        }
        for answer in answers
    ]
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_pages(out, report)
    return report


def write_pages(out: Path, report: dict[str, Any]) -> None:
    """``report.md`` and ``report.html`` from ``report`` (also after human ratings are imported)."""
    from .html import render

    table = markdown(report)
    if report.get("retention"):
        from .retention import markdown as retention_markdown

        table += retention_markdown(report["retention"])
    (out / "report.md").write_text(table, encoding="utf-8")
    (out / "report.html").write_text(render(report, table), encoding="utf-8")


def _fmt(value: float | None, digits: int = 3, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    header = (
        "| model | judge | human | exact | char F1 | ROUGE-L | TTFT p50 ms | TTFT p90 ms | tokens/s | e2e p50 s "
        "| peak mem GB | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = "".join(
        f"| {m['model']} | {_fmt(m['judge_total'], 2)} | {_fmt(m.get('human_total'), 2)} | {_fmt(m['exact'])} | "
        f"{_fmt(m['f1'])} | {_fmt(m['rouge_l'])} | "
        f"{_fmt(m['ttft_p50_s'], 0, 1000)} | {_fmt(m['ttft_p90_s'], 0, 1000)} | {_fmt(m['tokens_per_s'], 1)} | "
        f"{_fmt(m['e2e_p50_s'], 2)} | {_fmt(m.get('peak_memory_bytes'), 2, 1e-9)} | {m['errors']} |\n"
        for m in report["models"]
    )
    sampling = report["sampling"]
    return (
        f"# Eval: {report['name']}\n\n"
        f"{report['questions']} questions, temperature {sampling['temperature']}, max_tokens "
        f"{sampling['max_tokens']}; {report['seconds']:.1f} s. Scores are means over the questions with a "
        "reference (character level: Chinese-aware). Peak memory is the serving engine's (GPU allocations, or "
        "the process's RSS on CPU), shared by the models one gateway serves. Every answer and score: "
        "`answers.jsonl`.\n\n"
        + header
        + rows
        + intervals(report)
        + compare.markdown(report.get("comparisons") or [])
        + compare.slices_markdown(report.get("slices") or [])
        + pairwise_markdown(report.get("pairwise"))
        + leakage_markdown(report.get("leakage"))
        + agreement_markdown(report.get("agreement"))
        + failures(report)
    )


def intervals(report: dict[str, Any]) -> str:
    """Each model's means with their 95 % bootstrap intervals (the table above shows the means)."""
    lines = []
    for m in report["models"]:
        shown = [
            f"{LABELS[metric]} {v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
            for metric, v in (m.get("intervals") or {}).items()
        ]
        if shown:
            lines.append(f"- **{m['model']}**: " + "; ".join(shown) + "\n")
    return "\nMeans with 95 % bootstrap intervals:\n\n" + "".join(lines) if lines else ""


def failures(report: dict[str, Any]) -> str:
    """Why models failed questions, in words (a dash in the table says nothing)."""
    lines = [
        f"- **{m['model']}**: {m['errors']} of {m['questions']} questions failed: {m['error_reason']}\n"
        for m in report["models"]
        if m["errors"]
    ]
    return "\n## Failures\n\n" + "".join(lines) if lines else ""

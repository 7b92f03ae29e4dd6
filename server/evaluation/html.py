"""``report.html``: the comparison as one self-contained page a person opens in a browser.

Charts are drawn with matplotlib (Agg, no display) and embedded as PNG data URLs, so the page needs
no network, no scripts and no files beside it: rubric (or reference-score) bars per model, then
time to first token, decode speed and the engine's peak memory per model, and each paired
difference from the baseline with its interval. The table is the one ``report.md`` holds.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from ..terms.scores import LABELS, REFERENCE_METRICS


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _charts(models: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    # Model names are data (``--endpoint-model '$\\foo{$'``): never parsed as mathtext, which fails on them.
    with matplotlib.rc_context({"text.parse_math": False}):
        return _draw(models, comparisons)


def _draw(models: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt

    names = [m["model"] for m in models]
    charts = []
    criteria = sorted({c for m in models for c in (m.get("judge_criteria") or {})})
    series = {c: [(m.get("judge_criteria") or {}).get(c) or 0 for m in models] for c in criteria}
    errors: dict[str, list[tuple[float, float]]] = {}
    title = "Judge rubric, mean per criterion"
    if not criteria:
        series = {k: [(m.get(k) or 0) for m in models] for k in REFERENCE_METRICS}
        errors = {k: [_error_bar(m, k) for m in models] for k in REFERENCE_METRICS}
        title = "Reference scores, with 95 % intervals"
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(names) * max(1, len(series)) / 3), 3.2))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        bars = errors.get(label)
        yerr = None if bars is None else [[b[0] for b in bars], [b[1] for b in bars]]
        axis.bar([i + k * width for i in range(len(names))], values, width, label=label, yerr=yerr, capsize=3)
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names)
    axis.set_title(title)
    axis.legend(fontsize=7)
    charts.append((title, _png(figure)))
    plt.close(figure)

    memory = [(m.get("peak_memory_bytes") or 0) / 1e9 for m in models]
    figure, axes = plt.subplots(1, 3 if any(memory) else 2, figsize=(13 if any(memory) else 9, 3))
    axes[0].bar(names, [1000 * (m.get("ttft_p50_s") or 0) for m in models], color="#4c72b0")
    axes[0].set_title("Time to first token, p50 (ms)")
    axes[1].bar(names, [m.get("tokens_per_s") or 0 for m in models], color="#55a868")
    axes[1].set_title("Decode speed (tokens/s)")
    if any(memory):
        axes[2].bar(names, memory, color="#c44e52")
        axes[2].set_title("Engine peak memory (GB)")
    charts.append(("Latency, speed and memory", _png(figure)))
    plt.close(figure)
    if comparisons:
        charts.append(_differences(comparisons))
    return charts


def _error_bar(model: dict[str, Any], metric: str) -> tuple[float, float]:
    """(below, above) the mean: the distances to the interval's bounds (none without one)."""
    interval = (model.get("intervals") or {}).get(metric)
    if interval is None:
        return (0.0, 0.0)
    return (max(0.0, interval["estimate"] - interval["low"]), max(0.0, interval["high"] - interval["estimate"]))


def _differences(comparisons: list[dict[str, Any]]) -> tuple[str, str]:
    """Each paired difference from the baseline with its interval, one row each (a forest plot)."""
    import matplotlib.pyplot as plt

    labels = [f"{c['model']} {LABELS[c['metric']]}" for c in comparisons]
    estimates = [c["difference"]["estimate"] for c in comparisons]
    below = [c["difference"]["estimate"] - c["difference"]["low"] for c in comparisons]
    above = [c["difference"]["high"] - c["difference"]["estimate"] for c in comparisons]
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    colours = [
        "#55a868" if c["significant"] and e > 0 else "#c44e52" if c["significant"] else "#8c8c8c"
        for c, e in zip(comparisons, estimates, strict=True)
    ]
    for row, (estimate, low, high, colour) in enumerate(zip(estimates, below, above, colours, strict=True)):
        axis.errorbar([estimate], [row], xerr=[[low], [high]], fmt="none", ecolor=colour, capsize=3)
    axis.scatter(estimates, range(len(labels)), color=colours, zorder=3)
    axis.axvline(0, color="#444444", linewidth=0.8)
    axis.set_yticks(range(len(labels)), labels)
    axis.invert_yaxis()
    title = f"Difference from {comparisons[0]['baseline']} (paired, 95 % intervals)"
    axis.set_title(title)
    png = _png(figure)
    plt.close(figure)
    return title, png


def _tables(text: str) -> str:
    """Each markdown table of ``text`` (runs of ``|`` lines) as an HTML table, headings kept."""
    out, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if rows:
            body = "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{c}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                for i, row in enumerate(rows)
            )
            out.append(f"<table>{body}</table>")
            rows = []
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip() and not line.startswith("# "):  # the notes under a table: rankings, position bias
            out.append(f"<p>{html.escape(line.strip())}</p>")
    return "".join(out)


def render(report: dict[str, Any], table_markdown: str) -> str:
    table = _tables(table_markdown)
    figures = "".join(
        f'<figure><img alt="{html.escape(t)}" src="{src}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, src in _charts(report["models"], report.get("comparisons") or [])
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Eval: {html.escape(report['name'])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block}"
        ".answers td{text-align:left;vertical-align:top;white-space:pre-wrap}</style>"
        f"</head><body><h1>Eval: {html.escape(report['name'])}</h1>"
        f"<p>{report['questions']} questions, {report['seconds']:.1f} s. Every answer and score: answers.jsonl.</p>"
        f"{table}{figures}{_answers(report.get('answers') or [])}</body></html>"
    )


def _answers(answers: list[dict[str, Any]]) -> str:
    """Every question with each model's answer and the reason given (the judge's, or the error),
    so a reviewer reads what was scored without opening answers.jsonl."""
    if not answers:
        return ""
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(cell or ''))}</td>"
            for cell in (a["model"], a["question"], a["reference"], a["answer"], a["error"] or a["judge_reason"])
        )
        + "</tr>"
        for a in answers
    )
    return (
        "<h2>Answers</h2><table class='answers'><tr><th>model</th><th>question</th><th>reference</th>"
        f"<th>answer</th><th>reason</th></tr>{rows}</table>"
    )

"""Per-version feedback report: how each version of an adapter was rated, and its worst answers."""

from __future__ import annotations

from typing import Any

from .store import FeedbackStore

WORST = 5


def report(store: FeedbackStore, adapter: str, *, since: float | None = None, worst: int = WORST) -> dict[str, Any]:
    """``{"adapter", "versions": [{version, answered, feedback, positive, negative, negative_rate,
    mean_stars, raters}], "worst": [...]}``, newest version first; ``worst`` lists the lowest-rated answers
    (thumbs down and 1-2 stars first) with their question, comment and correction."""
    counts = store.counts(adapter, since)
    served = store.served(adapter, since)
    versions = []
    for version in sorted({*counts, *served}, key=lambda v: -1 if v is None else v, reverse=True):
        row = counts.get(version, {"count": 0, "negative": 0, "mean_stars": None, "raters": 0})
        total, negative = row["count"], row["negative"]
        versions.append(
            {
                "version": version,
                "answered": served.get(version, 0),
                "feedback": total,
                "positive": total - negative,
                "negative": negative,
                "negative_rate": round(negative / total, 4) if total else None,
                "mean_stars": None if row["mean_stars"] is None else round(float(row["mean_stars"]), 2),
                "raters": row["raters"],
            }
        )
    rated = store.rated(adapter, since=since, negative=True)
    rated.sort(key=lambda pair: (_score(pair[0]), -pair[0]["created"]))
    worst_rows = [
        {
            "completion_id": rating["completion_id"],
            "version": rating["version"],
            "rating": rating["rating"],
            "scale": rating["scale"],
            "question": last_user_message(conversation.messages) if conversation else None,
            "answer": conversation.answer if conversation else None,
            "comment": rating["comment"],
            "correction": rating["correction"],
            "created": int(rating["created"]),
        }
        for rating, conversation in rated[:worst]
    ]
    return {"adapter": adapter, "since": since, "versions": versions, "worst": worst_rows}


def table(data: dict[str, Any]) -> str:
    """The report as the CLI prints it."""
    lines = [
        f"Feedback on {data['adapter']}",
        "",
        "| version | answered | feedback | raters | positive | negative | negative rate | mean stars |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["versions"]:
        rate = "–" if row["negative_rate"] is None else f"{row['negative_rate']:.1%}"
        stars = "–" if row["mean_stars"] is None else f"{row['mean_stars']:.2f}"
        lines.append(
            f"| {row['version']} | {row['answered']} | {row['feedback']} | {row['raters']} | {row['positive']} | "
            f"{row['negative']} | {rate} | {stars} |"
        )
    if data["worst"]:
        lines += ["", "Worst-rated answers:"]
        for row in data["worst"]:
            lines.append(
                f"- v{row['version']} {row['completion_id']} ({row['scale']} {row['rating']}): {row['question']!r}"
            )
            lines.append(f"  answered: {row['answer']!r}")
            if row["comment"]:
                lines.append(f"  comment: {row['comment']!r}")
            if row["correction"]:
                lines.append(f"  correction: {row['correction']!r}")
    return "\n".join(lines)


def last_user_message(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts: the text ones
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return None


def _score(rating: dict[str, Any]) -> float:
    """Lower is worse: a thumbs down counts as one star."""
    return 1.0 if rating["scale"] == "thumbs" and rating["rating"] < 0 else float(rating["rating"])


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: float) -> float:
    """``7d``, ``24h``, ``30m``, ``2w`` ago, as a UNIX time; ``ValueError`` saying what is accepted."""
    text = value.strip().lower()
    if len(text) >= 2 and text[-1] in _UNITS and text[:-1].isdigit():
        return now - int(text[:-1]) * _UNITS[text[-1]]
    raise ValueError(f"{value!r}: give a period such as 30m, 24h, 7d or 2w")

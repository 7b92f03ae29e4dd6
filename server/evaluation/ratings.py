"""Human scoring, as teams do it today: a blind rating sheet out, the raters' sheets back in.

``export_sheet`` writes ``rating_sheet.csv``: one row per answer, shuffled, under an opaque id, with
the question, the reference and an empty column per rubric criterion; which model wrote which
answer stays in ``rating_key.json`` beside it. Each rater fills in a copy. ``import_sheets`` reads
them back: per answer, the raters' totals with the highest and the lowest dropped when there are
three raters or more (the trimmed mean teams compute by hand), then the mean per model.
"""

from __future__ import annotations

import csv
import json
import os
import random
import secrets
import statistics
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..datasets.testset import EvalItem
from .judge import Rubric
from .runner import Answer

if TYPE_CHECKING:
    from ..feedback.store import FeedbackStore

SHEET, KEY = "rating_sheet.csv", "rating_key.json"


class RatingError(ValueError):
    pass


def export_sheet(out: Path, answers: list[Answer], items: list[EvalItem], rubric: Rubric, seed: int = 0) -> Path:
    by_item = {item.key: item for item in items}
    rows = [a for a in answers if a.error is None]
    random.Random(seed).shuffle(rows)
    key: dict[str, dict[str, str]] = {}
    with (out / SHEET).open("w", encoding="utf-8-sig", newline="") as file:  # utf-8-sig: Excel reads Chinese
        writer = csv.writer(file)
        writer.writerow(["answer_id", "question", "reference", "answer", *(c.name for c in rubric.criteria), "comment"])
        for answer in rows:
            opaque = secrets.token_hex(4)
            key[opaque] = {"model": answer.target, "item": answer.item}
            item = by_item[answer.item]
            texts = [item.question, item.reference or "", answer.text]
            writer.writerow([opaque, *(spreadsheet_text(t) for t in texts), *([""] * len(rubric.criteria)), ""])
    (out / KEY).write_text(json.dumps(key, indent=1, ensure_ascii=False), encoding="utf-8")
    return out / SHEET


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A cell a spreadsheet shows as text, never runs: a model's answer (or a question) that starts
    like a formula (``=HYPERLINK(...)``, ``+cmd|...``) gets a leading apostrophe, as OWASP advises
    against CSV injection."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def trimmed_mean(values: list[float]) -> float:
    """Drop the highest and the lowest when there are three or more, then average."""
    ordered = sorted(values)
    return statistics.fmean(ordered[1:-1] if len(ordered) >= 3 else ordered)


def rating_key(out: Path) -> dict[str, dict[str, str]]:
    """Which model wrote which answer of the sheet (``answer_id``: ``{"model", "item"}``)."""
    try:
        return dict(json.loads((out / KEY).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise RatingError(f"{out}: no rating key ({exc}); export the sheet from this run first") from None


def import_sheets(out: Path, sheets: list[Path], rubric: Rubric) -> dict[str, Any]:
    """Per model: the mean over its answers of the raters' trimmed mean total (and per criterion)."""
    key = rating_key(out)
    totals = {opaque: list(by_rater.values()) for opaque, by_rater in sheet_totals(out, sheets, rubric).items()}
    per_model: dict[str, list[float]] = {}
    for opaque, raters in totals.items():
        per_model.setdefault(key[opaque]["model"], []).append(trimmed_mean(raters))
    result = {
        model: {"human_total": statistics.fmean(scores), "rated_answers": len(scores)}
        for model, scores in per_model.items()
    }
    return result


def sheet_totals(out: Path, sheets: list[Path], rubric: Rubric) -> dict[str, dict[str, float]]:
    """``{answer_id: {rater: total}}``: each sheet is one rater (named by its file)."""
    key = rating_key(out)
    totals: dict[str, dict[str, float]] = {}
    for sheet in sheets:
        with sheet.open(encoding="utf-8-sig", newline="") as file:
            for line, row in enumerate(csv.DictReader(file), start=2):
                opaque = row.get("answer_id", "")
                if opaque not in key:
                    raise RatingError(f"{sheet}:{line}: unknown answer_id {opaque!r} (a sheet from another run?)")
                cells = [(row.get(c.name) or "").strip() for c in rubric.criteria]
                if not any(cells):
                    continue  # not rated by this rater
                try:
                    values = [int(cell) for cell in cells]
                except ValueError:
                    raise RatingError(f"{sheet}:{line}: scores must be whole numbers") from None
                if any(not 0 <= v <= c.max for v, c in zip(values, rubric.criteria, strict=True)):
                    raise RatingError(f"{sheet}:{line}: a score is outside its range")
                totals.setdefault(opaque, {})[str(sheet)] = float(sum(values))
    return totals


# ---------------------------------------------------------------------------- the playground's ratings


class RatingStore:
    """The playground's blind ratings, one JSON line per rated answer, appended and flushed.

    A JSON-lines file because a rater's few clicks a minute need nothing more, and ``eval
    --import-ratings`` reads it as it reads the raters' CSV sheets (the same trimmed mean)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, records: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(lines)
                file.flush()
                os.fsync(file.fileno())


class DatabaseRatings:
    """The playground's ratings in the feedback database (``--feedback``), beside users' ratings,
    so several gateways share them; ``eval --import-ratings DATABASE_URL`` reads them."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    def append(self, records: list[dict[str, Any]]) -> None:
        self.store.add_playground(records)


def _playground_lines(source: str | Path) -> list[tuple[str, str]]:
    """(where, JSON text) of each rating in a ``.jsonl`` file or a feedback database URL."""
    if "://" in str(source):
        from ..feedback.store import FeedbackStore

        store = FeedbackStore(str(source))
        try:
            return [(f"{source}#{i}", text) for i, text in store.playground_records()]
        finally:
            store.close()
    path = Path(source)
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"{path}:{n}", text) for n, text in enumerate(lines, start=1)]


def import_playground(sources: list[str | Path], rubric: Rubric) -> dict[str, Any]:
    """Per model: the mean over the questions it was rated on of the raters' trimmed mean total
    (a rater's latest rating of an answer counts once), as ``import_sheets`` gives for sheets.
    ``sources`` are ``.jsonl`` files and feedback database URLs."""
    latest: dict[tuple[str, str, str], float] = {}
    names = {c.name for c in rubric.criteria}
    for source in sources:
        for where, text in _playground_lines(source):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                scores = record["scores"]
                if set(scores) != names:
                    raise ValueError(f"scores for {sorted(scores)}, the rubric has {sorted(names)}")
                key = (str(record["model"]), str(record["question"]), str(record.get("rater") or record["session"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise RatingError(f"{where}: not a playground rating ({exc})") from None
            latest[key] = float(sum(scores.values()))
    per_question: dict[tuple[str, str], list[float]] = {}
    for (model, question, _rater), total in latest.items():
        per_question.setdefault((model, question), []).append(total)
    per_model: dict[str, list[float]] = {}
    for (model, _question), totals in per_question.items():
        per_model.setdefault(model, []).append(trimmed_mean(totals))
    return {
        model: {"human_total": statistics.fmean(values), "rated_answers": len(values)}
        for model, values in per_model.items()
    }


def merge_ratings(*results: dict[str, Any]) -> dict[str, Any]:
    """Per-model human scores from several sources, weighted by the answers each rated."""
    merged: dict[str, Any] = {}
    for result in results:
        for model, value in result.items():
            seen = merged.get(model, {"human_total": 0.0, "rated_answers": 0})
            count = seen["rated_answers"] + value["rated_answers"]
            total = (
                seen["human_total"] * seen["rated_answers"] + value["human_total"] * value["rated_answers"]
            ) / count
            merged[model] = {"human_total": total, "rated_answers": count}
    return merged

"""A test set: questions, with an optional reference answer and optional rubric notes each.

Any file the trainer reads is a test set: each conversation's last answer becomes the reference and
everything before it the question (so a training file doubles as the check that an adapter learned
it). A file of ``{"question", "reference"?, "rubric"?}`` records (JSONL or a JSON array) adds
questions without references and per-item notes for the judge. Bad records are reported as
``FILE:LINE: reason``, as the trainer reports them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conversations import Dataset, load_files


@dataclass(frozen=True)
class EvalItem:
    messages: tuple[dict[str, Any], ...]  # OpenAI messages up to the answer to produce
    reference: str | None
    rubric: str | None
    source: str  # FILE:LINE
    tags: tuple[str, ...] = ()  # slices the report breaks scores down by (a question record's ``tags``)

    @property
    def question(self) -> str:
        """The last user message: what a report shows."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def key(self) -> str:
        """A stable id of the question itself (not of where it was read)."""
        return hashlib.sha256(json.dumps(self.messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


MAX_TAGS, MAX_TAG_CHARS = 16, 64


class TestSetError(ValueError):
    """Every bad record, one ``FILE:LINE: reason`` per line."""


def load_test_set(paths: list[str | Path]) -> list[EvalItem]:
    items: list[EvalItem] = []
    errors: list[str] = []
    trainer_files: list[Path] = []
    for path in map(Path, paths):
        if _is_question_file(path):
            found, bad = _question_records(path)
            items += found
            errors += bad
        else:
            trainer_files.append(path)
    if trainer_files:
        dataset: Dataset = load_files(trainer_files)
        errors += dataset.errors
        for conversation in dataset.conversations:
            messages = [m.as_openai() for m in conversation.messages]
            last = max(i for i, m in enumerate(conversation.messages) if m.role == "assistant")
            answer = conversation.messages[last]
            reference = answer.content if answer.content.strip() and not answer.tool_calls else None
            items.append(EvalItem(tuple(messages[:last]), reference, None, conversation.source))
    if errors:
        raise TestSetError("\n".join(errors))
    if not items:
        raise TestSetError("the test set holds no questions")
    return items


def _is_question_file(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8").lstrip()
    except (OSError, UnicodeDecodeError):
        return False
    first = text.split("\n", 1)[0] if not text.startswith("[") else text[:4096]
    return '"question"' in first


def _question_records(path: Path) -> tuple[list[EvalItem], list[str]]:
    items, errors = [], []
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), start=1))
        except ValueError as exc:
            return [], [f"{path}:0: bad JSON ({exc})"]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except ValueError as exc:
                errors.append(f"{path}:{number}: bad JSON ({str(exc).split(':')[0]})")
    for number, record in records:
        where = f"{path}:{number}"
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("question"), str)
            or not record["question"].strip()
        ):
            errors.append(f"{where}: each record needs a non-empty string `question`")
            continue
        reference, rubric = record.get("reference"), record.get("rubric")
        if (
            reference is not None
            and not isinstance(reference, str)
            or rubric is not None
            and not isinstance(rubric, str)
        ):
            errors.append(f"{where}: `reference` and `rubric` must be strings")
            continue
        tags = record.get("tags", [])
        if isinstance(tags, str):
            tags = [tags]
        if (
            not isinstance(tags, list)
            or len(tags) > MAX_TAGS
            or not all(isinstance(t, str) and 0 < len(t.strip()) <= MAX_TAG_CHARS for t in tags)
        ):
            errors.append(
                f"{where}: `tags` must be a list of at most {MAX_TAGS} non-empty strings of {MAX_TAG_CHARS} characters"
            )
            continue
        messages: list[dict[str, Any]] = []
        if isinstance(record.get("system"), str):
            messages.append({"role": "system", "content": record["system"]})
        messages.append({"role": "user", "content": record["question"]})
        items.append(EvalItem(tuple(messages), reference, rubric, where, tuple(t.strip() for t in tags)))
    return items, errors

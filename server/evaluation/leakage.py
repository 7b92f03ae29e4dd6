"""Test items the adapter may have seen in training: a score on a leaked item measures memory.

An adapter trained by ``lora-gateway train`` records its datasets (path and sha256) in
``training_metadata.json`` beside its weights. Where that file is still on this machine with the
same sha256, its user messages are compared with the test set's questions after the scores'
normalisation (``evaluation.metrics.normalize``: width, case, spaces and punctuation folded):
*exact* when equal, *near* when the character F1 of the two is at least ``NEAR``. A file that moved
or changed is reported as not checked, never guessed at. Only flags come out: which items, and the
kind of match; the training data itself is never copied into a report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..datasets.testset import EvalItem
from ..registry.validation import file_sha256
from ..terms.layout import METADATA_FILE
from .metrics import char_f1, normalize

NEAR = 0.9


def training_questions(adapter_dir: Path) -> tuple[list[str], list[str]]:
    """(normalised user messages of the adapter's recorded training data, files not checked and why)."""
    try:
        metadata = json.loads((adapter_dir / METADATA_FILE).read_text(encoding="utf-8"))
        datasets = [(str(d["path"]), str(d["sha256"])) for d in metadata.get("datasets", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], []
    from ..datasets.conversations import load_files

    questions: list[str] = []
    unchecked: list[str] = []
    for path, sha256 in datasets:
        file = Path(path)
        if not file.is_file() or file_sha256(file) != sha256:
            unchecked.append(f"{path}: not on this machine as trained (moved or changed)")
            continue
        dataset = load_files([file])
        for conversation in dataset.conversations:
            questions += [normalize(m.content) for m in conversation.messages if m.role == "user" and m.content]
    return questions, unchecked


def leaked(items: Sequence[EvalItem], questions: Sequence[str]) -> list[dict[str, Any]]:
    """The items whose question is in ``questions``, exactly or nearly."""
    seen = set(questions)
    flags = []
    for item in items:
        question = normalize(item.question)
        if not question:
            continue
        if question in seen:
            flags.append({"item": item.source, "question": item.question, "match": "exact"})
            continue
        for other in questions:  # lengths far apart cannot reach NEAR: skipped before counting characters
            if 0.8 * len(question) <= len(other) <= 1.25 * len(question) and char_f1(question, other) >= NEAR:
                flags.append({"item": item.source, "question": item.question, "match": "near"})
                break
    return flags


def check(adapters_dir: Path, models: Sequence[str], items: Sequence[EvalItem]) -> dict[str, Any]:
    """Per model with a training record in ``adapters_dir``: its flagged items and unchecked files."""
    result: dict[str, Any] = {}
    for model in models:
        directory = adapters_dir / model
        if not (directory / METADATA_FILE).is_file():
            continue
        questions, unchecked = training_questions(directory)
        result[model] = {"flagged": leaked(items, questions), "unchecked": unchecked, "items": len(items)}
    return result


def markdown(data: dict[str, Any] | None) -> str:
    if not data:
        return ""
    lines = ["\n## Leakage (test items also in the adapter's training data)\n"]
    for model, found in data.items():
        flagged = found["flagged"]
        line = f"- **{model}**: {len(flagged)} of {found['items']} items"
        if flagged:
            exact = sum(1 for f in flagged if f["match"] == "exact")
            shown = (_short(f["item"]) for f in flagged[:10])
            line += f" ({exact} exact, {len(flagged) - exact} near): " + ", ".join(shown)
            line += " …" if len(flagged) > 10 else ""
        lines.append(line + ("; not checked: " + "; ".join(found["unchecked"]) if found["unchecked"] else ""))
    return "\n".join(lines) + "\n"


def _short(source: str) -> str:
    """``FILE:LINE`` with the file's name only (the whole path is in report.json)."""
    path, _, line = source.rpartition(":")
    return f"{Path(path).name}:{line}" if path else source

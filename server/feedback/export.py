"""``lora-gateway feedback export``: rated answers back into training data.

Two files, in the trainer's ``messages`` format: ``dataset.jsonl`` holds every rated conversation
that came with a corrected answer (the correction is the assistant's turn), ready for
``lora-gateway train --init-adapter``; ``review.jsonl`` holds the rest with an empty assistant turn
to fill in, beside the answer that was given and the user's comment. A line left empty is refused
by the trainer with its line number, so nothing half-reviewed is trained on by accident.

Every line of ``dataset.jsonl`` is checked against the trainer's own rules first (``problem_with``):
one the trainer would refuse (a whitespace-only correction, a system message mid-conversation)
is left out and named, so a single odd conversation never makes ``train`` refuse the whole file.
Tools the request offered come along, so a tool-using conversation trains as it was served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datasets.conversations import problem_with
from .store import Conversation, FeedbackStore

DATASET, REVIEW = "dataset.jsonl", "review.jsonl"


@dataclass(frozen=True)
class Exported:
    dataset: Path
    review: Path
    corrected: int  # lines in dataset.jsonl
    to_review: int  # lines in review.jsonl
    expired: int  # rated conversations no longer kept (retention), so not exported
    left_out: tuple[tuple[str, str], ...] = ()  # (completion id, why train would refuse it)


def export(
    store: FeedbackStore,
    adapter: str,
    out: Path,
    *,
    since: float | None = None,
    negative: bool = False,
    version: int | None = None,
) -> Exported:
    out.mkdir(parents=True, exist_ok=True)
    rated = store.rated(adapter, since=since, negative=negative, version=version)
    seen: set[str] = set()
    corrected, review, expired, left_out = [], [], 0, []
    # Newest first: a completion rated twice is exported once, with its latest correction.
    for rating, conversation in sorted(rated, key=lambda pair: (not pair[0]["correction"], -pair[0]["created"])):
        if rating["completion_id"] in seen:
            continue
        seen.add(rating["completion_id"])
        if conversation is None:
            expired += 1
            continue
        prompt = [_message(m) for m in conversation.messages]
        tools = {"tools": conversation.tools} if conversation.tools else {}
        if rating["correction"]:
            line = {"messages": [*prompt, {"role": "assistant", "content": rating["correction"]}], **tools}
            problem = problem_with(line)
            if problem is None:
                corrected.append(line)
            else:
                left_out.append((conversation.completion_id, problem))
        else:
            review.append({**_review_line(prompt, conversation, rating), **tools})
    _write(out / DATASET, corrected)
    _write(out / REVIEW, review)
    return Exported(out / DATASET, out / REVIEW, len(corrected), len(review), expired, tuple(left_out))


def _review_line(prompt: list[dict[str, Any]], conversation: Conversation, rating: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": [*prompt, {"role": "assistant", "content": ""}],
        "answer_given": conversation.answer,
        "comment": rating["comment"],
        "rating": rating["rating"],
        "scale": rating["scale"],
        "version": conversation.version,
        "completion_id": conversation.completion_id,
    }


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A captured request message as the trainer reads it: text content, tool calls kept."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not content and message.get("refusal"):  # what the assistant said, when all it said was a refusal
        content = message["refusal"]
    out: dict[str, Any] = {"role": "system" if message.get("role") == "developer" else message.get("role")}
    out["content"] = content if content is not None else ""
    for key in ("tool_calls", "tool_call_id"):
        if message.get(key):
            out[key] = message[key]
    return out


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)

"""What is known of each kept version of an adapter: for ``adapters history`` and the admin API.

Read from the durable store only (``store.py``), so the CLI shows the same history with or
without a running gateway: number, weights sha256, when it was proven (published), whether it is
pinned, its eval gate's outcome, and what it was trained on (its ``training_metadata.json``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..terms.layout import METADATA_FILE
from .store import StoredVersion, VersionStore


def history(store: VersionStore, name: str) -> list[dict[str, Any]]:
    """The kept versions of ``name``, newest first."""
    return [describe(version) for version in store.versions(name)]


def describe(version: StoredVersion) -> dict[str, Any]:
    return {
        "version": version.number,
        "sha256": version.sha256,
        "published": int(version.kept_at),
        "pinned": version.pinned,
        "eval": version.eval,
        "training": _training(version),
    }


def _training(version: StoredVersion) -> dict[str, Any] | None:
    try:
        meta = json.loads((version.path / METADATA_FILE).read_text(encoding="utf-8"))
        return {
            "datasets": [d.get("path") for d in meta.get("datasets", [])],
            "examples": (meta.get("examples") or {}).get("train"),
            "steps": meta.get("steps"),
            "final_train_loss": meta.get("final_train_loss"),
        }
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # published without the trainer, or metadata it cannot read


def table(rows: list[dict[str, Any]], serving: int | None = None) -> str:
    """``rows`` (from ``history``) as the plain-text table the CLI prints."""
    lines = [f"{'version':>7}  {'sha256':12}  {'published':19}  pinned  eval                      training"]
    for row in rows:
        evaluated = row["eval"]
        if evaluated:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(evaluated.get("scores", {}).items()))
            evaluated = f"passed ({scores})"
        training = row["training"]
        trained = (
            f"{training['steps']} steps on {', '.join(p.rsplit('/', 1)[-1] for p in training['datasets'] if p)}"
            if training
            else "-"
        )
        mark = "*" if row["version"] == serving else " "
        published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["published"]))
        lines.append(
            f"{mark}{row['version']:>6}  {row['sha256'][:12]}  {published}  {'yes' if row['pinned'] else 'no':6}  "
            f"{(evaluated or '-'):24}  {trained}"
        )
    return "\n".join(lines)

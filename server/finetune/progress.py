"""A running job's progress, read from what the trainer writes: its ``trainer_log.jsonl`` (a
metrics event per step), its checkpoint directories (a checkpoint event and row each), its
training record (the tokens trained) and, when it fails, its last words."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .store import FineTuningStore


class LogTail:
    """Reads the trainer's ``trainer_log.jsonl`` and checkpoints as they appear, into events."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.offset = 0  # bytes of the log read so far: each poll reads only what the trainer added
        self.checkpoints: set[int] = set()  # steps already recorded
        self.trained_tokens: int | None = None
        self.last: dict[str, Any] = {}

    def emit(self, store: FineTuningStore, job_id: str) -> None:
        for line in self._new_lines():
            self.last = line
            data = {
                "step": line["step"],
                "total_steps": line["total_steps"],
                "train_loss": line["loss"],
                "valid_loss": line.get("eval_loss"),
                "learning_rate": line["lr"],
            }
            message = f"Step {line['step']}/{line['total_steps']}: training loss={line['loss']:.4f}"
            store.event(job_id, message, kind="metrics", data=data)
        for checkpoint in sorted(self.run_dir.glob("checkpoint-*")):
            step = checkpoint.name.removeprefix("checkpoint-")
            if not step.isdigit() or int(step) in self.checkpoints:
                continue
            self.checkpoints.add(int(step))
            metrics = {"step": int(step), "train_loss": self.last.get("loss"), "valid_loss": self.last.get("eval_loss")}
            if store.add_checkpoint(job_id, int(step), metrics):
                store.event(job_id, f"Checkpoint saved at step {step}", data={"step": int(step)})
        metadata = self.run_dir / "adapter" / "training_metadata.json"
        if self.trained_tokens is None and metadata.is_file():
            with contextlib.suppress(ValueError, KeyError):
                self.trained_tokens = int(json.loads(metadata.read_text(encoding="utf-8"))["trained_tokens"])

    def _new_lines(self) -> list[dict[str, Any]]:
        """The log lines the trainer finished writing since the last poll (a half-written last
        line waits for the next)."""
        try:
            with (self.run_dir / "trainer_log.jsonl").open("rb") as file:
                file.seek(self.offset)
                added = file.read()
        except FileNotFoundError:
            return []
        whole = added[: added.rfind(b"\n") + 1]
        self.offset += len(whole)
        lines = []
        for text in whole.splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(text))
        return lines


def last_line(log: Path) -> str:
    """Why the trainer stopped: its last words (``lora-gateway train: ...``)."""
    try:
        lines = [
            line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "the trainer stopped"
    said = [line for line in lines if "train:" in line]
    return (said or lines or ["the trainer stopped"])[-1][:500]

"""What a training run leaves behind: trainer_log.jsonl, training_loss.png, checkpoints, metadata."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.base import VLLM_LORA_RANKS
from ..registry.validation import file_sha256
from ..terms.layout import METADATA_FILE

if TYPE_CHECKING:
    from .config import TrainConfig, TrainResult
    from .init_adapter import InitAdapter


def nearest_vllm_rank(rank: int) -> int:
    return min(VLLM_LORA_RANKS, key=lambda allowed: (abs(allowed - rank), -allowed))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """checkpoint-N directories, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


class RunLog:
    """``trainer_log.jsonl`` (LLaMA-Factory's fields) and the loss plot drawn from it."""

    def __init__(self, run_dir: Path, resume_from: int = 0) -> None:
        self.path = run_dir / "trainer_log.jsonl"
        self.plot_path = run_dir / "training_loss.png"
        self._started = time.time()
        kept = [line for line in self._lines() if line["step"] <= resume_from] if resume_from else []
        self._offset = kept[-1]["elapsed"] if kept else 0.0  # elapsed time carries over a resume
        self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def write(
        self,
        *,
        step: int,
        total_steps: int,
        loss: float,
        eval_loss: float | None,
        lr: float,
        epoch: float,
        tokens_per_second: float,
    ) -> None:
        elapsed = self._offset + time.time() - self._started
        line = {
            "step": step,
            "total_steps": total_steps,
            "loss": round(loss, 6),
            "eval_loss": None if eval_loss is None else round(eval_loss, 6),
            "lr": lr,
            "epoch": round(epoch, 4),
            "percentage": round(100 * step / total_steps, 2),
            "elapsed": round(elapsed, 3),
            "remaining": round(elapsed / step * (total_steps - step), 3) if step else None,
            "tokens_per_second": round(tokens_per_second, 1),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def _lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self) -> Path | None:
        """Raw and smoothed training loss, plus eval loss when there is any (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines = self._lines()
        if not lines:
            return None
        steps = [line["step"] for line in lines]
        losses = [line["loss"] for line in lines]
        smoothed, value = [], losses[0]
        for loss in losses:
            value = 0.9 * value + 0.1 * loss  # exponential moving average, as TensorBoard's slider
            smoothed.append(value)
        figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
        axis.plot(steps, losses, color="#9ecae1", linewidth=1, label="training loss")
        axis.plot(steps, smoothed, color="#08519c", linewidth=2, label="smoothed")
        evals = [(line["step"], line["eval_loss"]) for line in lines if line.get("eval_loss") is not None]
        if evals:
            axis.plot(*zip(*evals, strict=True), "o-", color="#d94801", label="eval loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.set_title(f"training loss ({self.path.parent.name})")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(self.plot_path)
        plt.close(figure)
        return self.plot_path


def write_metadata(
    adapter_dir: Path,
    config: TrainConfig,
    formats: dict[str, str],
    counts: dict[str, int],
    result: TrainResult,
    targets: list[str],
    base_fingerprint: str,
    init: InitAdapter | None = None,
) -> Path:
    """Beside the adapter: enough to know what it is and to reproduce it."""
    import peft
    import torch
    import transformers

    from .. import __version__
    from ..datasets.conversations import sampled_file
    from ..registry.base_model import canonical_base_name
    from .config import config_summary

    metadata = {
        "name": config.name,
        "base_model": canonical_base_name(config.base),
        "base_fingerprint": base_fingerprint,
        "datasets": [
            {
                "path": str(p),
                "sha256": file_sha256(sampled_file(p)[0]),
                "format": formats.get(str(sampled_file(p)[0])),
                "sampled": sampled_file(p)[1],
            }
            for p in config.data
        ],
        "init_adapter": init.summary() if init is not None else None,  # what training continued from
        "examples": counts,
        "hyperparameters": {**config_summary(config), "target_modules": targets},
        "steps": result.steps,
        "final_train_loss": result.train_loss,
        "final_eval_loss": result.eval_loss,
        "trained_tokens": result.trained_tokens,
        "duration_seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "versions": {
            "lora-gateway": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": platform.python_version(),
        },
    }
    path = adapter_dir / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
    return path

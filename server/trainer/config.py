"""What a training run is given and what it returns; free of torch, so the CLI can build its
flags (and answer ``--help``) without importing the training stack."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..datasets.conversations import Format


class TrainingError(Exception):
    """Refusal to train, with a message for the user (bad data, too few examples, bad resume)."""


class TrainingInterrupted(Exception):
    """Ctrl-C: a checkpoint was saved; ``checkpoint`` resumes from it."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved to {checkpoint} (resume with --resume)")
        self.checkpoint = checkpoint


@dataclass
class TrainConfig:
    base: str
    data: list[str]
    name: str
    adapters_dir: str = "adapters"
    publish: bool = True
    output_dir: str | None = None  # default: runs/<name>
    format: Format = "auto"
    system: str | None = None
    model_name: str | None = None  # fills {{NAME}}
    model_author: str | None = None  # fills {{AUTHOR}}
    epochs: int = 3
    lr: float = 1e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = "all-linear"  # or comma-separated module names
    batch_size: int = 1
    grad_accum: int = 8
    max_length: int = 2048
    warmup_ratio: float = 0.1
    val_split: float = 0.0
    val_data: list[str] = field(default_factory=list)  # validation files (val_split is then not used)
    seed: int = 42
    save_steps: int | None = None
    save_total_limit: int | None = None
    resume: str | None = None  # a checkpoint directory, or "latest"
    device: str = "auto"
    gpu_memory_fraction: float | None = None  # at most this share of the GPU (beside a serving engine)
    dtype: str = "auto"
    allow_small: bool = False
    max_steps: int | None = None  # stop early (for smoke tests); the schedule still spans all epochs
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    progress: bool = True
    eval_set: str | None = None  # a test set: the published adapter carries it as its eval gate
    gate_min: dict[str, float] = field(default_factory=dict)  # metric -> minimum mean score
    gate_max_drop: dict[str, float] = field(default_factory=dict)  # metric -> allowed drop vs serving
    init_adapter: str | None = None  # continue from this adapter (NAME, NAME@N or a path): init_adapter.py
    canary: int | None = None  # publish as a canary taking this percentage of users (a split file)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)


@dataclass
class TrainResult:
    adapter_dir: Path
    published_to: Path | None
    steps: int
    train_loss: float | None
    eval_loss: float | None
    trained_tokens: int
    seconds: float
    tokens_per_second: float
    counts: dict[str, int] = field(default_factory=dict)


def config_summary(config: TrainConfig) -> dict[str, Any]:
    """The run's settings as the training record keeps them (the progress callback left out)."""
    summary = asdict(config)
    summary.pop("progress", None)
    return summary

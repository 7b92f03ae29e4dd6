"""LoRA fine-tuning that publishes live adapters: ``train(TrainConfig(...))`` or ``lora-gateway train``.

``train`` is imported on first use: the training stack (torch, transformers, peft) costs seconds,
which ``lora-gateway --help`` and every non-training command should not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import TrainConfig, TrainingError, TrainingInterrupted, TrainResult

if TYPE_CHECKING:
    from .loop import train

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "TrainingInterrupted", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from .loop import train

        globals()["train"] = train
        return train
    raise AttributeError(name)

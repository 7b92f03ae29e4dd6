"""LoRA fine-tuning that publishes live adapters: ``train(TrainConfig(...))`` or ``lora-gateway train``."""

from server.trainer.train import TrainConfig, TrainingError, TrainingInterrupted, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "TrainingInterrupted", "train"]

"""lora-gateway: an OpenAI-compatible server for one base model and many hot-swappable LoRA adapters."""

__version__ = "0.1.0"

"""The offline demo: a small random-weight Qwen2 model with a real tokenizer, cached under .demo/."""

from __future__ import annotations

from pathlib import Path

from server.offline_model import TinyModelSpec, build_tiny_model, is_built

# Big enough that batching visibly matters, small enough to build in seconds on two cores.
DEMO_SPEC = TinyModelSpec(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=2048)


def prepare_demo(demo_dir: str | Path = ".demo") -> Path:
    """Return the demo base model directory, building it first if needed."""
    model_dir = Path(demo_dir) / "base"
    if not is_built(model_dir, DEMO_SPEC):
        print(f"Building the offline demo model in {model_dir} ...")
        build_tiny_model(model_dir, DEMO_SPEC)
    return model_dir

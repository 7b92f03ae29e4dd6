"""``lora-gateway demo`` (what ``make demo`` runs): an offline base model, two trained adapters, a server.

The base is a random-weight Qwen2 with a real byte-level BPE tokenizer and Qwen's chat template,
cached under ``.demo/``. Its tokenizer learns its merges from the bundled example datasets as well,
so the Chinese answers take few tokens. Two adapters are trained on ``examples/`` (customer service,
and the bot's identity) and published into the adapters directory, unless they are already there.
Random weights know nothing: the base answers gibberish, each adapter answers from its data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from server.offline_model import TinyModelSpec, build_tiny_model, is_built

DEMO_SPEC = TinyModelSpec(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=4096)


@dataclass(frozen=True)
class DemoAdapter:
    name: str
    data: str
    model_name: str | None = None
    model_author: str | None = None


DEMO_ADAPTERS = (
    DemoAdapter("shop-support", "customer_service.jsonl"),
    DemoAdapter("identity", "self_cognition.json", model_name="小智", model_author="Acme Shop"),
)
# A random model needs many full-batch steps to memorise its answers; these train both adapters in
# about a minute on two CPU cores (measured in benchmarks/train_demo.py).
DEMO_TRAINING = {"epochs": 300, "lr": 5e-3, "batch_size": 32, "grad_accum": 1, "rank": 16, "alpha": 32,
                 "dropout": 0.0, "warmup_ratio": 0.05}


def examples_dir() -> Path:
    """The bundled datasets: beside the package in a checkout, else ./examples."""
    beside = Path(__file__).resolve().parents[1] / "examples"
    return beside if beside.is_dir() else Path("examples")


def _corpus(examples: Path) -> tuple[str, ...]:
    return tuple(sorted(p.read_text(encoding="utf-8") for p in examples.glob("*.json*")))


def prepare_demo(demo_dir: str | Path = ".demo") -> Path:
    """Return the demo base model directory, building it first if needed."""
    model_dir = Path(demo_dir) / "base"
    corpus = _corpus(examples_dir())
    if not is_built(model_dir, DEMO_SPEC, corpus):
        print(f"Building the offline demo model in {model_dir} ...")
        build_tiny_model(model_dir, DEMO_SPEC, corpus)
    return model_dir


def train_demo_adapters(base: Path, adapters_dir: Path, runs_dir: Path) -> list[str]:
    """Train and publish the demo adapters that are missing (or were trained on another base)."""
    from server.trainer import TrainConfig, train

    trained = []
    for adapter in DEMO_ADAPTERS:
        metadata = adapters_dir / adapter.name / "training_metadata.json"
        if metadata.is_file() and json.loads(metadata.read_text()).get("base_model") == str(base):
            continue
        print(f"Training demo adapter {adapter.name!r} on examples/{adapter.data} ...")
        result = train(TrainConfig(base=str(base), data=[str(examples_dir() / adapter.data)], name=adapter.name,
                                   adapters_dir=str(adapters_dir), output_dir=str(runs_dir / adapter.name),
                                   model_name=adapter.model_name, model_author=adapter.model_author, **DEMO_TRAINING))
        print(f"  {adapter.name}: {result.steps} steps in {result.seconds:.0f}s, final loss {result.train_loss:.3f}")
        trained.append(adapter.name)
    return trained

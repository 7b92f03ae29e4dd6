"""``lora-gateway demo`` (what ``make demo`` runs): an offline base model, two trained adapters, a server.

The base is a random-weight Qwen2 with a real byte-level BPE tokenizer and Qwen's chat template,
cached under ``.demo/``. Its tokenizer learns its merges from the bundled example datasets as well,
so the Chinese answers take few tokens. Three adapters are trained on ``examples/`` (customer service,
the bot's identity, and an order-lookup tool) and published into the adapters directory, unless
they are already there.
Random weights know nothing: the base answers gibberish, each adapter answers from its data.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .offline_model import TinyModelSpec, build_tiny_model, is_built
from .registry.base_model import BaseModelSpec
from .registry.validation import file_sha256
from .terms.layout import METADATA_FILE

DEMO_SPEC = TinyModelSpec(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
)


@dataclass(frozen=True)
class DemoAdapter:
    name: str
    data: str
    model_name: str | None = None
    model_author: str | None = None
    training: tuple[tuple[str, Any], ...] = ()  # overrides of DEMO_TRAINING for this adapter

    def settings(self) -> dict[str, Any]:
        return {**DEMO_TRAINING, **dict(self.training)}


DEMO_ADAPTERS = (
    DemoAdapter("shop-support", "customer_service.jsonl"),
    DemoAdapter("identity", "self_cognition.json", model_name="小智", model_author="Acme Shop"),
    # Calls get_order_status with the order number the question names, then answers from its result.
    # Copying that number is harder to learn than a fixed answer: twice the rank and a higher rate,
    # which reproduce every call and answer of the set under greedy decoding (min logprob -0.04).
    DemoAdapter(
        "order-lookup",
        "order_lookup.jsonl",
        training=(("epochs", 300), ("lr", 4e-3), ("rank", 32), ("alpha", 64)),
    ),
)
# ``lora-gateway demo --second-base``: a smaller second base served beside the first, with an
# adapter of its own, to show several bases behind one gateway (each adapter on the base it was
# trained on). Half the width: another architecture as far as adapters are concerned.
SECOND_BASE = "demo-small"
SECOND_BASE_SPEC = TinyModelSpec(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
)
SECOND_BASE_ADAPTERS = (
    DemoAdapter("identity-small", "self_cognition.json", model_name="小智", model_author="Acme Shop"),
)
# A random model needs many full-batch steps to memorise its answers; these train both adapters in
# about a minute on two CPU cores (measured in benchmarks/train_demo.py).
DEMO_TRAINING: dict[str, Any] = {
    "epochs": 300,
    "lr": 2e-3,
    "batch_size": 32,
    "grad_accum": 1,
    "rank": 16,
    "alpha": 32,
    "dropout": 0.0,
    "warmup_ratio": 0.05,
}


def examples_dir() -> Path:
    """The bundled datasets: ``examples/`` beside ``server/`` in a checkout, and inside the
    installed package (``lora_gateway/examples``, package data) once installed."""
    here = Path(__file__).resolve().parent
    beside = here.parent / "examples"
    return beside if (beside / DEMO_ADAPTERS[0].data).is_file() else here / "examples"


def _corpus(examples: Path) -> tuple[str, ...]:
    """The datasets the demo trains on (other files in examples/, such as eval sets, leave the base as is)."""
    return tuple(sorted((examples / adapter.data).read_text(encoding="utf-8") for adapter in DEMO_ADAPTERS))


def prepare_demo(demo_dir: str | Path = ".demo", folder: str = "base", spec: TinyModelSpec = DEMO_SPEC) -> Path:
    """Return the demo base model directory, building it first if needed."""
    model_dir = Path(demo_dir) / folder
    corpus = _corpus(examples_dir())
    if not is_built(model_dir, spec, corpus):
        print(f"Building the offline demo model in {model_dir} ...")
        # Built aside and moved into place: an interrupted build never leaves a half-built base.
        building = model_dir.with_name(f".{folder}-building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        build_tiny_model(building, spec, corpus)
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(building, model_dir)
    return model_dir


def train_demo_adapters(
    base: Path, adapters_dir: Path, runs_dir: Path, adapters: tuple[DemoAdapter, ...] = DEMO_ADAPTERS
) -> list[str]:
    """Train and publish the demo adapters that are missing (or were trained on another base)."""
    from .trainer import TrainConfig, train

    trained = []
    fingerprint = BaseModelSpec.load(str(base)).fingerprint
    for adapter in adapters:
        problem = _not_the_demos(adapters_dir / adapter.name, adapter, fingerprint)
        if problem is None:
            continue
        if problem != "trained on another base" and _served_version(adapters_dir, adapter.name) is not None:
            # A version a gateway proved (yours: the feedback loop's, a promoted canary) is never
            # trained over; files that were refused, or another base's, are.
            number = _served_version(adapters_dir, adapter.name)
            print(
                f"{adapters_dir / adapter.name} is version {number}, which a gateway served ({problem}); kept as it is"
            )
            continue
        if (adapters_dir / adapter.name).exists():
            print(f"{adapters_dir / adapter.name} is not the demo's adapter ({problem}); training the demo's again")
        print(f"Training demo adapter {adapter.name!r} on examples/{adapter.data} ...")
        result = train(
            TrainConfig(
                base=str(base),
                data=[str(examples_dir() / adapter.data)],
                name=adapter.name,
                adapters_dir=str(adapters_dir),
                output_dir=str(runs_dir / adapter.name),
                model_name=adapter.model_name,
                model_author=adapter.model_author,
                **adapter.settings(),
            )
        )
        print(f"  {adapter.name}: {result.steps} steps in {result.seconds:.0f}s, final loss {result.train_loss:.3f}")
        trained.append(adapter.name)
    return trained


def _served_version(adapters_dir: Path, name: str) -> int | None:
    """The kept (proven) version the directory's files are, if they are one."""
    from .registry.offline import directory_version
    from .registry.store import VersionStore

    kept = directory_version(VersionStore(adapters_dir), name)
    return kept.number if kept is not None else None


def _not_the_demos(path: Path, adapter: DemoAdapter, base_fingerprint: str) -> str | None:
    """Why ``path`` is not what the demo trains (None when it is): judged by its training metadata
    (base fingerprint, dataset digest, settings), not by a path string."""
    try:
        meta = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
        settings = meta["hyperparameters"]
        datasets = [d["sha256"] for d in meta["datasets"]]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable training metadata"
    if meta.get("base_fingerprint") != base_fingerprint:
        return "trained on another base"
    if datasets != [file_sha256(examples_dir() / adapter.data)]:
        return "trained on other data"
    wanted = {**adapter.settings(), "model_name": adapter.model_name, "model_author": adapter.model_author}
    changed = sorted(k for k, v in wanted.items() if settings.get(k) != v)
    return f"trained with other settings: {', '.join(changed)}" if changed else None

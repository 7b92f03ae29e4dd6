"""What the embedded engine learns from its model at start-up (``server/engine/loaded_model.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from server.engine.loaded_model import load_model
from server.errors import EngineError


def test_the_model_is_loaded_with_its_context_and_end_tokens(base_model: Path) -> None:
    config = json.loads((base_model / "config.json").read_text())
    loaded = load_model(str(base_model), device="cpu", dtype="auto", max_model_len=None, allow_long_context=False)
    assert loaded.max_model_len == config["max_position_embeddings"] and loaded.device.type == "cpu"
    assert loaded.tokenizer.eos_token_id in loaded.eos_ids and not loaded.model.training
    assert loaded.cache_arg in {"cache", "past_key_values"} and loaded.vocab_size == config["vocab_size"]
    shorter = load_model(str(base_model), device="cpu", dtype="auto", max_model_len=64, allow_long_context=False)
    assert shorter.max_model_len == 64


def test_on_a_cpu_the_linears_are_onednns_unless_turned_off(base_model: Path) -> None:
    def switched(model: torch.nn.Module) -> list[bool]:
        return ["forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear]

    default = load_model(str(base_model), device="cpu", dtype="auto", max_model_len=None, allow_long_context=False)
    off = load_model(
        str(base_model), device="cpu", dtype="auto", max_model_len=None, allow_long_context=False, onednn_linears=False
    )
    assert switched(off.model) and not any(switched(off.model))
    if torch.backends.mkldnn.is_available():
        assert all(switched(default.model))


def test_a_context_beyond_the_model_needs_allow_long_context(base_model: Path) -> None:
    native = json.loads((base_model / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(EngineError, match="allow-long-context"):
        load_model(str(base_model), device="cpu", dtype="auto", max_model_len=native * 2, allow_long_context=False)
    forced = load_model(str(base_model), device="cpu", dtype="auto", max_model_len=native * 2, allow_long_context=True)
    assert forced.max_model_len == native * 2


def test_a_tokenizer_without_a_chat_template_is_refused(base_model: Path, tmp_path: Path) -> None:
    bare = shutil.copytree(base_model, tmp_path / "no-template")
    (bare / "chat_template.jinja").unlink()
    settings = json.loads((bare / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(EngineError, match="no chat template"):
        load_model(str(bare), device="cpu", dtype="auto", max_model_len=None, allow_long_context=False)

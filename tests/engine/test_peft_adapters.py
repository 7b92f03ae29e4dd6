"""The embedded engine's adapters in one PeftModel (server/engine/peft_adapters.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from server.engine.base import AdapterRef
from server.engine.peft_adapters import PeftAdapters
from server.errors import EngineError


def test_load_refuse_an_unload_in_use_and_unload_the_last(base_model: Path, trained_adapters: dict[str, Path]) -> None:
    adapters = PeftAdapters(AutoModelForCausalLM.from_pretrained(base_model).eval())
    alpha = AdapterRef("alpha", 1, str(trained_adapters["alpha"]))
    beta = AdapterRef("beta", 2, str(trained_adapters["beta"]))
    adapters.load(alpha)
    adapters.load(beta)
    adapters.load(beta)  # loading twice is a no-op
    assert isinstance(adapters.model, PeftModel)
    assert adapters.loaded() == ["adapter_1", "adapter_2"] and adapters.name_of(beta) == "adapter_2"

    with pytest.raises(EngineError, match="still in use"):
        adapters.unload(alpha, lambda name: name == "adapter_1")
    assert adapters.name_of(alpha) == "adapter_1"  # refused: nothing changed

    adapters.unload(alpha, lambda _name: False)
    assert adapters.loaded() == ["adapter_2"] and adapters.name_of(alpha) == ""
    adapters.unload(beta, lambda _name: False)  # peft cannot delete its last adapter: the wrapper goes
    assert adapters.loaded() == [] and not isinstance(adapters.model, PeftModel)


def test_a_failed_load_leaves_the_loaded_ones_serving(
    base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    adapters = PeftAdapters(AutoModelForCausalLM.from_pretrained(base_model).eval())
    alpha = AdapterRef("alpha", 1, str(trained_adapters["alpha"]))
    adapters.load(alpha)
    with pytest.raises(Exception):  # noqa: B017 - whatever peft raises for a missing adapter
        adapters.load(AdapterRef("missing", 2, str(tmp_path / "nothing-here")))
    assert adapters.loaded() == ["adapter_1"]
    assert list(adapters.model.peft_config) == ["adapter_1"]

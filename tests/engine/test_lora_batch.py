"""Batched LoRA must compute exactly what peft computes, for any mix of adapters in a batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.lora_batch import BatchedLora
from server.errors import EngineError


def _adapter(base: Path, out: Path, seed: int, **config: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**config))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def varied_adapters(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("varied")
    return {
        "a": _adapter(base_model, root / "a", 1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "b": _adapter(base_model, root / "b", 2, r=4, lora_alpha=4, target_modules="all-linear"),
        "c": _adapter(
            base_model, root / "c", 3, r=16, lora_alpha=8, use_rslora=True, target_modules=["down_proj", "o_proj"]
        ),
    }


def test_batched_delta_matches_peft_mixed_batch(base_model: Path, varied_adapters: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model), varied_adapters["a"], adapter_name="a"
    )
    for name in ("b", "c"):
        model.load_adapter(varied_adapters[name], adapter_name=name)
    model.eval()
    rows = ["a", "__base__", "b", "c", "c", "a"]
    input_ids = torch.randint(0, 200, (len(rows), 7))
    with torch.inference_mode():
        expected = model(input_ids=input_ids, adapter_names=rows).logits
        lora = BatchedLora(model)
        for name in ("a", "c", "b"):  # b grows the rank of layers a already filled
            lora.add(name)
        lora.set_rows([lora.slot_of.get(r, 0) for r in rows], torch.device("cpu"))
        actual = model(input_ids=input_ids).logits
        lora.set_rows([0] * len(rows), torch.device("cpu"))
        base_only = model(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(actual[0], base_only[0])  # the adapters really changed something
    torch.testing.assert_close(base_only[1], expected[1], rtol=1e-4, atol=1e-4)


def test_non_linear_targets_are_refused(base_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = _adapter(base_model, tmp_path / "emb", 4, r=4, target_modules=["embed_tokens", "q_proj"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), path, adapter_name="emb")
    with pytest.raises(EngineError, match="linear"):
        BatchedLora(model).add("emb")


def test_slots_are_reused_and_capacity_grows(base_model: Path, varied_adapters: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model), varied_adapters["a"], adapter_name="a0"
    )
    lora = BatchedLora(model)
    lora.add("a0")
    for i in range(1, 6):
        model.load_adapter(varied_adapters["a"], adapter_name=f"a{i}")
        lora.add(f"a{i}")
    assert sorted(lora.slot_of.values()) == [1, 2, 3, 4, 5, 6]  # grew past the initial 4 slots
    lora.remove("a2")
    model.load_adapter(varied_adapters["b"], adapter_name="b")
    lora.add("b")
    assert lora.slot_of["b"] == 3  # the freed slot is reused
    input_ids = torch.randint(0, 200, (2, 5))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), varied_adapters["a"], "a5")
    reference.load_adapter(varied_adapters["b"], adapter_name="b")
    with torch.inference_mode():
        expected = reference.eval()(input_ids=input_ids, adapter_names=["a5", "b"]).logits  # peft's own
        lora.set_rows([lora.slot_of["a5"], lora.slot_of["b"]], torch.device("cpu"))
        actual = model(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_the_same_rows_keep_their_gathered_weights_until_a_slot_changes(
    base_model: Path, varied_adapters: dict[str, Path]
) -> None:
    """A decode's rows are the same step after step, so their weights are gathered once; a slot
    given to another adapter meanwhile (same rows, same slot numbers) is gathered again."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), varied_adapters["a"], "a")
    lora = BatchedLora(model)
    lora.add("a")
    input_ids = torch.randint(0, 200, (2, 5))
    with torch.inference_mode():
        lora.set_rows([1, 1], torch.device("cpu"))
        first = model(input_ids=input_ids).logits
        lora.set_rows([1, 1], torch.device("cpu"))
        assert torch.equal(model(input_ids=input_ids).logits, first)  # reused: the very same numbers
        model.load_adapter(varied_adapters["b"], adapter_name="b")
        lora.remove("a")
        lora.add("b")  # takes slot 1 again
        assert lora.slot_of["b"] == 1
        lora.set_rows([1, 1], torch.device("cpu"))
        actual = model(input_ids=input_ids).logits
        # peft's own computation, for the reference
        reference = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_model), varied_adapters["b"], "b"
        )
        expected = reference(input_ids=input_ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(actual, first)


def test_the_delta_is_added_in_the_layers_forward_and_close_gives_peft_its_own_back(
    base_model: Path, varied_adapters: dict[str, Path]
) -> None:
    """No forward hooks (each sends every call of the layer down nn.Module's slow path); after
    ``close`` the layers compute as peft alone does."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), varied_adapters["a"], "a")
    model.eval()
    input_ids = torch.randint(0, 200, (2, 5))
    with torch.inference_mode():
        expected = model(input_ids=input_ids).logits  # peft's own, adapter "a" active
        lora = BatchedLora(model)
        lora.add("a")
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        assert layers and all("forward" in m.__dict__ and not m._forward_hooks for m in layers)
        lora.set_rows([1, 1], torch.device("cpu"))
        ours = model(input_ids=input_ids).logits
        lora.close()
        assert all("forward" not in m.__dict__ for m in layers)
        model.base_model.enable_adapter_layers()
        after = model(input_ids=input_ids).logits
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)

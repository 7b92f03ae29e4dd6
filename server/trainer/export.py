"""``lora-gateway export``: merge an adapter into its base, for deployments without LoRA."""

from __future__ import annotations

from pathlib import Path

from ..devices import DTYPES


def export_merged(base: str, adapter: str, out: str, *, dtype: str = "auto") -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto" if dtype == "auto" else DTYPES[dtype])
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target = Path(out)
    merged.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target

"""``lora-gateway export``: merge an adapter into its base, for deployments without LoRA."""

from __future__ import annotations

from pathlib import Path


def export_merged(base: str, adapter: str, out: str, *, dtype: str = "auto") -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target = Path(out)
    merged.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target

"""Load an adapter the way peft will, without touching a GPU: the check behind "ready".

Header validation (``validation.py``) catches what the files say; this catches what only a load
shows: a ``rank_pattern`` that disagrees with the tensors, a config peft cannot read or apply, and
NaN or inf weights (which answer "" greedily and crash sampling). peft injects the LoRA layers into
a skeleton of the base built on PyTorch's ``meta`` device (no memory, no weights), and every tensor
in the file must have exactly the shape peft created for it; skeletons are cached per config.

The local engine then loads the adapter for real; the vLLM and remote engines, whose loads happen
in another process or on a GPU we cannot see from here, rely on this check.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..terms.layout import CONFIG_FILE, WEIGHTS_FILE
from .base_model import BaseModelSpec
from .records import AdapterInfo
from .validation import AdapterRejected, inspect_adapter
from .weights_file import check_finite, read_header

_PREFIX = "base_model.model."
NO_LIMIT = 2**62


def check_adapter(
    path: Path, base: BaseModelSpec | None, *, max_lora_rank: int = 512, max_bytes: int = NO_LIMIT
) -> AdapterInfo:
    """Everything that can be known without the engine: headers, then a dry-run load.

    The one check shared by the registry, ``adapters publish`` and the trainer's publish step.
    """
    info = inspect_adapter(path, max_lora_rank=max_lora_rank, max_bytes=max_bytes, base=base)
    check_finite(path / WEIGHTS_FILE)
    dry_run_load(path, base)
    return info


def dry_run_load(path: Path, base: BaseModelSpec | None) -> None:
    """Raise ``AdapterRejected`` unless every tensor of ``path`` has the shape peft gives it on ``base``."""
    name = path.name
    if base is None or base.config is None:
        return
    header = read_header(path / WEIGHTS_FILE)  # every shape checked to be a list of ints
    shapes = {key: tuple(int(d) for d in entry["shape"]) for key, entry in header.items()}  # type: ignore[attr-defined]
    expected = _peft_shapes(path, base)
    for key, shape in shapes.items():
        peft_key = key.removeprefix(_PREFIX).replace(".weight", ".default.weight")
        if peft_key not in expected:
            raise AdapterRejected("unknown_target", f"{name}: peft would not load tensor {key} (no such LoRA layer).")
        if expected[peft_key] != shape:
            raise AdapterRejected(
                "shape_mismatch",
                f"{name}: tensor {key} has shape {list(shape)}, but its adapter_config.json makes peft expect "
                f"{list(expected[peft_key])} (check r and rank_pattern).",
            )


_shapes_cache: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
_CACHE_SIZE = 256


def _peft_shapes(path: Path, base: BaseModelSpec) -> dict[str, tuple[int, ...]]:
    """Cached by config text and base: tenants trained with one recipe share one skeleton build."""
    key = ((path / CONFIG_FILE).read_text(encoding="utf-8", errors="replace"), base.fingerprint)
    shapes = _shapes_cache.get(key)
    if shapes is None:
        shapes = _build_peft_shapes(path, base)
        if len(_shapes_cache) >= _CACHE_SIZE:
            _shapes_cache.pop(next(iter(_shapes_cache)))
        _shapes_cache[key] = shapes
    return shapes


def _build_peft_shapes(path: Path, base: BaseModelSpec) -> dict[str, tuple[int, ...]]:
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    try:
        config = LoraConfig.from_pretrained(str(path))
    except Exception as exc:  # peft's own error text says which field
        raise AdapterRejected("bad_config", f"{path.name}: peft cannot read adapter_config.json ({exc}).") from None
    config.inference_mode = True
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = AutoModelForCausalLM.from_config(base.config)
        try:
            inject_adapter_in_model(config, skeleton)
        except Exception as exc:
            raise AdapterRejected(
                "bad_config", f"{path.name}: peft cannot apply it to the base model ({exc})."
            ) from None
    return {key: tuple(p.shape) for key, p in skeleton.named_parameters() if ".lora_" in key}

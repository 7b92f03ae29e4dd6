"""Refuse an adapter before anything is exposed, with a one-line reason a user can act on.

Only headers are read: ``adapter_config.json`` and the JSON header of the safetensors file. The
weights themselves are never parsed here, and a pickle (``.bin``) is never opened at all.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from server.registry.records import AdapterInfo

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "pytorch_model.bin")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class AdapterRejected(Exception):
    """``reason`` is a short label for metrics; the message is the one line shown to users."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def inspect_adapter(path: Path, *, max_lora_rank: int, max_bytes: int) -> AdapterInfo:
    """Validate the adapter in ``path`` and return what the registry records about it."""
    config = _read_config(path)
    _check_config(config, max_lora_rank)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        if any((path / name).exists() for name in PICKLE_FILES):
            raise AdapterRejected(
                "pickle_weights",
                f"{path.name}: only safetensors weights are accepted; convert adapter_model.bin "
                "(a pickle, which could run code) with peft's save_pretrained(safe_serialization=True).",
            )
        raise AdapterRejected("missing_weights", f"{path.name}: {WEIGHTS_FILE} is missing.")
    size = weights.stat().st_size
    if size > max_bytes:
        raise AdapterRejected(
            "too_large", f"{path.name}: {WEIGHTS_FILE} is {size} bytes, above the limit of {max_bytes}."
        )
    header = read_safetensors_header(weights)
    if not any(key.endswith(".lora_A.weight") for key in header):
        raise AdapterRejected("no_lora_weights", f"{path.name}: {WEIGHTS_FILE} holds no LoRA weights.")
    return AdapterInfo(
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", config["r"])),
        target_modules=_target_modules(config),
        base_model=config.get("base_model_name_or_path"),
        sha256=_sha256(weights),
        size_bytes=size,
    )


def _read_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterRejected("missing_config", f"{path.name}: {CONFIG_FILE} is missing.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRejected("bad_config", f"{path.name}: {CONFIG_FILE} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise AdapterRejected("bad_config", f"{path.name}: {CONFIG_FILE} must hold a JSON object.")
    return config


def _check_config(config: dict[str, object], max_lora_rank: int) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterRejected("not_lora", f"peft_type is {peft_type!r}; only LORA adapters can be served.")
    if config.get("use_dora"):
        raise AdapterRejected("dora", "DoRA adapters (use_dora: true) cannot be served; retrain with use_dora=False.")
    if config.get("bias", "none") != "none":
        raise AdapterRejected("bias", f"bias={config.get('bias')!r} is not supported; retrain with bias='none'.")
    if config.get("modules_to_save"):
        raise AdapterRejected(
            "modules_to_save", "modules_to_save is not supported; retrain without modules_to_save."
        )
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterRejected("bad_config", f"r must be a positive integer, got {rank!r}.")
    if rank > max_lora_rank:
        raise AdapterRejected("rank", f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")


def _target_modules(config: dict[str, object]) -> tuple[str, ...]:
    targets = config.get("target_modules") or ()
    if isinstance(targets, str):
        return (targets,)
    # peft may expand "all-linear" into full module paths; the leaf names are what users recognise.
    return tuple(sorted({str(t).rsplit(".", 1)[-1] for t in targets}))  # type: ignore[union-attr]


def read_safetensors_header(path: Path) -> dict[str, dict[str, object]]:
    """Tensor name -> {dtype, shape, data_offsets}, read from the header without loading weights."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise AdapterRejected("bad_safetensors", f"{path.parent.name}: {path.name} is truncated.")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER_BYTES, size - 8):
            raise AdapterRejected("bad_safetensors", f"{path.parent.name}: {path.name} has a corrupt header.")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            raise AdapterRejected(
                "bad_safetensors", f"{path.parent.name}: {path.name} header is not valid JSON."
            ) from None
    if not isinstance(header, dict):
        raise AdapterRejected("bad_safetensors", f"{path.parent.name}: {path.name} header is malformed.")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] <= size - 8 - length):
            raise AdapterRejected(
                "bad_safetensors", f"{path.parent.name}: tensor {name} lies outside {path.name}."
            )
    return header


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

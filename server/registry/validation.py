"""Refuse an adapter before anything is exposed, with a one-line reason a user can act on.

Only headers are read: ``adapter_config.json`` and the JSON header of the safetensors file. The
weights themselves are never parsed here, and a pickle (``.bin``) is never opened at all. Tensor
shapes from the header are checked against the served base's linear layers, which catches an
adapter trained on another base even when its config claims the right one.

An adapter still being copied in (a file missing, a weights file shorter than its header says) is
``AdapterIncomplete``: not an error, just not yet servable, as long as its files keep changing; once
they have been left alone for ``weights_file.STALL_SECONDS`` the adapter is refused as truncated.
Anything that is not a regular file (a FIFO, a device) is refused at once and never opened.

``AdapterIncomplete`` and ``AdapterRejected`` live in ``server.errors`` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from ..errors import AdapterIncomplete, AdapterRejected
from ..jsonbounds import JSONRefused, loads_bounded
from ..terms.layout import CONFIG_FILE, METADATA_FILE, PICKLE_FILES, WEIGHTS_FILE
from .base_model import BaseModelSpec
from .gate_spec import read_gate
from .profile import read_profile
from .records import AdapterInfo
from .weights_file import check_finite, read_header, still_arriving

__all__ = ["AdapterIncomplete", "AdapterRejected", "check_finite", "inspect_adapter", "read_header"]

FLOAT_DTYPES = ("F16", "BF16", "F32")


def inspect_adapter(
    path: Path,
    *,
    max_lora_rank: int,
    max_bytes: int,
    base: BaseModelSpec | None = None,
    root: Path | None = None,
) -> AdapterInfo:
    """Validate the adapter in ``path`` and return what the registry records about it.

    ``root``: the adapters directory; anything that resolves outside it (a symlink) is refused.
    """
    if root is not None:
        check_inside(path, root)
    weights, config_file = path / WEIGHTS_FILE, path / CONFIG_FILE
    for file in (weights, config_file):
        if (file.exists() or file.is_symlink()) and not file.is_file():  # a FIFO would block the reader forever
            raise AdapterRejected("not_a_file", f"{path.name}: {file.name} is not a regular file.")
    if not weights.is_file():
        if any((path / name).exists() for name in PICKLE_FILES):
            raise AdapterRejected(
                "pickle_weights",
                f"{path.name}: only safetensors weights are accepted; convert adapter_model.bin "
                "(a pickle, which could run code) with peft's save_pretrained(safe_serialization=True).",
            )
        _missing(path, WEIGHTS_FILE, config_file)
    if not config_file.is_file():
        _missing(path, CONFIG_FILE, weights)
    config = _read_config(path)
    _check_config(config, max_lora_rank)
    size = weights.stat().st_size
    if size > max_bytes:
        raise AdapterRejected(
            "too_large", f"{path.name}: {WEIGHTS_FILE} is {size} bytes, above the limit of {max_bytes}."
        )
    header = read_header(weights, max_bytes=max_bytes)
    if base is not None:
        declared = config.get("base_model_name_or_path")
        if not base.accepts_base(declared if isinstance(declared, str) else None, recorded_fingerprint(path)):
            raise AdapterRejected(
                "base_mismatch",
                f"{path.name}: trained on {declared!r}, but this server serves {base.display_name!r}; "
                "if that is the same model, start the server with --base-model-alias "
                f"{declared!r}.",
            )
        _check_targets(path.name, config.get("target_modules"), base)
    rank = _check_tensors(path.name, header, base, max_lora_rank)
    profile = read_profile(path)
    gate = read_gate(path)
    return AdapterInfo(
        rank=rank,
        alpha=float(config.get("lora_alpha", rank)),  # type: ignore[arg-type]
        target_modules=_target_modules(config),
        base_model=config.get("base_model_name_or_path"),  # type: ignore[arg-type]
        size_bytes=size,
        profile=profile,
        gate=gate,
    )


def _missing(path: Path, name: str, other: Path) -> None:
    """One of the two files is absent: a copy in progress while the other is fresh, refused after."""
    if other.is_file() and not still_arriving(other):
        raise AdapterRejected("missing_files", f"{path.name}: {name} is missing.")
    raise AdapterIncomplete(f"{path.name}: waiting for {name}.")


_MAX_METADATA_BYTES = 1 << 20


def declared_base(path: Path) -> str | None:
    """The base the adapter's config names, if any."""
    return _string_field(path / CONFIG_FILE, "base_model_name_or_path")


def recorded_fingerprint(path: Path) -> str | None:
    """The base fingerprint our trainer records beside an adapter, if any (other tools record none)."""
    return _string_field(path / METADATA_FILE, "base_fingerprint")


def _string_field(file: Path, key: str) -> str | None:
    """``key`` of the JSON object in ``file`` when it is a non-empty string; None for anything else."""
    try:
        if not file.is_file() or file.stat().st_size > _MAX_METADATA_BYTES:
            return None
        document = loads_bounded(file.read_bytes(), max_bytes=_MAX_METADATA_BYTES)
    except (OSError, ValueError):
        return None
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, str) and value else None


def check_inside(path: Path, root: Path) -> None:
    """Refuse ``path`` or any file in it that resolves outside ``root`` (symlinks)."""
    real_root = root.resolve()
    for candidate in (path, *path.iterdir()) if path.is_dir() else (path,):
        if not candidate.resolve().is_relative_to(real_root):
            raise AdapterRejected(
                "outside_directory", f"{path.name}: {candidate.name} points outside the adapters directory."
            )


_PEFT_PREFIX = "base_model.model."


def _check_tensors(
    name: str, header: dict[str, dict[str, object]], base: BaseModelSpec | None, max_lora_rank: int
) -> int:
    """Every tensor is a LoRA A or B of a linear layer the base has, with the base's shapes."""
    ranks: dict[str, int] = {}
    lora_a = ".lora_A.weight"
    lora_b = ".lora_B.weight"
    if not any(key.endswith(lora_a) for key in header):
        raise AdapterRejected("no_lora_weights", f"{name}: {WEIGHTS_FILE} holds no LoRA weights.")
    for key, entry in header.items():
        shape = entry.get("shape")
        if key.endswith(lora_a):
            module, kind = key[: -len(lora_a)], "A"
        elif key.endswith(lora_b):
            module, kind = key[: -len(lora_b)], "B"
        else:
            raise AdapterRejected(
                "unsupported_tensor",
                f"{name}: tensor {key} is not a LoRA A/B matrix of a linear layer "
                "(embeddings, modules_to_save and biases cannot be served).",
            )
        module = module.removeprefix(_PEFT_PREFIX)
        if entry.get("dtype") not in FLOAT_DTYPES:
            raise AdapterRejected(
                "bad_dtype",
                f"{name}: tensor {key} has dtype {entry.get('dtype')!r}; "
                f"LoRA weights must be one of {', '.join(FLOAT_DTYPES)}.",
            )
        if not (isinstance(shape, list) and len(shape) == 2):
            raise AdapterRejected("bad_safetensors", f"{name}: tensor {key} is not a matrix.")
        rank = int(shape[0] if kind == "A" else shape[1])
        if ranks.setdefault(module, rank) != rank:
            raise AdapterRejected("shape_mismatch", f"{name}: {module} has LoRA A and B of different ranks.")
        if rank > max_lora_rank:
            raise AdapterRejected("rank", f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
        if base is None:
            continue
        if module not in base.linear_shapes:
            raise AdapterRejected(
                "unknown_target",
                f"{name}: target module {module} does not exist in the base model "
                "(was the adapter trained on another architecture?).",
            )
        in_features, out_features = base.linear_shapes[module]
        expected = [rank, in_features] if kind == "A" else [out_features, rank]
        if shape != expected:
            raise AdapterRejected(
                "shape_mismatch",
                f"{name}: {key} has shape {shape}, the base model needs {expected} "
                "(the adapter was trained on a different base).",
            )
    return max(ranks.values())


def _read_config(path: Path) -> dict[str, object]:
    try:
        config = loads_bounded((path / CONFIG_FILE).read_bytes(), max_bytes=_MAX_METADATA_BYTES, what=CONFIG_FILE)
    except FileNotFoundError:
        raise AdapterRejected("missing_config", f"{path.name}: {CONFIG_FILE} is missing.") from None
    except JSONRefused as exc:
        raise AdapterRejected("bad_config", f"{path.name}: {exc}.") from None
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
        raise AdapterRejected("modules_to_save", "modules_to_save is not supported; retrain without modules_to_save.")
    rank = config.get("r")
    if type(rank) is not int or rank < 1:  # not isinstance: JSON true is a Python int
        raise AdapterRejected("bad_config", f"r must be a positive integer, got {rank!r}.")
    if rank > max_lora_rank:
        raise AdapterRejected("rank", f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    if "lora_alpha" in config and not _finite_number(config["lora_alpha"]):
        raise AdapterRejected("bad_config", f"lora_alpha must be a finite number, got {config['lora_alpha']!r}.")
    targets = config.get("target_modules")
    if (
        targets is not None
        and not isinstance(targets, str)
        and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise AdapterRejected("bad_config", f"target_modules must be a string or a list of strings, got {targets!r}.")
    for key, valid in (("rank_pattern", lambda v: type(v) is int and v >= 1), ("alpha_pattern", _finite_number)):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict) or not all(isinstance(k, str) and valid(v) for k, v in pattern.items()):
            raise AdapterRejected(
                "bad_config", f"{key} must map module names to {'ranks' if key == 'rank_pattern' else 'numbers'}."
            )


def _check_targets(name: str, targets: object, base: BaseModelSpec) -> None:
    """Every listed target module exists in the base (a regex string is left to the dry run)."""
    if not isinstance(targets, list):
        return
    for target in targets:
        if target != "all-linear" and not any(m == target or m.endswith("." + target) for m in base.linear_shapes):
            raise AdapterRejected(
                "unknown_target",
                f"{name}: target module {target} does not exist in the base model "
                "(was the adapter trained on another architecture?).",
            )


def _finite_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _target_modules(config: dict[str, object]) -> tuple[str, ...]:
    targets = config.get("target_modules") or ()
    if isinstance(targets, str):
        return (targets,)
    assert isinstance(targets, (list, tuple))  # _check_config refused anything else
    # peft may expand "all-linear" into full module paths; the leaf names are what users recognise.
    return tuple(sorted({str(t).rsplit(".", 1)[-1] for t in targets}))


def file_sha256(path: Path) -> str:
    """Reads the whole file: for weights, done when the engine loads them, never during a scan."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

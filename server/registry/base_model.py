"""What an adapter must fit: the served base model, identified by what it is, not how it was typed.

Shapes come from the model's config, instantiated on PyTorch's ``meta`` device: no weights are
read or allocated, so this works the same for the local engine, vLLM in process, or a remote vLLM
whose weights we never see.

A base is known by its names (the id as given, the resolved absolute path of a local directory,
``--served-model-name`` and ``--base-model-alias``) and by a *fingerprint*: a digest of its
config and linear-layer shapes. The trainer records both in ``training_metadata.json``, so an
adapter trained on ``.demo/base`` is accepted when the same model is served as
``/srv/models/demo`` or from another working directory. Fine-tunes of one architecture share
shapes, so shapes alone never decide: a declared name or a fingerprint must match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lora-gateway" / "bases"
# Config keys that say how a copy was saved, not what the model is.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "_attn_implementation_autoset",
}


@dataclass(frozen=True)
class BaseModelSpec:
    """Accepted base names and ``module name -> (in_features, out_features)`` of every linear layer."""

    names: frozenset[str]
    linear_shapes: dict[str, tuple[int, int]] = field(hash=False)
    fingerprint: str = ""
    config: Any = field(default=None, hash=False, compare=False, repr=False)  # transformers' PretrainedConfig

    @classmethod
    def from_pretrained(cls, model: str, aliases: list[str] | tuple[str, ...] = ()) -> BaseModelSpec:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        shapes = {
            name: (module.in_features, module.out_features)
            for name, module in skeleton.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        spec = cls(
            names=frozenset(name_variants(model, aliases)),
            linear_shapes=shapes,
            fingerprint=base_fingerprint(config.to_dict(), shapes),
            config=config,
        )
        if (Path(os.path.expanduser(model)) / "config.json").is_file():
            spec.save_cache(Path(os.path.expanduser(model)) / "config.json")
        return spec

    @classmethod
    def load(cls, model: str) -> BaseModelSpec:
        """``from_pretrained`` for command-line tools: a local base's names, shapes and fingerprint
        are cached by the digest of its config.json, so ``adapters publish`` checks an adapter
        against its base without importing torch after the first time (the trainer fills the cache).
        The cached spec has no ``config``, so it skips the dry-run load the gateway does."""
        config_file = Path(os.path.expanduser(model)) / "config.json"
        if not config_file.is_file():
            return cls.from_pretrained(model)
        cached = _cache_file(config_file)
        try:
            data = json.loads(cached.read_text())
            shapes = {k: (int(v[0]), int(v[1])) for k, v in data["linear_shapes"].items()}
            return cls(frozenset(name_variants(model, ())), shapes, str(data["fingerprint"]))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass
        spec = cls.from_pretrained(model)
        spec.save_cache(config_file)
        return spec

    def save_cache(self, config_file: Path) -> None:
        cached = _cache_file(config_file)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "linear_shapes": self.linear_shapes}))
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only home: the cache is an optimisation only

    def accepts_base(self, declared: str | None, fingerprint: str | None = None) -> bool:
        if not declared:
            return True  # nothing declared: the shape check is the safety net
        if fingerprint and fingerprint == self.fingerprint:
            return True
        return bool(name_variants(declared, ()) & self.names)

    @property
    def module_leaves(self) -> set[str]:
        return {name.rsplit(".", 1)[-1] for name in self.linear_shapes}

    @property
    def display_name(self) -> str:
        return sorted(self.names, key=len)[0]


def _cache_file(config_file: Path) -> Path:
    return _CACHE_DIR / f"{hashlib.sha256(config_file.read_bytes()).hexdigest()}.json"


def base_fingerprint(config: dict[str, Any], shapes: dict[str, tuple[int, int]]) -> str:
    """A digest of what the model is: its config (less how it was saved) and its linear shapes."""
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    blob = json.dumps({"config": stable, "shapes": sorted(shapes.items())}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def name_variants(model: str, aliases: list[str] | tuple[str, ...]) -> set[str]:
    """The model id as given, without a trailing slash, and as an absolute path when it is local."""
    names = {model.rstrip("/"), *(a.rstrip("/") for a in aliases)}
    for name in list(names):
        path = Path(os.path.expanduser(name))
        if path.exists():
            names.add(str(path.resolve()))
    return names


def canonical_base_name(model: str) -> str:
    """How an adapter should record its base: the absolute path of a local model, else the Hub id."""
    path = Path(os.path.expanduser(model))
    return str(path.resolve()) if path.exists() else model.rstrip("/")

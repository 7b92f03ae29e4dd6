"""What an adapter must fit: the served base model's names and linear-layer shapes.

Shapes come from the model's config, instantiated on PyTorch's ``meta`` device: no weights are
read or allocated, so this works the same for the local engine, vLLM in process, or a remote vLLM
whose weights we never see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BaseModelSpec:
    """Accepted base names and ``module name -> (in_features, out_features)`` of every linear layer."""

    names: frozenset[str]
    linear_shapes: dict[str, tuple[int, int]] = field(hash=False)

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
        return cls(names=frozenset(_name_variants(model, aliases)), linear_shapes=shapes)

    def accepts_base(self, declared: str | None) -> bool:
        if not declared:
            return True  # nothing declared: the shape check below is the safety net
        return bool(_name_variants(declared, ()) & self.names)

    @property
    def module_leaves(self) -> set[str]:
        return {name.rsplit(".", 1)[-1] for name in self.linear_shapes}


def _name_variants(model: str, aliases: list[str] | tuple[str, ...]) -> set[str]:
    """The model id as given, without a trailing slash, and as an absolute path when it is local."""
    names = {model.rstrip("/"), *(a.rstrip("/") for a in aliases)}
    for name in list(names):
        path = Path(os.path.expanduser(name))
        if path.exists():
            names.add(str(path.resolve()))
    return names

"""The embedded engine's adapters: every loaded LoRA inside one ``PeftModel`` around the one base.

peft loads and keeps the weights (key mapping, ranks, scaling); ``BatchedLora`` serves them, each
row of a batch with its own adapter. Loading and unloading run on the engine's worker thread only,
between two steps, so no forward sees an adapter half-loaded.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import EngineError
from .base import AdapterRef
from .lora_batch import BatchedLora

logger = logging.getLogger(__name__)


class PeftAdapters:
    def __init__(self, model: Any) -> None:
        self.model = model  # the base, wrapped in a PeftModel while an adapter is loaded
        self._names: dict[int, str] = {}  # adapter_id -> name inside the PeftModel
        self._lora: BatchedLora | None = None  # while an adapter is loaded

    def name_of(self, adapter: AdapterRef) -> str:
        """The adapter's name inside the PeftModel; empty if it is not loaded."""
        return self._names.get(adapter.adapter_id, "")

    def loaded(self) -> list[str]:
        return sorted(self._names.values())

    def load(self, adapter: AdapterRef) -> None:
        from peft import PeftModel

        if adapter.adapter_id in self._names:
            return
        # peft names become attribute keys in ModuleDicts, so they may not contain dots.
        peft_name = f"adapter_{adapter.adapter_id}"
        if isinstance(self.model, PeftModel):
            try:
                self.model.load_adapter(adapter.path, adapter_name=peft_name, is_trainable=False)
            except Exception:  # peft may have injected layers before failing: take them out again
                if peft_name in self.model.peft_config:
                    self.model.delete_adapter(peft_name)
                raise
        else:
            self.model = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=peft_name, is_trainable=False)
        self.model.eval()
        self._names[adapter.adapter_id] = peft_name
        try:
            self._lora = self._lora or BatchedLora(self.model)
            self._lora.add(peft_name)
        except Exception:
            self.unload(adapter, lambda _name: False)  # never keep an adapter the batch path cannot serve
            raise

    def unload(self, adapter: AdapterRef, in_use: Callable[[str], bool]) -> None:
        """Unload ``adapter`` unless ``in_use(its peft name)``: then ``EngineError``, nothing changed."""
        peft_name = self._names.get(adapter.adapter_id)
        if peft_name is None:
            return
        if in_use(peft_name):
            raise EngineError(f"Adapter {adapter.name} is still in use.")
        del self._names[adapter.adapter_id]
        if self._lora is not None:
            self._lora.remove(peft_name)
        if self._names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "active adapter deleted": we never use peft's active adapter
                self.model.delete_adapter(peft_name)
        else:
            # peft cannot delete its last adapter; drop the wrapper and keep the base weights.
            self.model = self.model.unload()
            if self._lora is not None:
                self._lora.close()
                self._lora = None
        logger.info("unloaded adapter %s (%s)", adapter.name, peft_name)

    def set_rows(self, peft_names: Sequence[str], device: torch.device) -> None:
        """Which adapter each row of the next forward uses (``""``: the base)."""
        if self._lora is not None:
            self._lora.set_rows([self._lora.slot_of.get(name, 0) for name in peft_names], device)

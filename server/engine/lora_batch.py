"""Batched LoRA: one gathered matmul pair per layer for a batch that mixes adapters.

peft's ``adapter_names`` mixed batch loops over the distinct adapters in every LoRA layer (gather
the rows, two matmuls, scatter back). With four adapters in a batch of eight that costs more than
the base model's own matmuls on a CPU. This module applies the idea of punica's BGMV kernel
(S-LoRA, vLLM) in plain torch instead: each LoRA layer keeps every loaded adapter's ``A`` and
``B`` stacked into one tensor (slot 0 is all zeros, for rows on the base model), and a forward
hook adds ``bmm(bmm(x, A[slot]), B[slot])`` for the whole batch at once, whatever the mix.

peft stays the loader and keeper of adapter weights (key mapping, ranks, rsLoRA scaling); its own
adapter computation is disabled so it never runs twice. Measured in ``benchmarks/``.
"""

from __future__ import annotations

from typing import Any

import torch

from server.errors import EngineError


class BatchedLora:
    def __init__(self, peft_model: Any) -> None:
        self._model = peft_model
        self._layers: list[Any] = []
        self._hooks: list[Any] = []
        self._slots: torch.Tensor | None = None
        self.slot_of: dict[str, int] = {}

    def rebuild(self, adapter_names: list[str]) -> None:
        """Re-stack every layer's weights for ``adapter_names`` (after a load or an unload)."""
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear as LoraLinear

        for module in self._model.modules():
            if not isinstance(module, LoraLayer) or any(module is layer for layer in self._layers):
                continue
            if not isinstance(module, LoraLinear):
                if not any(name in module.r for name in adapter_names):
                    continue  # an emptied wrapper left behind by an unloaded adapter
                raise EngineError(f"{type(module).__name__} LoRA layers are not supported; target linear layers only.")
            if module.fan_in_fan_out:
                raise EngineError("fan_in_fan_out adapters are not supported.")
            self._layers.append(module)
            self._hooks.append(module.register_forward_hook(self._add_delta))
        self.slot_of = {name: slot for slot, name in enumerate(adapter_names, start=1)}
        for layer in self._layers:
            names = [n for n in adapter_names if n in layer.lora_A]
            weight = layer.get_base_layer().weight
            rank = max((layer.r[n] for n in names), default=1)
            a = weight.new_zeros((len(adapter_names) + 1, weight.shape[1], rank))
            b = weight.new_zeros((len(adapter_names) + 1, rank, weight.shape[0]))
            for name in names:
                slot, r = self.slot_of[name], layer.r[name]
                a[slot, :, :r] = layer.lora_A[name].weight.t()
                b[slot, :r, :] = layer.lora_B[name].weight.t() * layer.scaling[name]
            layer.batched_lora_a, layer.batched_lora_b = a, b
        # peft's own LoRA computation would add the delta a second time.
        self._model.base_model.disable_adapter_layers()

    def set_rows(self, slots: list[int], device: torch.device) -> None:
        """Slots of the rows in the next forward (0: base model). All-base batches skip the hooks."""
        self._slots = torch.tensor(slots, device=device) if any(slots) else None

    def _add_delta(self, layer: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if self._slots is None:
            return output
        x = inputs[0]
        hidden = torch.bmm(x.to(layer.batched_lora_a.dtype), layer.batched_lora_a[self._slots])
        return output + torch.bmm(hidden, layer.batched_lora_b[self._slots]).to(output.dtype)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for layer in self._layers:
            layer.batched_lora_a = layer.batched_lora_b = None
        self._layers, self._hooks = [], []

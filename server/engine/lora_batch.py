"""Batched LoRA: one gathered matmul pair per layer for a batch that mixes adapters.

peft's ``adapter_names`` mixed batch loops over the distinct adapters in every LoRA layer (gather
the rows, two matmuls, scatter back). With four adapters in a batch of eight that costs more than
the base model's own matmuls on a CPU. This module applies the idea of punica's BGMV kernel
(S-LoRA, vLLM) in plain torch instead: each LoRA layer keeps every loaded adapter's ``A`` and
``B`` in one stacked tensor of *slots* (slot 0 stays all zeros, for rows on the base model), and
the layer's forward (ours in place of peft's) adds ``bmm(bmm(x, A[slot]), B[slot])`` to its base
layer's output for the whole batch at once, whatever the mix.

Loading or unloading an adapter writes or clears its slot only (capacity doubles when full), so the
cost of a swap does not grow with the number of adapters held.

peft stays the loader and keeper of adapter weights (key mapping, ranks, rsLoRA scaling); its own
adapter computation is disabled and its forward replaced, so it never runs twice. Measured in ``benchmarks/``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..errors import EngineError

_INITIAL_SLOTS = 4


class BatchedLora:
    def __init__(self, peft_model: Any) -> None:
        self._model = peft_model
        self._layers: list[Any] = []
        self._slots: torch.Tensor | None = None
        self._rows: tuple[int, ...] = ()  # the slots of ``_slots``, as a tuple
        # Bumped whenever a slot's weights change: a layer's gathered weights of some rows
        # (``gathered``) are reused while the rows and this stay the same.
        self._generation = 0
        self._capacity = _INITIAL_SLOTS  # slots per layer, slot 0 included
        self.slot_of: dict[str, int] = {}

    def add(self, name: str) -> None:
        """Stack adapter ``name`` (already loaded into the peft model) into a free slot."""
        self._adopt_new_layers(name)
        free = next((s for s in range(1, self._capacity) if s not in self.slot_of.values()), None)
        if free is None:
            free, self._capacity = self._capacity, self._capacity * 2
        for layer in self._layers:
            self._fit(layer, layer.r.get(name, 0))
            if name in layer.lora_A:
                r = layer.r[name]
                layer.batched_lora_a[free, :, :r] = layer.lora_A[name].weight.t()
                layer.batched_lora_b[free, :r, :] = layer.lora_B[name].weight.t() * layer.scaling[name]
        self.slot_of[name] = free
        self._generation += 1  # a slot's weights changed: no layer may reuse what it gathered
        # peft's own LoRA computation would add the delta a second time.
        self._model.base_model.disable_adapter_layers()

    def remove(self, name: str) -> None:
        slot = self.slot_of.pop(name, None)
        if slot is None:
            return
        for layer in self._layers:
            layer.batched_lora_a[slot].zero_()
            layer.batched_lora_b[slot].zero_()
        self._generation += 1

    def set_rows(self, slots: list[int], device: torch.device) -> None:
        """Slots of the rows in the next forward (0: base model). All-base batches add no delta.
        The same rows step after step (a decode) keep their gathered weights (``_add_delta``)."""
        if not any(slots):
            self._slots, self._rows = None, ()
        elif tuple(slots) != self._rows:
            self._slots, self._rows = torch.tensor(slots, device=device), tuple(slots)

    def close(self) -> None:
        for layer in self._layers:
            del layer.forward  # peft's own forward again
            layer.batched_lora_a = layer.batched_lora_b = layer.gathered = None
        self._layers, self.slot_of = [], {}

    def _adopt_new_layers(self, name: str) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear as LoraLinear

        for module in self._model.modules():
            if not isinstance(module, LoraLayer) or any(module is layer for layer in self._layers):
                continue
            if name not in module.r:
                continue
            if not isinstance(module, LoraLinear):
                raise EngineError(f"{type(module).__name__} LoRA layers are not supported; target linear layers only.")
            if module.fan_in_fan_out:
                raise EngineError("fan_in_fan_out adapters are not supported.")
            weight: torch.Tensor = module.get_base_layer().weight  # type: ignore[assignment]
            module.batched_lora_a = weight.new_zeros((0, weight.shape[1], 0))
            module.batched_lora_b = weight.new_zeros((0, 0, weight.shape[0]))
            self._layers.append(module)
            module.forward = functools.partial(self._forward, module)  # type: ignore[method-assign]

    def _fit(self, layer: Any, rank: int) -> None:
        """Grow a layer's stacks to the current slot capacity and at least ``rank``, keeping contents."""
        a, b = layer.batched_lora_a, layer.batched_lora_b
        slots, rank = self._capacity, max(rank, a.shape[2], 1)
        if a.shape[0] == slots and a.shape[2] == rank:
            return
        grown_a = a.new_zeros((slots, a.shape[1], rank))
        grown_b = b.new_zeros((slots, rank, b.shape[2]))
        grown_a[: a.shape[0], :, : a.shape[2]] = a
        grown_b[: b.shape[0], : b.shape[1], :] = b
        layer.batched_lora_a, layer.batched_lora_b = grown_a, grown_b

    def _forward(self, layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A LoRA layer's forward: its base layer, plus the delta of each row's adapter.

        Replaces peft's forward (whose own adapter computation is off) rather than hooking after
        it: a forward hook sends every call through ``nn.Module``'s slow path, and peft's forward
        checks its arguments and adapters on each call; Python paid in every LoRA layer of every
        step, whether the batch's rows are on adapters or not."""
        kwargs.pop("adapter_names", None)  # peft's own mixed batch: the rows here come from ``set_rows``
        output: torch.Tensor = layer.base_layer(x, *args, **kwargs)
        slots = self._slots
        if slots is None:
            return output
        return self._add_delta(layer, x, output, slots)

    def _add_delta(self, layer: Any, x: torch.Tensor, output: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        key = (self._generation, self._rows)
        kept: dict[Any, tuple[torch.Tensor, torch.Tensor]] = getattr(layer, "gathered", None) or {}
        pair = kept.get(key)
        if pair is None:  # rows not seen since the weights last changed: gather them
            pair = (layer.batched_lora_a[slots], layer.batched_lora_b[slots])
            # Kept on a CPU, for the two row sets that alternate there (the running batch and its
            # newcomers, ``LocalEngine._decode``): gathering every step cost a twentieth of a
            # mixed step (py-spy, benchmarks/local_throughput.py). On a GPU the copy is cheap and
            # the memory is not.
            if slots.device.type == "cpu":
                layer.gathered = {k: v for k, v in kept.items() if k[0] == self._generation and k != key}
                while len(layer.gathered) >= 2:
                    del layer.gathered[next(iter(layer.gathered))]
                layer.gathered[key] = pair
        a, b = pair
        if x.dtype == a.dtype == output.dtype:  # the usual case: one fused multiply-add for the delta
            return torch.baddbmm(output, torch.bmm(x, a), b)
        return output + torch.bmm(torch.bmm(x.to(a.dtype), a), b).to(output.dtype)

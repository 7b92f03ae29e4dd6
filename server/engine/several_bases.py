"""Several base models in one process: one embedded engine per base, behind one ``Engine``.

A team comparing Qwen2.5-7B with a 3B, or serving two product lines trained on different bases,
runs one gateway. Each base gets its own ``LocalEngine`` (its weights, its batch, its worker
thread); this engine routes each request and adapter to the engine of its base (``AdapterRef.base``,
``GenerationRequest.base``: what the registry decided from the adapter's training record) and adds
their health up. Before any weights are read, the bases' combined size is checked against a
memory budget (``--memory-budget-gb``; by default 90% of the GPU's memory, or 80% of this machine's
RAM), so a combination that cannot fit fails at start with one line instead of half-way through.

Batches are per base: rows of different bases never share a forward pass, so two bases each get
their own share of the device, as two processes would, without a second gateway in front of them.
Past one device, run one ``vllm serve`` per base and put ``--engine remote`` in front (pools by base).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from ..errors import EngineUnavailable
from .base import AdapterRef, Engine, EngineHealth, GenerationDelta, GenerationRequest

logger = logging.getLogger(__name__)
GIB = 1024**3


class SeveralBases(Engine):
    def __init__(self, engines: dict[str, Engine], *, budget_bytes: int | None = None) -> None:
        """``engines``: base id -> its engine, the default base first."""
        if not engines:
            raise ValueError("SeveralBases needs at least one engine")
        self.engines = engines
        self.default = next(iter(engines))
        self._budget = budget_bytes

    def _engine(self, base: str) -> Engine:
        return self.engines.get(base) or self.engines[self.default]

    @property
    def max_model_len(self) -> int | None:
        """The default base's (``/v1/models`` and the token budget read it)."""
        return self.engines[self.default].max_model_len

    @max_model_len.setter
    def max_model_len(self, value: int | None) -> None:  # set by nobody: each base's engine knows its own
        raise AttributeError("max_model_len of several bases is the default base's")

    async def start(self) -> None:
        if self._budget is not None:
            needed = await asyncio.to_thread(self._weights_needed)
            if needed > self._budget:
                raise EngineUnavailable(
                    f"the bases' weights need {needed / GIB:.1f} GiB, more than the memory budget of "
                    f"{self._budget / GIB:.1f} GiB (--memory-budget-gb); serve fewer bases here and the rest "
                    "from vLLM upstreams (--engine remote)"
                )
        for base, engine in self.engines.items():  # one after the other: peak memory is one load's
            logger.info("loading base model %s", base)
            await engine.start()

    def _weights_needed(self) -> int:
        total = 0
        for engine in self.engines.values():
            model = getattr(engine, "model_path", None)
            dtype = getattr(engine, "weights_dtype", None)
            if model is not None and dtype is not None:
                total += weights_bytes(model, dtype())
        return total

    async def stop(self) -> None:
        await asyncio.gather(*(engine.stop() for engine in self.engines.values()))

    async def add_adapter(self, adapter: AdapterRef) -> None:
        await self._engine(adapter.base).add_adapter(adapter)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self._engine(adapter.base).remove_adapter(adapter)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        base = request.adapter.base if request.adapter is not None else request.base
        return self._engine(base).generate(request)

    def health(self) -> EngineHealth:
        parts = {base: engine.health() for base, engine in self.engines.items()}
        return EngineHealth(
            ready=all(h.ready for h in parts.values()),
            detail="; ".join(f"{base}: {h.detail}" for base, h in parts.items()),
            running_requests=sum(h.running_requests for h in parts.values()),
            waiting_requests=sum(h.waiting_requests for h in parts.values()),
            loaded_adapters=[a for h in parts.values() for a in h.loaded_adapters],
            unavailable="; ".join(h.unavailable for h in parts.values() if h.unavailable),
            prefix_cache=_sum_caches([h.prefix_cache for h in parts.values()]),
        )

    def unavailable(self, base: str = "") -> str | None:
        return self._engine(base or self.default).unavailable(base)

    def peak_memory_bytes(self) -> int | None:
        """Process-wide already (CUDA's peak allocation, or peak RSS): the largest engine's answer."""
        peaks = [p for p in (e.peak_memory_bytes() for e in self.engines.values()) if p is not None]
        return max(peaks, default=None)


def _sum_caches(caches: list[tuple[int, int, int] | None]) -> tuple[int, int, int] | None:
    known = [c for c in caches if c is not None]
    return tuple(map(sum, zip(*known, strict=True))) if known else None  # type: ignore[return-value]


def weights_bytes(model: str, dtype: object) -> int:
    """What a model's weights take in ``dtype``: its parameters counted on PyTorch's meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    size = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4
    return sum(p.numel() for p in skeleton.parameters()) * size


def default_budget(device: str) -> int:
    """90% of the GPU's memory, or 80% of this machine's RAM."""
    import torch

    from ..devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return int(torch.cuda.get_device_properties(resolved).total_memory * 0.9)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)

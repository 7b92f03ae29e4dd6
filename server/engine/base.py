"""The one interface between the gateway and an inference engine.

The gateway knows engines only through ``Engine``: start/stop, add/remove an adapter, generate a
stream of deltas for one request, and health. Engines receive chat messages rather than token ids
because each one owns its tokenizer and chat template (the vLLM upstream renders its own), and they
raise ``server.errors`` exceptions only.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request sampling, already validated and defaulted by the API layer."""

    max_tokens: int | None = None  # the request's own limit (strict: refused if it cannot fit)
    default_max_tokens: int | None = None  # the server's cap when the request sets none (clamped to the room left)
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1


@dataclass(frozen=True)
class AdapterRef:
    """What an engine needs to serve one adapter *version*.

    ``adapter_id`` is unique per version (never reused), so a swap can load the new version beside
    the old one and unload the old one when it drains, as vLLM's ``lora_int_id`` requires.
    """

    name: str
    adapter_id: int
    path: str


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    messages: tuple[dict[str, str], ...]
    sampling: SamplingOptions
    adapter: AdapterRef | None = None  # None: the base model


@dataclass(frozen=True)
class GenerationDelta:
    """New text for one choice. The final delta of a choice carries ``finish_reason``."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative for this choice


@dataclass
class EngineHealth:
    ready: bool
    detail: str = ""
    running_requests: int = 0
    waiting_requests: int = 0
    loaded_adapters: list[str] = field(default_factory=list)
    unavailable: str = ""  # when not ready although started: why, in words a client can act on


class Engine(abc.ABC):
    """Implemented by ``local`` (transformers + peft), ``vllm`` and ``remote`` engines."""

    #: The context window the engine enforces (prompt + completion), when it knows it.
    max_model_len: int | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the base model. Slow; the server answers /health while it runs."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop generating and release the model."""

    @abc.abstractmethod
    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load an adapter version so that requests naming it start without delay."""

    @abc.abstractmethod
    async def remove_adapter(self, adapter: AdapterRef) -> None:
        """Unload an adapter version; the registry calls this only once it has drained."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Stream deltas for one request. Closing the iterator aborts the request."""

    @abc.abstractmethod
    def health(self) -> EngineHealth:
        """Cheap, non-blocking snapshot for /ready and metrics."""

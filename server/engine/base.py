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
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls"]

# The LoRA ranks vLLM can serve (its --max-lora-rank accepts these only): the vLLM engine checks its
# setting against them and the trainer rounds a rank to the nearest, so an adapter trained here serves there.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def finish_reason(reason: str | None, *, tool_called: bool = False) -> FinishReason | None:
    """The one rule for why a choice ended, whichever engine ran it: None while it runs; ``length``
    when ``max_tokens`` cut it; ``tool_calls`` when it stopped after calling a tool; every other end
    (a stop string, end of sequence, an upstream's ``abort`` or a reason we do not know) is ``stop``,
    since OpenAI's clients accept only these three."""
    if reason is None:
        return None
    if reason == "length":
        return "length"
    return "tool_calls" if tool_called or reason == "tool_calls" else "stop"


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
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and the k most likely


@dataclass(frozen=True)
class ToolSpec:
    """The request's tools, as OpenAI sends them (``{"type": "function", "function": {...}}``).

    ``choice`` is ``"auto"``, ``"required"``, ``"none"`` or the name of the one function to call.
    With ``"none"`` the tools are still shown to the model (as vLLM does) but never called.
    """

    tools: tuple[dict[str, Any], ...]
    choice: str = "auto"
    named: bool = False  # ``choice`` names a function (rather than being a mode)
    parallel: bool = True

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none" or self.named

    def openai_choice(self) -> str | dict[str, Any]:
        return {"type": "function", "function": {"name": self.choice}} if self.named else self.choice


@dataclass(frozen=True)
class OutputFormat:
    """``response_format`` beyond text: any JSON object, or JSON valid against ``schema``."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None  # json_schema only
    strict: bool = False
    name: str = "response"  # json_schema's name, passed on to upstreams

    def as_openai(self) -> dict[str, Any]:
        if self.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": self.strict}}


@dataclass(frozen=True)
class AdapterRef:
    """What an engine needs to serve one adapter *version*.

    ``adapter_id`` is unique per version (never reused), so a swap can load the new version beside
    the old one and unload the old one when it drains, as vLLM's ``lora_int_id`` requires.
    """

    name: str
    adapter_id: int
    path: str
    base: str = ""  # the base model it applies to: an engine serving several routes by it ("": its only one)


@dataclass(frozen=True)
class GenerationRequest:
    """``messages`` are OpenAI chat messages (role, content as text, and for tool use the
    assistant's ``tool_calls`` with JSON-string arguments and the tool's ``tool_call_id``)."""

    request_id: str
    messages: tuple[dict[str, Any], ...]
    sampling: SamplingOptions
    adapter: AdapterRef | None = None  # None: the base model
    base: str = ""  # the base model that answers (an engine serving several routes by it; "": its only one)
    tools: ToolSpec | None = None
    output_format: OutputFormat | None = None
    chat_template: str | None = None  # the adapter's own template (its profile), else the tokenizer's
    flow: str = ""  # whose request, on which model: the embedded engine admits flows fairly
    # The caller takes the answer whole (a non-streaming request): an engine that ``answers_whole``
    # may then produce it in one piece at its end rather than token by token.
    whole: bool = False


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability and the most likely alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call, as OpenAI streams them: the first piece of a call carries its
    ``id`` and function ``name``, later pieces fragments of its JSON ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class GenerationDelta:
    """New output for one choice: text, tool-call pieces, and the logprobs of the tokens behind
    them. The final delta of a choice carries ``finish_reason``."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative for this choice
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None  # None: not asked for
    queued_seconds: float | None = None  # on a request's first delta: time it waited for the batch


@dataclass
class EngineHealth:
    ready: bool
    detail: str = ""
    running_requests: int = 0
    waiting_requests: int = 0
    loaded_adapters: list[str] = field(default_factory=list)
    unavailable: str = ""  # when not ready although started: why, in words a client can act on
    # The embedded engine's prefix cache (None elsewhere): hits, prompt tokens not computed again, bytes held
    prefix_cache: tuple[int, int, int] | None = None


LOADING = "The model is still loading; try again shortly."


class Engine(abc.ABC):
    """Implemented by ``local`` (transformers + peft), ``vllm`` and ``remote`` engines."""

    #: The context window the engine enforces (prompt + completion), when it knows it.
    max_model_len: int | None = None
    #: ``generate`` answers a ``whole`` request in one piece, at its end (so its first token cannot
    #: be timed): the remote engine asks its upstream for a plain JSON answer instead of a stream.
    answers_whole: bool = False

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

    def unavailable(self, base: str = "") -> str | None:
        """None while the engine takes requests (for ``base``, where it serves several); else why,
        in words a client can act on. Asked on every request, so engines override it to answer
        without a whole ``health()`` snapshot (which lists every loaded adapter)."""
        health = self.health()
        return None if health.ready else (health.unavailable or LOADING)

    @property
    def adapter_slots(self) -> int | None:
        """Adapters this engine batches at once when it admits requests first come, first served
        (vLLM's ``--max-loras``): the gateway then queues requests fairly in front of it
        (``server.admission``). None for an engine that admits fairly itself (the embedded one, in
        its batch) or schedules elsewhere (remote upstreams)."""
        return None

    def peak_memory_bytes(self) -> int | None:
        """The engine's peak memory, read when metrics are scraped (never per request); None where
        this process cannot see it (vLLM's engine core and remote upstreams run elsewhere)."""
        return None

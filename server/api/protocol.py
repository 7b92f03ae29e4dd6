"""OpenAI chat-completions and models schema, field by field, as pydantic models.

Only pydantic here: no FastAPI, no torch, no engine imports. Fields follow the order of OpenAI's
published ``CreateChatCompletionRequest``. Parameters OpenAI defines but we do not implement are
declared too, so that setting one to a non-default value is refused with a 400 naming it rather than
silently ignored; names OpenAI does not define at all are refused by ``extra="forbid"``.
Conversion to engine parameters lives in ``server.completions`` (a pure function), not here.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from .. import __version__
from ..errors import InvalidRequest, UnsupportedParameter

# Identifies the serving stack, as OpenAI's fingerprint identifies its backend configuration.
SYSTEM_FINGERPRINT = f"lora-gateway-{__version__}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Request
# ---------------------------------------------------------------------------------------------


class TextContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message. Content is a string or a list of text parts (images and audio: not supported)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    # Assistant-only fields OpenAI accepts in history; we refuse them below rather than drop them.
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


NonNegativeInt = Annotated[int, Field(ge=0)]


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions`` body. Ranges are OpenAI's."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1)
    # One tier here: "auto" and "default" are honoured as what this server does; others are refused.
    service_tier: str | None = None
    # Completions are never stored: store=true is refused, and so is metadata (which OpenAI keeps
    # only with stored completions).
    store: bool | None = None
    metadata: dict[str, str] | None = None
    # Accepted and without effect on generation (identifiers for OpenAI's abuse and cache systems).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # Generation controls we implement.
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=128)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI's
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # Defined by OpenAI, not implemented by lora-gateway: refused when set to a non-default value.
    modalities: list[str] | None = None
    verbosity: str | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None
    top_logprobs: NonNegativeInt | None = None
    response_format: ResponseFormat | None = None
    audio: dict[str, Any] | None = None
    moderation: Any = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    prediction: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    function_call: Any = None
    functions: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _check_semantics(self) -> ChatCompletionRequest:
        _refuse_unsupported(self)
        if isinstance(self.stop, list):
            if len(self.stop) > 4:
                raise InvalidRequest("`stop` accepts at most 4 sequences.", param="stop")
            if any(s == "" for s in self.stop):
                raise InvalidRequest("`stop` sequences must not be empty.", param="stop")
        elif self.stop == "":
            raise InvalidRequest("`stop` must not be an empty string.", param="stop")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        for i, message in enumerate(self.messages):
            if not _is_unicode_text(message.text()) or not _is_unicode_text(message.name or ""):
                raise InvalidRequest(
                    f"messages[{i}] is not valid Unicode text (it holds a lone surrogate).",
                    param=f"messages.[{i}].content",
                )
            if message.role != "assistant" and message.content is None:
                raise InvalidRequest(
                    f"messages[{i}].content is required for role '{message.role}'.",
                    param=f"messages.[{i}].content",
                )
            if message.role == "assistant" and message.content is None and not message.refusal:
                raise InvalidRequest(f"messages[{i}] (assistant) needs `content`.", param=f"messages.[{i}].content")
            for field in ("tool_calls", "function_call"):
                if getattr(message, field):
                    raise UnsupportedParameter(
                        f"messages[{i}].{field} is not supported by lora-gateway.",
                        param=f"messages.[{i}].{field}",
                    )
        if not all(_is_unicode_text(s) for s in self.stop_sequences):
            raise InvalidRequest("`stop` is not valid Unicode text (it holds a lone surrogate).", param="stop")
        return self

    @property
    def completion_limit(self) -> int | None:
        """``max_completion_tokens`` supersedes the deprecated ``max_tokens``, as in OpenAI's API."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def _is_unicode_text(text: str) -> bool:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer (nor UTF-8) can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Name the first OpenAI parameter that is set to something we would otherwise ignore."""
    unsupported = {
        "tools": bool(request.tools),
        "tool_choice": request.tool_choice not in (None, "none"),
        "functions": bool(request.functions),
        "function_call": request.function_call not in (None, "none"),
        "parallel_tool_calls": request.parallel_tool_calls is not None,  # only meaningful with tools
        "store": request.store is True,
        "metadata": bool(request.metadata),
        "service_tier": request.service_tier not in (None, "auto", "default"),
        "logprobs": bool(request.logprobs),
        "top_logprobs": bool(request.top_logprobs),
        "logit_bias": bool(request.logit_bias),
        "response_format": request.response_format is not None and request.response_format.type != "text",
        "audio": request.audio is not None,
        "modalities": request.modalities not in (None, ["text"]),
        "prediction": request.prediction is not None,
        "web_search_options": request.web_search_options is not None,
        "reasoning_effort": request.reasoning_effort is not None,
        "verbosity": request.verbosity is not None,
        "moderation": request.moderation is not None,
    }
    reasons = {
        "parallel_tool_calls": "`parallel_tool_calls` is only allowed when `tools` are specified "
        "(and tools are not supported yet).",
        "store": "`store: true` is not supported: lora-gateway does not store completions.",
        "metadata": "`metadata` is only kept with stored completions, which lora-gateway does not store.",
        "service_tier": f"`service_tier` {request.service_tier!r} is not offered: "
        "this server has one tier ('auto' or 'default').",
    }
    for name, is_set in unsupported.items():
        if is_set:
            raise UnsupportedParameter(reasons.get(name, f"`{name}` is not supported by lora-gateway."), param=name)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None  # required by the schema, always null here


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None  # required-nullable in the schema
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str = SYSTEM_FINGERPRINT


class DeltaMessage(BaseModel):
    """Only the keys that change are sent: ``{"role", "content": ""}`` first, then ``{"content"}``,
    and ``{}`` with the finish_reason, as OpenAI streams them."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    system_fingerprint: str = SYSTEM_FINGERPRINT
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lora-gateway"
    # vLLM's additions: adapters carry the base id in ``parent`` and their path in ``root``.
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

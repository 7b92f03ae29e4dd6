"""OpenAI chat-completions and models schema, field by field, as pydantic models.

Only pydantic here: no FastAPI, no torch, no engine imports. Fields follow the order of OpenAI's
published ``CreateChatCompletionRequest``. Parameters OpenAI defines but we do not implement are
declared too, so that setting one to a non-default value is refused with a 400 naming it rather than
silently ignored; names OpenAI does not define at all are refused by ``extra="forbid"``.
Conversion to engine parameters lives in ``server.completions`` (a pure function), not here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from .. import __version__
from ..engine.base import FinishReason  # one vocabulary, and one rule for it (engine.base.finish_reason)
from ..errors import InvalidRequest, UnsupportedParameter
from ..jsonbounds import is_unicode_text
from .schema_limits import check_schemas

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


Identifier = Annotated[str, Field(max_length=256)]  # ids and user names: stored and logged, so bounded
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(_Strict):
    """An assistant's call of a function tool, in a history message or in a response."""

    id: Identifier
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """One message. Content is a string or a list of text parts (images and audio: not supported)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: Identifier | None = None
    refusal: str | None = None  # assistant history only
    tool_calls: list[ToolCall] | None = None  # assistant history only
    tool_call_id: Identifier | None = None  # tool messages: the call this message answers
    function_call: dict[str, Any] | None = None  # deprecated by OpenAI: refused below

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; absent: a function without parameters
    strict: bool | None = None


class ChatCompletionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]
MAX_TOOLS = 128  # OpenAI's limit


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions`` body. Ranges are OpenAI's."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1, max_length=256)
    # One tier here: "auto" and "default" are honoured as what this server does; others are refused.
    service_tier: str | None = None
    # Completions are never stored: store=true is refused, and so is metadata (which OpenAI keeps
    # only with stored completions).
    store: bool | None = None
    metadata: dict[str, str] | None = None
    # Accepted and without effect on generation (identifiers for OpenAI's abuse and cache systems).
    user: Identifier | None = None
    safety_identifier: Identifier | None = None
    prompt_cache_key: Identifier | None = None
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
    # Tools, structured outputs and logprobs.
    tools: list[ChatCompletionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Defined by OpenAI, not implemented by lora-gateway: refused when set to a non-default value.
    modalities: list[str] | None = None
    verbosity: str | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    moderation: Any = None
    logit_bias: dict[str, float] | None = None
    prediction: dict[str, Any] | None = None
    function_call: Any = None  # deprecated by OpenAI in favour of tools
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
            _check_message(i, message)
        _check_tools(self)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("`top_logprobs` requires `logprobs` to be true.", param="top_logprobs")
        if not all(is_unicode_text(s) for s in self.stop_sequences):
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


def _check_message(i: int, message: ChatMessage) -> None:
    param = f"messages.[{i}]"
    if not is_unicode_text(message.text()) or not is_unicode_text(message.name or ""):
        raise InvalidRequest(
            f"messages[{i}] is not valid Unicode text (it holds a lone surrogate).", param=f"{param}.content"
        )
    if message.function_call:
        raise UnsupportedParameter(
            f"messages[{i}].function_call is deprecated by OpenAI and not supported; use `tool_calls`.",
            param=f"{param}.function_call",
        )
    if message.role == "assistant":
        if message.content is None and not message.refusal and not message.tool_calls:
            raise InvalidRequest(
                f"messages[{i}] (assistant) needs `content` or `tool_calls`.", param=f"{param}.content"
            )
        for j, call in enumerate(message.tool_calls or ()):
            try:
                json.loads(call.function.arguments)
            except ValueError:
                raise InvalidRequest(
                    f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON.",
                    param=f"{param}.tool_calls.[{j}].function.arguments",
                ) from None
    else:
        if message.content is None:
            raise InvalidRequest(
                f"messages[{i}].content is required for role '{message.role}'.", param=f"{param}.content"
            )
        if message.tool_calls is not None or message.refusal is not None:
            field = "tool_calls" if message.tool_calls is not None else "refusal"
            raise InvalidRequest(
                f"messages[{i}].{field} is only allowed on assistant messages.", param=f"{param}.{field}"
            )
    if message.role == "tool" and not message.tool_call_id:
        raise InvalidRequest(
            f"messages[{i}] (tool) needs `tool_call_id`: the id of the call it answers.", param=f"{param}.tool_call_id"
        )
    if message.role != "tool" and message.tool_call_id is not None:
        raise InvalidRequest(
            f"messages[{i}].tool_call_id is only allowed on tool messages.", param=f"{param}.tool_call_id"
        )


_TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "response_format"})


def _check_tools(request: ChatCompletionRequest) -> None:
    """OpenAI's rules for ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format``."""
    if _TOOL_FIELDS.isdisjoint(request.model_fields_set):
        return
    names = [tool.function.name for tool in request.tools or ()]
    if len(set(names)) != len(names):
        raise InvalidRequest("`tools` holds two functions with the same name.", param="tools")
    schemas: list[tuple[str, Any]] = []
    for k, tool in enumerate(request.tools or ()):
        parameters = tool.function.parameters
        if parameters is not None and parameters.get("type", "object") != "object":
            raise InvalidRequest(
                f"tools[{k}].function.parameters must be a JSON schema of type 'object'.",
                param=f"tools.[{k}].function.parameters",
            )
        if parameters is not None:
            schemas.append((f"tools.[{k}].function.parameters", parameters))
    if not names:
        for field in ("tool_choice", "parallel_tool_calls"):
            if getattr(request, field) not in (None, "none"):  # "none" without tools changes nothing
                raise InvalidRequest(f"`{field}` is only allowed when `tools` are specified.", param=field)
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequest(
            f"tool_choice names the function {choice.function.name!r}, which is not in `tools`.",
            param="tool_choice.function.name",
        )
    response_format = request.response_format
    if isinstance(response_format, ResponseFormatJsonSchema) and response_format.json_schema.schema_ is None:
        raise InvalidRequest(
            "response_format.json_schema.schema is required: the JSON schema the output must follow.",
            param="response_format.json_schema.schema",
        )
    if isinstance(response_format, ResponseFormatJsonSchema):
        schemas.append(("response_format.json_schema.schema", response_format.json_schema.schema_))
    check_schemas(schemas)
    constrained_output = response_format is not None and response_format.type != "text"
    if constrained_output and names and choice in (None, "auto"):
        raise UnsupportedParameter(
            '`response_format` with `tools` the model may call needs `tool_choice` "none" (the answer is the '
            'JSON document), "required" or one function (the answer is a call, which the format does not '
            "constrain): here the answer is either a tool call or a JSON document, not a choice between both.",
            param="response_format",
        )


# The OpenAI parameters we would otherwise ignore, each with when it counts as set. A request that
# names none of them (nearly all) is not looked at further.
_UNSUPPORTED: dict[str, Callable[[ChatCompletionRequest], bool]] = {
    "functions": lambda r: bool(r.functions),
    "function_call": lambda r: r.function_call not in (None, "none"),
    "store": lambda r: r.store is True,
    "metadata": lambda r: bool(r.metadata),
    "service_tier": lambda r: r.service_tier not in (None, "auto", "default"),
    "logit_bias": lambda r: bool(r.logit_bias),
    "audio": lambda r: r.audio is not None,
    "modalities": lambda r: r.modalities not in (None, ["text"]),
    "prediction": lambda r: r.prediction is not None,
    "web_search_options": lambda r: r.web_search_options is not None,
    "reasoning_effort": lambda r: r.reasoning_effort is not None,
    "verbosity": lambda r: r.verbosity is not None,
    "moderation": lambda r: r.moderation is not None,
}


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Name the first OpenAI parameter that is set to something we would otherwise ignore."""
    if _UNSUPPORTED.keys().isdisjoint(request.model_fields_set):
        return
    reasons = {
        "functions": "`functions` is deprecated by OpenAI and not supported; use `tools`.",
        "function_call": "`function_call` is deprecated by OpenAI and not supported; use `tool_choice`.",
        "store": "`store: true` is not supported: lora-gateway does not store completions.",
        "metadata": "`metadata` is only kept with stored completions, which lora-gateway does not store.",
        "service_tier": f"`service_tier` {request.service_tier!r} is not offered: "
        "this server has one tier ('auto' or 'default').",
    }
    for name, is_set in _UNSUPPORTED.items():
        if is_set(request):
            raise UnsupportedParameter(reasons.get(name, f"`{name}` is not supported by lora-gateway."), param=name)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def random_id() -> str:
    """32 random hex digits, an answer's or request's own: as unguessable as a UUID4's, at a
    third of its cost (no ``UUID`` object on every request)."""
    return os.urandom(16).hex()


def completion_id() -> str:
    return f"chatcmpl-{random_id()}"


def now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """Logprobs of the generated tokens; ``refusal`` is always null (no refusals here)."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


def _is_none(value: object) -> bool:
    return value is None


def _omitted_when_none() -> Any:
    """A field left out of the JSON while None (OpenAI sends only what a delta changes). Checked by
    pydantic's serializer per field; a model-level wrap serializer cost every chunk a dict round
    trip in Python, about half of its encoding."""
    return Field(default=None, exclude_if=_is_none)


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None  # required by the schema, always null here
    tool_calls: list[ToolCall] | None = _omitted_when_none()  # absent, not null, when the model called none


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None  # required-nullable in the schema
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str = SYSTEM_FINGERPRINT


class DeltaFunctionCall(BaseModel):
    name: str | None = _omitted_when_none()
    arguments: str | None = _omitted_when_none()


class DeltaToolCall(BaseModel):
    """A piece of a streamed tool call: the first carries ``id``, ``type`` and the function name,
    the next ones fragments of the arguments, all under the call's ``index``."""

    index: int
    id: str | None = _omitted_when_none()
    type: Literal["function"] | None = _omitted_when_none()
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    """Only the keys that change are sent: ``{"role", "content": ""}`` first, then ``{"content"}``
    or ``{"tool_calls"}``, and ``{}`` with the finish_reason, as OpenAI streams them."""

    role: Literal["assistant"] | None = _omitted_when_none()
    content: str | None = _omitted_when_none()
    tool_calls: list[DeltaToolCall] | None = _omitted_when_none()


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
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
    # Ours, for adapters: the version that answers the name, and its weights (what `train` and
    # `adapters publish` watch for, without generating anything).
    version: int | None = None
    sha256: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

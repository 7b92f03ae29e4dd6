"""An OpenAI chat request as an engine request, and engine deltas as OpenAI's answer shapes.

Pure functions and small accumulators, no I/O: ``to_generation_request`` (the adapter's profile
first, then OpenAI's defaults), ``most_tokens`` (what a request may use, reserved against its
key's limits), ``Choice`` (a whole answer's choice, assembled from its deltas), ``chunk_choices``
(a delta as streamed chunk choices) and ``stream_pieces`` (the same where they are text and
finish chunks, rendered without models). ``server.completions`` runs them.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from ..engine import base as engine
from ..engine.base import AdapterRef, GenerationDelta, GenerationRequest, OutputFormat, SamplingOptions, ToolSpec
from ..errors import InvalidRequest
from .chunk_templates import FinishPiece, StreamPiece, TextPiece
from .protocol import (
    ChatCompletionChoice,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    NamedToolChoice,
    ResponseFormatJsonSchema,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    random_id,
)


class RequestDefaults(Protocol):
    """What an adapter's profile (``server.registry.profile``) sets for the requests it answers."""

    max_tokens: int | None
    chat_template: str | None

    def apply_to(self, body: ChatCompletionRequest) -> ChatCompletionRequest: ...


class Target(Protocol):
    """Where a request goes (the registry's ``Lease``): the engine's adapter, and its defaults."""

    @property
    def ref(self) -> AdapterRef | None: ...

    @property
    def profile(self) -> RequestDefaults | None: ...

    @property
    def base(self) -> str: ...


def to_generation_request(
    body: ChatCompletionRequest,
    lease: Target,
    max_n: int,
    default_max_tokens: int | None = None,
    *,
    flow: str = "",
    whole: bool = False,
) -> GenerationRequest:
    """OpenAI request -> engine request: the adapter's profile fills what the request left unset
    (``server.registry.profile``), then OpenAI's defaults (temperature 1, top_p 1, n 1).
    ``flow`` and ``whole`` are passed on as ``GenerationRequest`` holds them."""
    profile = lease.profile
    if profile is not None:
        body = profile.apply_to(body)
        default_max_tokens = profile.max_tokens or default_max_tokens
    n = body.n or 1
    if n > max_n:
        raise InvalidRequest(f"`n` must be at most {max_n} on this server; got {n}.", param="n")
    sampling = SamplingOptions(
        max_tokens=body.completion_limit,
        default_max_tokens=default_max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        stop=tuple(body.stop_sequences),
        n=n,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )
    return GenerationRequest(
        request_id=f"req-{random_id()}",
        messages=tuple(_engine_message(m) for m in body.messages),
        sampling=sampling,
        adapter=lease.ref,
        base=lease.base,
        tools=_tool_spec(body),
        output_format=_output_format(body),
        chat_template=profile.chat_template if profile is not None else None,
        flow=flow,
        whole=whole,
    )


_TEMPLATE_TOKENS = 64  # a chat template's own text (Qwen2.5's default system prompt is about 20 tokens)
_MESSAGE_TOKENS = 8  # each message's role markers


def most_tokens(body: ChatCompletionRequest, default_cap: int) -> int:
    """The most tokens ``body`` may use, reserved against its key's token windows at admission:
    a byte-level tokenizer (Qwen's, GPT's) never makes more tokens than the text has bytes, so the
    prompt's bytes plus the template's markers bound its tokens; plus the completion cap for each
    choice. The real count is settled at the end; the unused rest is given back."""
    prompt = _TEMPLATE_TOKENS + sum(len(m.text().encode("utf-8")) + _MESSAGE_TOKENS for m in body.messages)
    for tool in body.tools or ():
        prompt += len(json.dumps(tool.function.model_dump(exclude_none=True), ensure_ascii=False).encode("utf-8"))
    return prompt + (body.completion_limit or default_cap) * (body.n or 1)


def _engine_message(message: ChatMessage) -> dict[str, Any]:
    """An OpenAI message with its content as plain text (parts joined), None kept for a call-only turn."""
    out: dict[str, Any] = {"role": message.role, "content": None if message.content is None else message.text()}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_spec(body: ChatCompletionRequest) -> ToolSpec | None:
    if not body.tools:
        return None
    tools = tuple(tool.model_dump(exclude_none=True) for tool in body.tools)
    parallel = body.parallel_tool_calls is not False
    if isinstance(body.tool_choice, NamedToolChoice):
        return ToolSpec(tools, choice=body.tool_choice.function.name, named=True, parallel=parallel)
    return ToolSpec(tools, choice=body.tool_choice or "auto", parallel=parallel)


def _output_format(body: ChatCompletionRequest) -> OutputFormat | None:
    """The format the answer's text must follow. None where there is no text to constrain: a
    request that forces a tool call (``required`` or one function) answers with the call, as on
    OpenAI, where ``response_format`` shapes text and never a call's arguments."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if body.tools and (body.tool_choice == "required" or isinstance(body.tool_choice, NamedToolChoice)):
        return None
    if isinstance(fmt, ResponseFormatJsonSchema):
        schema = fmt.json_schema
        return OutputFormat("json_schema", schema.schema_, bool(schema.strict), schema.name)
    return OutputFormat("json_object")


def _logprobs(entries: tuple[engine.TokenLogprob, ...] | list[engine.TokenLogprob]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=e.token,
            logprob=e.logprob,
            bytes=list(e.bytes),
            top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in e.top],
        )
        for e in entries
    ]


class Choice:
    """One choice of a whole (non-streaming) answer, assembled from its deltas."""

    def __init__(self, want_logprobs: bool) -> None:
        self.text = ""
        self.finish: Any = None
        self.calls: dict[int, dict[str, str]] = {}
        self.logprobs: list[engine.TokenLogprob] | None = [] if want_logprobs else None

    def add(self, delta: GenerationDelta) -> None:
        self.text += delta.text
        for piece in delta.tool_calls:
            call = self.calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] = piece.name or call["name"]
            call["arguments"] += piece.arguments
        if delta.logprobs and self.logprobs is not None:
            self.logprobs += delta.logprobs
        if delta.finish_reason:
            self.finish = delta.finish_reason

    def choice(self, index: int) -> ChatCompletionChoice:
        calls = [
            ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
            for _, c in sorted(self.calls.items())
        ]
        message = ChatCompletionMessage(content=self.text if self.text or not calls else None, tool_calls=calls or None)
        logprobs = ChoiceLogprobs(content=_logprobs(self.logprobs)) if self.logprobs is not None else None
        return ChatCompletionChoice(index=index, message=message, logprobs=logprobs, finish_reason=self.finish)


def stream_pieces(delta: GenerationDelta, want_logprobs: bool) -> list[StreamPiece] | None:
    """``delta`` as the pieces ``chunk_choices`` would make chunks of (its text, then its finish),
    for a ``ChunkTemplate`` to render; None where it makes another shape (tool calls, logprobs)."""
    if delta.tool_calls or (want_logprobs and delta.logprobs):
        return None
    pieces: list[StreamPiece] = []
    if delta.text:
        pieces.append(TextPiece(delta.index, delta.text))
    if delta.finish_reason:
        pieces.append(FinishPiece(delta.index, delta.finish_reason))
    return pieces


def chunk_choices(delta: GenerationDelta, want_logprobs: bool) -> list[ChatCompletionChunkChoice]:
    """A delta as chunk choices: its text, then its tool-call pieces, then its finish_reason; the
    logprobs of its tokens ride on the first of them. The text and finish choices are the
    ``StreamPiece``s' own, so a template renders exactly these."""
    out: list[ChatCompletionChunkChoice] = []
    if delta.text:
        out.append(TextPiece(delta.index, delta.text).choice())
    if delta.tool_calls:
        pieces = [
            DeltaToolCall(
                index=piece.index,
                id=piece.id,
                type="function" if piece.id else None,
                function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments),
            )
            for piece in delta.tool_calls
        ]
        out.append(ChatCompletionChunkChoice(index=delta.index, delta=DeltaMessage(tool_calls=pieces)))
    if delta.finish_reason:
        out.append(FinishPiece(delta.index, delta.finish_reason).choice())
    if want_logprobs and delta.logprobs and out:
        out[0].logprobs = ChoiceLogprobs(content=_logprobs(delta.logprobs))
    return out

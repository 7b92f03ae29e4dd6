"""OpenAI's Responses API (``POST /v1/responses``), field by field, translated to and from chat.

A Responses request is answered by the one completion path: it becomes a ``ChatCompletionRequest``
(``ResponsesRequest.to_chat``: ``instructions`` as the system message, ``input`` items as
messages, function calls and their outputs as assistant ``tool_calls`` and ``tool`` messages,
``text.format`` as ``response_format``, ``max_output_tokens`` as ``max_completion_tokens``), so
adapters by ``model``, ``NAME@N``, splits, profiles, keys, limits, fair admission, constrained
decoding, feedback capture and metrics behave exactly as on chat. The answer comes back as a
``Response`` (``response_from_chat``); a stream becomes the typed semantic events the SDK's
helpers assemble (``ResponseEvents``).

What this gateway does not offer is refused by name with a 400, never ignored: built-in tools
(web search, file search, computer use, ...), ``background``, ``reasoning``, ``prompt``
templates, input images and files, and ``conversation`` objects. A response is stored unless
``store`` is false (OpenAI's default; ``server.responses_store``), so ``previous_response_id``
continues it and ``GET``/``DELETE /v1/responses/{id}`` reach it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

from ..errors import InvalidRequest, UnsupportedParameter
from .protocol import ChatCompletionRequest, ChatCompletionResponse

_TEXT_LIMIT = 4 * 1024 * 1024  # the body limit bounds it anyway; each string also has its own cap


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str = Field(max_length=_TEXT_LIMIT)


class OutputText(_Strict):
    """An earlier answer's text, sent back as history."""

    type: Literal["output_text"]
    text: str = Field(max_length=_TEXT_LIMIT)
    annotations: list[Any] = Field(default_factory=list, max_length=0)
    logprobs: list[Any] | None = None


class InputMessage(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Annotated[InputText | OutputText, Field(discriminator="type")]] = Field(max_length=_TEXT_LIMIT)
    id: str | None = Field(default=None, max_length=256)
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCall(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(max_length=_TEXT_LIMIT)
    id: str | None = Field(default=None, max_length=256)
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutput(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str = Field(max_length=_TEXT_LIMIT)
    id: str | None = Field(default=None, max_length=256)
    status: Literal["in_progress", "completed", "incomplete"] | None = None


def _item_kind(value: Any) -> str:
    """An item's ``type``; a message may leave it out (OpenAI's "easy input message")."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) else "message"


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCall, Tag("function_call")]
    | Annotated[FunctionCallOutput, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=32_768)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJsonObject(_Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = Field(default=None, max_length=32_768)
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextConfig(_Strict):
    format: Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")] = (
        TextFormatText(type="text")
    )
    verbosity: Literal["low", "medium", "high"] | None = None


# Accepted and answered as OpenAI does when they hold their defaults; anything else is refused.
_UNSUPPORTED = {
    "background": "background mode is not offered: responses are answered while the request is open",
    "reasoning": "reasoning items and effort are not offered",
    "prompt": "stored prompt templates are not offered",
    "conversation": "stored conversations are not offered: send the whole conversation as `input`",
    "max_tool_calls": "`max_tool_calls` is not offered",
    "prompt_cache_key": None,  # a hint only: accepted and ignored, as a cache miss would be
    "prompt_cache_retention": None,
    "service_tier": None,
    "stream_options": None,
    "truncation": None,
}


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem] = Field(max_length=_TEXT_LIMIT)
    instructions: str | None = Field(default=None, max_length=_TEXT_LIMIT)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = Field(default=None, max_length=16)
    store: bool | None = None
    stream: bool | None = None
    seed: int | None = None  # not in OpenAI's schema for responses; vLLM accepts it, and so do we
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    previous_response_id: str | None = Field(default=None, max_length=256)
    max_tool_calls: int | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    prompt_cache_retention: str | None = Field(default=None, max_length=32)
    service_tier: str | None = Field(default=None, max_length=32)
    stream_options: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @model_validator(mode="after")
    def _offered(self) -> ResponsesRequest:
        for field, why in _UNSUPPORTED.items():
            value = getattr(self, field)
            if why is not None and value not in (None, False):
                raise UnsupportedParameter(f"`{field}`: {why}.", param=field)
        for name in self.include or ():
            if name != "message.output_text.logprobs":
                raise UnsupportedParameter(f"`include`: {name!r} is not offered.", param="include")
        return self

    @property
    def wants_logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or ()) or bool(self.top_logprobs)

    @property
    def stored(self) -> bool:
        """Whether the response is kept (``store``: OpenAI's default is true)."""
        return self.store is not False

    def input_items(self) -> list[InputMessage | FunctionCall | FunctionCallOutput]:
        return [InputMessage(role="user", content=self.input)] if isinstance(self.input, str) else list(self.input)

    def to_chat(self, previous: list[dict[str, Any]] | None = None) -> ChatCompletionRequest:
        """The chat request this is answered as: the same model, messages, tools and limits, after
        the conversation of ``previous_response_id`` (its items, stored) when there is one."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        earlier = _ITEMS.validate_python(previous) if previous else []
        for item in [*earlier, *self.input_items()]:
            if isinstance(item, InputMessage):
                role = "system" if item.role == "developer" else item.role
                messages.append({"role": role, "content": item.text()})
            elif isinstance(item, FunctionCall):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls") is not None:
                    messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        if not messages:
            raise InvalidRequest("`input` holds no message.", param="input")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_completion_tokens": self.max_output_tokens,
            "user": self.safety_identifier or self.user,
            "seed": self.seed,
            "stream": self.stream,
        }
        if self.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": tool.model_dump(exclude={"type"}, exclude_none=True),
                }
                for tool in self.tools
            ]
            if self.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.tool_choice is not None:
            choice = self.tool_choice
            body["tool_choice"] = (
                choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
            )
        form = self.text.format if self.text is not None else None
        if isinstance(form, TextFormatJsonObject):
            body["response_format"] = {"type": "json_object"}
        elif isinstance(form, TextFormatJsonSchema):
            schema = {"name": form.name, "schema": form.schema_, "strict": form.strict, "description": form.description}
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {k: v for k, v in schema.items() if v is not None},
            }
        if self.wants_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs or 0
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})

    def echo(self) -> dict[str, Any]:
        """The request's settings as a response object repeats them."""
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "store": self.stored,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "text": (self.text or TextConfig()).model_dump(by_alias=True, exclude_none=True),
            "tool_choice": (
                (self.tool_choice if isinstance(self.tool_choice, str) else self.tool_choice.model_dump())
                if self.tool_choice is not None
                else "auto"
            ),
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools or ()],
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_logprobs": self.top_logprobs,
            "truncation": "disabled",
            "user": self.user,
            "safety_identifier": self.safety_identifier,
            "background": False,
            "reasoning": None,
            "service_tier": "default",
        }


_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


def conversation(
    previous: list[dict[str, Any]] | None, request: ResponsesRequest, output: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The whole exchange a stored response keeps: what came before, this input, this output."""
    mine = [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in request.input_items()]
    return [*(previous or []), *mine, *output]


def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def _logprobs(chat_logprobs: Any) -> list[dict[str, Any]] | None:
    if chat_logprobs is None or not chat_logprobs.content:
        return None
    return [
        {
            "token": entry.token,
            "bytes": entry.bytes or [],
            "logprob": entry.logprob,
            "top_logprobs": [
                {"token": t.token, "bytes": t.bytes or [], "logprob": t.logprob} for t in entry.top_logprobs
            ],
        }
        for entry in chat_logprobs.content
    ]


def _message_item(rid: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{rid[5:]}", "role": "assistant", "status": status, "content": content}


def _call_item(rid: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{rid[5:]}_{index}",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(completion: ChatCompletionResponse, rid: str) -> list[dict[str, Any]]:
    """The first choice of a chat completion as Responses output items: its text as one
    ``message`` (when it said anything), then each tool call as a ``function_call``."""
    choice = completion.choices[0]
    items: list[dict[str, Any]] = []
    message = choice.message
    if message.content:
        part: dict[str, Any] = {"type": "output_text", "text": message.content, "annotations": []}
        logprobs = _logprobs(choice.logprobs)
        if logprobs is not None:
            part["logprobs"] = logprobs
        items.append(_message_item(rid, "completed", [part]))
    for number, call in enumerate(message.tool_calls or ()):
        items.append(_call_item(rid, number, call.id, call.function.name, call.function.arguments, "completed"))
    return items


def response_from_chat(
    request: ResponsesRequest, completion: ChatCompletionResponse, rid: str, created: int | None = None
) -> dict[str, Any]:
    """The ``Response`` object for a finished chat completion."""
    choice = completion.choices[0]
    cut = choice.finish_reason == "length"
    usage = completion.usage
    return {
        "id": rid,
        "object": "response",
        "created_at": created or completion.created,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "error": None,
        "model": completion.model,
        "output": output_items(completion, rid),
        "usage": _usage(usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0),
        **request.echo(),
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class ResponseEvents:
    """A chat stream's chunks as the Responses API's typed events, in the order the SDK's stream
    helpers assemble them: ``response.created``, ``response.in_progress``; for the text, its
    ``message`` item and ``output_text`` part added, each delta, then text, part and item done;
    for each tool call, its ``function_call`` item added, its arguments' deltas and done, the item
    done; finally ``response.completed`` (or ``response.incomplete``) with the whole response."""

    def __init__(self, request: ResponsesRequest, rid: str, model: str) -> None:
        self.request, self.rid, self.model = request, rid, model
        self.created = int(time.time())
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._text: dict[str, Any] | None = None  # the message item being written
        self._text_index = 0  # its place in the output
        self._usage: Any = None  # the chat stream's usage, from its last chunk
        self.final: dict[str, Any] = {}  # the whole response, once ``finish`` made it
        self._calls: dict[int, tuple[int, dict[str, Any]]] = {}  # tool call index -> (output index, item)
        self._finish: str | None = None
        self._echo = request.echo()  # the same settings in every response shell: made once

    def _event(self, kind: str, **fields: Any) -> str:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    def _shell(self, status: str) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "incomplete_details": None,
            "error": None,
            "model": self.model,
            "output": [],
            "usage": None,
            **self._echo,
        }

    def start(self) -> list[str]:
        return [
            self._event("response.created", response=self._shell("in_progress")),
            self._event("response.in_progress", response=self._shell("in_progress")),
        ]

    def chunk(self, chunk: Any) -> list[str]:
        """Events for one chat chunk (its first choice; usage is kept for the end)."""
        events: list[str] = []
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                events += self._text_delta(delta.content, _logprobs(choice.logprobs) or [])
            for call in delta.tool_calls or ():
                events += self._call_delta(call)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
        return events

    def _text_delta(self, text: str, logprobs: list[dict[str, Any]]) -> list[str]:
        events = []
        if self._text is None:
            self._text = _message_item(self.rid, "in_progress", [])
            index = self._text_index = len(self._output)
            self._output.append(self._text)
            events.append(self._event("response.output_item.added", output_index=index, item=dict(self._text)))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._text["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
            self._text["content"] = [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]
        part = self._text["content"][0]
        part["text"] += text
        part["logprobs"] += logprobs
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._text["id"],
                output_index=self._text_index,
                content_index=0,
                delta=text,
                logprobs=logprobs,
            )
        )
        return events

    def _call_delta(self, call: Any) -> list[str]:
        events = []
        if call.index not in self._calls:
            name = call.function.name if call.function and call.function.name else ""
            item = _call_item(self.rid, call.index, call.id or f"call_{uuid.uuid4().hex[:24]}", name, "", "in_progress")
            self._calls[call.index] = (len(self._output), item)
            self._output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=len(self._output) - 1, item=dict(item))
            )
        place, item = self._calls[call.index]
        piece = call.function.arguments if call.function and call.function.arguments else ""
        if piece:
            item["arguments"] += piece
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=place,
                    delta=piece,
                )
            )
        return events

    def finish(self) -> list[str]:
        """The done events of every item, then the whole response."""
        events: list[str] = []
        if self._text is not None:
            part = self._text["content"][0]
            where = {"item_id": self._text["id"], "output_index": self._text_index, "content_index": 0}
            events.append(
                self._event("response.output_text.done", text=part["text"], logprobs=part["logprobs"], **where)
            )
            events.append(self._event("response.content_part.done", part=dict(part), **where))
            self._text["status"] = "completed"
            events.append(
                self._event("response.output_item.done", output_index=self._text_index, item=dict(self._text))
            )
        for place, item in self._calls.values():
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=place,
                    arguments=item["arguments"],
                    name=item["name"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=place, item=dict(item)))
        cut = self._finish == "length"
        response = self._shell("incomplete" if cut else "completed")
        response["incomplete_details"] = {"reason": "max_output_tokens"} if cut else None
        response["output"] = list(self._output)
        usage = self._usage
        response["usage"] = _usage(usage.prompt_tokens, usage.completion_tokens) if usage else _usage(0, 0)
        self.final = response
        events.append(self._event("response.incomplete" if cut else "response.completed", response=response))
        return events

    def failed(self, code: str, message: str) -> list[str]:
        """A failure after the stream began: ``response.failed`` with the error, then nothing."""
        response = self._shell("failed")
        response["error"] = {"code": code, "message": message}
        return [self._event("response.failed", response=response)]

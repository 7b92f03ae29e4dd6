"""The OpenAI chat wire format as vLLM upstreams speak it: the body we send (``chat_body``), and
their answers as engine deltas, streamed as each event arrives (``deltas``) or plain, whole
(``whole_deltas``); their error bodies as our errors (``upstream_error``).

Tool-call pieces (ids included) and logprobs are passed on as the upstream sent them: vLLM's own
tool parser and logprobs are the answer, not something to redo here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pydantic_core

from ..errors import EngineError, GatewayError, InvalidRequest
from .base import (
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
    finish_reason,
)


async def deltas(body: AsyncIterator[bytes]) -> AsyncIterator[GenerationDelta]:
    """Upstream SSE chunks -> deltas, as each piece of the body arrives. ``body`` is the response
    body as it is received, in pieces of any size (whichever HTTP client reads it).

    The events one piece holds are passed on together: a choice's consecutive text (and its
    logprobs) becomes one delta (``_merged``), so a client is sent one event, in one write, for what
    the upstream had sent by then, as vLLM's own ``--stream-interval`` does. Under load an upstream's
    events arrive several to a read (at 16 streams, about five); one write each was the gateway's
    largest cost per stream. Nothing waits for more: a piece with one event is one delta at once,
    and the first delta goes on as soon as it is read, before the rest of its piece is parsed (a
    client waits on its first token)."""
    first = True
    counts: dict[int, int] = {}
    finish: dict[int, FinishReason | None] = {}
    prompt_tokens = 0
    buffer = b""
    # Bytes, not text: an event ends at a blank line whatever its encoding, and ``parse`` decodes
    # UTF-8 itself, so no incremental text decoder runs over the stream (half the cost).
    async for piece in body:
        buffer += piece
        ready: list[GenerationDelta] = []
        failure: Exception | None = None
        try:
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                event, buffer = buffer[:end], buffer[end + 2 :]
                data = event.removeprefix(b"data: ").strip()
                if not data or data == b"[DONE]":
                    continue
                chunk = parse(data)
                if "error" in chunk:
                    error = chunk["error"]
                    raise EngineError(f"The upstream failed: {error.get('message', 'unknown error')}")
                usage = chunk.get("usage")
                if usage and not chunk.get("choices"):
                    # Finishes are held back for this last chunk, which carries the exact usage. It
                    # counts completion tokens for all choices together: all but the last choice keep
                    # their own streamed count, the last takes the rest, so the sum is exact.
                    prompt_tokens = usage["prompt_tokens"]
                    left = usage["completion_tokens"]
                    ordered = sorted(finish)
                    for index in ordered:
                        own = left if index == ordered[-1] else counts.get(index, 0)
                        left -= own
                        ready.append(GenerationDelta(index, "", finish[index], prompt_tokens, own))
                    finish.clear()
                    continue
                for choice in chunk.get("choices", []):
                    index = choice["index"]
                    delta = choice.get("delta") or {}
                    content = delta.get("content") or ""
                    pieces, entries = delta.get("tool_calls"), choice.get("logprobs")
                    calls = tuple(_tool_call(piece) for piece in pieces) if pieces else ()
                    logprobs = _logprobs(entries) if entries else None
                    if content or calls or logprobs:
                        counts[index] = counts.get(index, 0) + 1
                        _merged(
                            ready,
                            GenerationDelta(
                                index, content, None, prompt_tokens, counts[index], tool_calls=calls, logprobs=logprobs
                            ),
                        )
                        if first:  # the first token goes on now, not with the rest of its piece
                            first = False
                            for delta in ready:
                                yield delta
                            ready.clear()
                    if choice.get("finish_reason"):
                        finish[index] = finish_reason(choice["finish_reason"])
        except Exception as exc:  # what came before it in this piece is still the client's
            failure = exc
        for delta in ready:
            yield delta
        if failure is not None:
            raise failure
    for index, reason in finish.items():  # an upstream that sent no usage chunk
        yield GenerationDelta(index, "", reason, prompt_tokens, counts.get(index, 0))


def parse(data: bytes) -> Any:
    """An upstream's JSON: pydantic's parser (Rust), about a third of ``json.loads``' time on a
    chunk; what it refuses and Python's takes (a lone surrogate escape, a byte-order mark) is
    parsed by Python's, so every body reads exactly as before."""
    try:
        return pydantic_core.from_json(data)
    except ValueError:
        return json.loads(data)


def body_bytes(body: dict[str, Any]) -> bytes:
    """A request body as JSON, by pydantic's serializer (a fifth of ``json.dumps``' time): UTF-8
    text as it is, where ``json.dumps`` writes ``\\u`` escapes; the same document either way.
    Text UTF-8 cannot hold (a lone surrogate, refused in requests but possible in an adapter
    profile's file) is written by ``json.dumps``, escaped, as before."""
    try:
        return pydantic_core.to_json(body)
    except ValueError:
        return json.dumps(body).encode()


def _merged(ready: list[GenerationDelta], delta: GenerationDelta) -> None:
    """Append ``delta``, or fold it into the last delta if both are text of the same choice."""
    last = ready[-1] if ready else None
    if last is None or last.index != delta.index or last.tool_calls or delta.tool_calls or last.finish_reason:
        ready.append(delta)
        return
    logprobs = (
        None if last.logprobs is None and delta.logprobs is None else (last.logprobs or ()) + (delta.logprobs or ())
    )
    ready[-1] = GenerationDelta(
        delta.index, last.text + delta.text, None, delta.prompt_tokens, delta.completion_tokens, logprobs=logprobs
    )


def whole_deltas(payload: bytes) -> list[GenerationDelta]:
    """A plain (``"stream": false``) chat completion -> one final delta per choice. The usage counts
    completion tokens for all choices together: the last choice takes what the others leave, each
    of the others its logprobs' count (all it is known by), so the sum is exact."""
    try:
        answer = parse(payload)
        choices = sorted(answer["choices"], key=lambda choice: choice["index"])
        usage = answer.get("usage") or {}
        prompt_tokens, left = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        out = []
        for position, choice in enumerate(choices):
            message = choice.get("message") or {}
            logprobs = _logprobs(choice.get("logprobs"))
            own = left if position == len(choices) - 1 else min(left, len(logprobs or ()))
            left -= own
            reason = choice.get("finish_reason")
            out.append(
                GenerationDelta(
                    choice["index"],
                    message.get("content") or "",
                    finish_reason(reason or "stop"),  # a whole answer has ended
                    prompt_tokens,
                    own,
                    tool_calls=tuple(
                        _tool_call({**call, "index": number})
                        for number, call in enumerate(message.get("tool_calls") or ())
                    ),
                    logprobs=logprobs,
                )
            )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EngineError(f"The upstream sent a malformed answer ({type(exc).__name__}).") from None
    return out


def _tool_call(piece: dict[str, Any]) -> ToolCallDelta:
    function = piece.get("function") or {}
    return ToolCallDelta(
        index=int(piece.get("index", 0)),
        id=piece.get("id"),
        name=function.get("name"),
        arguments=function.get("arguments") or "",
    )


def _logprobs(value: dict[str, Any] | None) -> tuple[TokenLogprob, ...] | None:
    if not value or not value.get("content"):
        return None
    return tuple(
        TokenLogprob(
            token=entry["token"],
            logprob=float(entry["logprob"]),
            bytes=tuple(entry.get("bytes") or ()),
            top=tuple(
                TopLogprob(token=t["token"], logprob=float(t["logprob"]), bytes=tuple(t.get("bytes") or ()))
                for t in entry.get("top_logprobs") or ()
            ),
        )
        for entry in value["content"]
    )


def chat_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    options = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": list(request.messages),
        "stream": not request.whole,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "n": options.n,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
    }
    if not request.whole:
        body["stream_options"] = {"include_usage": True}
    if options.max_tokens is not None:
        body["max_tokens"] = options.max_tokens
    if options.seed is not None:
        body["seed"] = options.seed
    if options.stop:
        body["stop"] = list(options.stop)
    if request.tools is not None:  # vLLM parses the calls (--enable-auto-tool-choice --tool-call-parser hermes)
        body["tools"] = list(request.tools.tools)
        body["tool_choice"] = request.tools.openai_choice()
        body["parallel_tool_calls"] = request.tools.parallel
    if request.output_format is not None:
        body["response_format"] = request.output_format.as_openai()
    if options.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = options.logprobs
    if request.chat_template is not None:  # an adapter profile's template: vLLM's chat_template field
        body["chat_template"] = request.chat_template
    return body


def upstream_error(status: int, body: bytes) -> GatewayError:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:300].decode(errors="replace")
    if 400 <= status < 500:
        return InvalidRequest(f"The upstream refused the request: {message}")
    return EngineError(f"The upstream failed ({status}): {message}")

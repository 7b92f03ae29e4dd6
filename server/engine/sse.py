"""vLLM's OpenAI-compatible SSE stream, turned into engine deltas as each event arrives.

Tool-call pieces (ids included) and logprobs are passed on as the upstream sent them: vLLM's own
tool parser and logprobs are the answer, not something to redo here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ..errors import EngineError
from .base import GenerationDelta, TokenLogprob, ToolCallDelta, TopLogprob

_FINISH = ("stop", "length", "tool_calls")


async def deltas(body: AsyncIterator[bytes]) -> AsyncIterator[GenerationDelta]:
    """Upstream SSE chunks -> deltas, one event at a time as they arrive. ``body`` is the response
    body as it is received, in pieces of any size (whichever HTTP client reads it)."""
    counts: dict[int, int] = {}
    finish: dict[int, str] = {}
    prompt_tokens = 0
    buffer = b""
    # Bytes, not text: an event ends at a blank line whatever its encoding, and ``json.loads``
    # decodes UTF-8 itself, so no incremental text decoder runs over the stream (half the cost).
    async for piece in body:
        buffer += piece
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + 2 :]
            data = event.removeprefix(b"data: ").strip()
            if not data or data == b"[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                raise EngineError(f"The upstream failed: {error.get('message', 'unknown error')}")
            usage = chunk.get("usage")
            if usage and not chunk.get("choices"):
                # Finishes are held back for this last chunk, which carries the exact usage. It counts
                # completion tokens for all choices together: all but the last choice keep their own
                # streamed count, the last takes the rest, so the sum is exact.
                prompt_tokens = usage["prompt_tokens"]
                left = usage["completion_tokens"]
                ordered = sorted(finish)
                for index in ordered:
                    own = left if index == ordered[-1] else counts.get(index, 0)
                    left -= own
                    yield GenerationDelta(index, "", finish[index], prompt_tokens, own)  # type: ignore[arg-type]
                finish.clear()
                continue
            for choice in chunk.get("choices", []):
                index = choice["index"]
                delta = choice.get("delta") or {}
                content = delta.get("content") or ""
                calls = tuple(_tool_call(piece) for piece in delta.get("tool_calls") or ())
                logprobs = _logprobs(choice.get("logprobs"))
                if content or calls or logprobs:
                    counts[index] = counts.get(index, 0) + 1
                    yield GenerationDelta(
                        index, content, None, prompt_tokens, counts[index], tool_calls=calls, logprobs=logprobs
                    )
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"] if choice["finish_reason"] in _FINISH else "stop"
    for index, reason in finish.items():  # an upstream that sent no usage chunk
        yield GenerationDelta(index, "", reason, prompt_tokens, counts.get(index, 0))  # type: ignore[arg-type]


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

"""A stand-in for one ``vllm serve --enable-lora`` upstream whose faults a test chooses.

It speaks the parts of vLLM's API the remote engine uses (``/v1/models`` with adapters as children
of the base, ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, streaming chat completions),
and answers every chat with ``answer``, after ``delay`` seconds (a busy upstream): streamed word
by word, or whole for ``"stream": false``. It fails the way a test asks: the connection dropped
after ``die_after`` chunks (a killed or crashed upstream, mid-answer; a whole answer is dropped
half sent, or before a byte for 0), or ``frozen`` (every endpoint stops answering until it is
False again, as a SIGSTOPped process). A request with ``tools`` is answered, as ``vllm serve
--enable-auto-tool-choice --tool-call-parser hermes`` does, with one call of the first tool (streamed:
name first, then the arguments in two pieces); ``logprobs`` come with every content token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

CALL_ID = "chatcmpl-tool-upstream1"  # as vLLM names its calls


class _Dropped(Exception):
    """Raised inside the stream: uvicorn then closes the connection without ending the body."""


@dataclass
class FakeVllm:
    base: str
    answer: str = "Fake: hello from the stand-in upstream."
    root: str | None = None  # where vLLM says the base's files are (default: its id)
    die_after: int | None = None  # chunks sent before the connection is dropped; None: never
    delay: float = 0.0  # seconds before the response starts (a busy upstream: queueing, prefill)
    frozen: bool = False
    loaded: set[str] = field(default_factory=set)
    chats: int = 0
    dropped: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every chat request, as received

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/ready")  # what tests.support.running_server waits for
        async def ready() -> dict[str, bool]:
            return {"ready": True}

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            await self._thaw()
            card = {
                "id": self.base,
                "object": "model",
                "max_model_len": 4096,
                "parent": None,
                "root": self.root or self.base,
            }
            cards = [card]
            cards += [{"id": name, "object": "model", "parent": self.base} for name in sorted(self.loaded)]
            return {"object": "list", "data": cards}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> PlainTextResponse:
            name = (await request.json())["lora_name"]
            if name in self.loaded:
                return PlainTextResponse(f"The lora adapter '{name}' has already been loaded.", status_code=400)
            self.loaded.add(name)
            return PlainTextResponse("Success")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> PlainTextResponse:
            self.loaded.discard((await request.json())["lora_name"])
            return PlainTextResponse("Success")

        @app.post("/v1/chat/completions", response_model=None)
        async def chat(request: Request) -> StreamingResponse | JSONResponse:
            body = await request.json()
            if body["model"] not in {self.base, *self.loaded}:
                return JSONResponse({"error": {"message": "no such model", "type": "NotFoundError", "code": 404}}, 404)
            self.chats += 1
            self.bodies.append(body)
            await asyncio.sleep(self.delay)
            await self._thaw()
            if not body.get("stream"):
                return StreamingResponse(self._whole(body), media_type="application/json")
            if body.get("tools"):
                return StreamingResponse(self._tool_call(body), media_type="text/event-stream")
            return StreamingResponse(
                self._stream(body["model"], bool(body.get("logprobs"))), media_type="text/event-stream"
            )

        return app

    async def _thaw(self) -> None:
        while self.frozen:
            await asyncio.sleep(0.02)

    async def _whole(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """A plain answer as vLLM sends it, as a body in two halves (so it can be dropped half sent)."""
        words = self.answer.split(" ")
        message: dict[str, Any] = {"role": "assistant", "content": self.answer, "tool_calls": []}
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        if body.get("tools"):
            function = {"name": body["tools"][0]["function"]["name"], "arguments": '{"order_id": "A1001"}'}
            message.update(content=None, tool_calls=[{"id": CALL_ID, "type": "function", "function": function}])
            choice["finish_reason"] = "tool_calls"
        elif body.get("logprobs"):
            pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
            choice["logprobs"] = {
                "content": [
                    {"token": p, "logprob": -0.25, "bytes": list(p.encode()), "top_logprobs": []} for p in pieces
                ]
            }
        usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
        answer = {"id": "c", "object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
        payload = json.dumps(answer).encode()
        for half, piece in enumerate((payload[: len(payload) // 2], payload[len(payload) // 2 :])):
            if self.die_after is not None and half >= self.die_after:
                self.dropped += 1
                raise _Dropped()
            yield piece

    async def _tool_call(self, body: dict[str, Any]) -> AsyncIterator[str]:
        name = body["tools"][0]["function"]["name"]
        pieces = [
            {
                "index": 0,
                "id": CALL_ID,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            },
            {"index": 0, "function": {"arguments": '{"order_id": '}},
            {"index": 0, "function": {"arguments": '"A1001"}'}},
        ]
        for piece in pieces:
            chunk = {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        done = {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}
        yield f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"

    async def _stream(self, model: str, logprobs: bool = False) -> AsyncIterator[str]:
        words = self.answer.split(" ")
        for i, word in enumerate(words):
            if self.die_after is not None and i >= self.die_after:
                self.dropped += 1
                raise _Dropped()
            piece = word if i == 0 else " " + word
            chunk: dict[str, Any] = {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            if logprobs:
                entry = {"token": piece, "logprob": -0.25, "bytes": list(piece.encode()), "top_logprobs": []}
                chunk["choices"][0]["logprobs"] = {"content": [entry], "refusal": None}
            yield f"data: {json.dumps(chunk)}\n\n"
        done = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        usage = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)},
        }
        yield f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n"

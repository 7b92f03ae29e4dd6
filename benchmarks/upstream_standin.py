"""A minimal OpenAI-compatible upstream: a FastAPI app that answers every chat completion with a
fixed text at once, streamed or not, and accepts vLLM's adapter-loading calls.

    .venv/bin/python benchmarks/upstream_standin.py --port 8200 [--model bench-base]

What a bare HTTP layer costs per request, so ``gateway_overhead.py`` can put the gateway (remote
engine) and other proxies beside it. It is deliberately plain FastAPI + uvicorn, as vLLM's own
server is, with the JSON built by hand so the stand-in costs as little as it can.
"""

from __future__ import annotations

import argparse
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

ANSWER_PIECES = ["Your", " order", " ships", " within", " 3", " days", "."]
PROMPT_TOKENS = 12


def build_app(model: str) -> FastAPI:
    app = FastAPI()
    loaded: set[str] = set()

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        ids = [model, *sorted(loaded)]
        return {"object": "list", "data": [{"id": i, "object": "model", "max_model_len": 32768} for i in ids]}

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        loaded.add((await request.json())["lora_name"])
        return Response("Success", media_type="text/plain")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        loaded.discard((await request.json())["lora_name"])
        return Response("Success", media_type="text/plain")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        head = {"id": "chatcmpl-standin", "created": int(time.time()), "model": body["model"]}
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(ANSWER_PIECES),
            "total_tokens": PROMPT_TOKENS + len(ANSWER_PIECES),
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(ANSWER_PIECES)}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            answer = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            return Response(json.dumps(answer), media_type="application/json")
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_events(head, usage if with_usage else None), media_type="text/event-stream")

    return app


async def _events(head: dict[str, object], usage: dict[str, int] | None):  # type: ignore[no-untyped-def]
    chunk = {**head, "object": "chat.completion.chunk"}
    for i, piece in enumerate(ANSWER_PIECES):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        last = i == len(ANSWER_PIECES) - 1
        choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None, "logprobs": None}
        yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
    if usage is not None:
        yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--model", default="bench-base")
    args = parser.parse_args()
    uvicorn.run(build_app(args.model), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

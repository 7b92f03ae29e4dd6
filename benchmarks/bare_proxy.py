"""The floor of a Python gateway: uvicorn + Starlette + aiohttp passing a chat request's body to one
upstream and its answer back, untouched.

    .venv/bin/python benchmarks/bare_proxy.py --upstream http://127.0.0.1:8200 --port 8201

No validation, keys, limits, metrics, routing, failover or usage (``/ready`` says it is up):
what a proxy on this stack costs before it does any of a gateway's work, so
``gateway_overhead.py`` can say how much of the gateway's added latency is its own work and how
much any Python proxy pays on this machine. Not a product: no error handling, one route.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_JSON = {"Content-Type": "application/json"}


def build_app(upstream: str) -> Starlette:
    session: list[aiohttp.ClientSession] = []  # created on the server's event loop

    async def chat(request: Request) -> Response:
        response = await session[0].post(f"{upstream}/v1/chat/completions", data=await request.body(), headers=_JSON)
        media_type = response.headers.get("Content-Type", "application/json")
        if not media_type.startswith("text/event-stream"):
            return Response(await response.read(), status_code=response.status, media_type=media_type)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for piece in response.content.iter_any():
                    yield piece
            finally:
                response.release()

        return StreamingResponse(relay(), status_code=response.status, media_type=media_type)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0)  # as the remote engine's
        session.append(aiohttp.ClientSession(connector=connector))
        yield
        await session[0].close()

    async def ready(_: Request) -> Response:
        return Response("ok", media_type="text/plain")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/ready", ready)]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="The upstream's base URL.")
    parser.add_argument("--port", type=int, default=8201)
    args = parser.parse_args()
    app = build_app(args.upstream.rstrip("/"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""ASGI middleware that must see every request: the body limit and early-refusal accounting."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RequestTimeout, RequestTooLarge
from ..metrics import UNKNOWN_MODEL, GatewayMetrics
from .errors import error_response


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes``, whether or not Content-Length is declared, and 408
    for bodies not received within ``timeout`` seconds (a body shorter than its Content-Length,
    or one sent a byte at a time, would otherwise hold a connection and a task forever).

    The body is read here (bounded by the limit) and replayed to the app, so a chunked upload
    cannot get past the check by omitting Content-Length.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except asyncio.TimeoutError:
            error = RequestTimeout(f"The request body was not received within {self.timeout:g} s.")
            await error_response(error, close=True)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        if len(body) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or as much as passes the limit (then refused); None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLarge(f"Request body exceeds the limit of {self.max_bytes} bytes.")
        await error_response(error, close=True)(scope, receive, send)


class EarlyErrorCounter:
    """Count chat requests refused before the route ran (bad JSON, auth, 413) as errors.

    The chat route records its own outcomes and marks the request ``observed``; anything else that
    answers ``/v1/chat/completions`` with an error is counted here under ``model="unknown"``.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status >= 400 and not state.get("observed"):
            error_type = "invalid_request_error" if status < 500 else "server_error"
            self.metrics.record_error(UNKNOWN_MODEL, status, error_type)

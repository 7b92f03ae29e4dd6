"""ASGI middleware that must see every request: the body limit, and text a UTF-8 encoder can take."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import GatewayError, InvalidRequest, RequestTimeout, RequestTooLarge
from ..jsonbounds import lone_surrogate_at
from .errors import error_response


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes``, whether or not Content-Length is declared, and 408
    for bodies not received within ``timeout`` seconds (a body shorter than its Content-Length,
    or one sent a byte at a time, would otherwise hold a connection and a task forever).

    The body is read here (bounded by the limit) and replayed to the app, so a chunked upload
    cannot get past the check by omitting Content-Length. Here too, for every route at once, a JSON
    string holding a lone surrogate (``"\\ud800"``: valid JSON, not valid text) is a 400 naming the
    field: let through, it fails later, where one bad row can take others with it (a batch insert).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout: float = 30.0,
        refused: Callable[[str, GatewayError], None] | None = None,
        uploads: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.refused = refused  # told (path, error) of each refusal, for the metrics
        self.uploads = uploads or {}  # path: (max bytes, timeout) of routes that take files (POST /v1/files)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        max_bytes, timeout = self.uploads.get(scope["path"], (self.max_bytes, self.timeout))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._reject(scope, receive, send)
            return
        try:
            async with asyncio.timeout(timeout):  # in this task: wait_for would start another (3.11)
                body = await self._read(receive, max_bytes)
        except TimeoutError:
            error = RequestTimeout(f"The request body was not received within {self.timeout:g} s.")
            await self._refuse(error, scope, receive, send)
            return
        if body is None:  # the client went away
            return
        if len(body) > max_bytes:
            await self._reject(scope, receive, send)
            return
        bad_text = lone_surrogate_at(body)
        if bad_text is not None:
            field = bad_text or "body"
            refusal = InvalidRequest(f"'{field}' is not valid Unicode text (it holds a lone surrogate).", param=field)
            await self._refuse(refusal, scope, receive, send, close=False)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, max_bytes: int) -> bytes | None:
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
            if size > max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.uploads.get(scope["path"], (self.max_bytes, self.timeout))[0]
        error = RequestTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        await self._refuse(error, scope, receive, send)

    async def _refuse(
        self, error: GatewayError, scope: Scope, receive: Receive, send: Send, *, close: bool = True
    ) -> None:
        if self.refused is not None:
            self.refused(scope["path"], error)
        await error_response(error, close=close)(scope, receive, send)

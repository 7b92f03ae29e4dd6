"""Stop work for a client that left, without a second task doing the work.

uvicorn speaks ASGI 2.3: after a client disconnects, ``send`` returns quietly, so the only news is
an ``http.disconnect`` from ``receive``. Starlette's ``StreamingResponse`` therefore streams from
a second task under an anyio task group, and cancels it from the first. That costs every stream a
task, a cancel scope and a task repr (anyio names the canceller): about 0.2 ms before its first
byte, measured under load. Here the request's own task does the work, and a small listener task
cancels it if the client leaves first; the cancellation is ours, so it is swallowed on the way
out, and any other (a server shutdown) goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(receive) as watch:`` the block is cancelled if the client
    disconnects before it ends; afterwards ``watch.gone`` tells whether it was."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[object] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._starting: asyncio.Handle | None = None
        self.gone = False  # the client left and the block was cancelled for it
        self.finished = False  # the block is done (or its response complete): a disconnect is news no more

    async def __aenter__(self) -> CancelOnDisconnect:
        # The listener starts once the block first waits (the loop's next turn), not before: a block
        # that never waits (an answer already here, a stream's first event) needs none, and its
        # first bytes do not wait for a task to be made.
        self._task = asyncio.current_task()
        self._starting = asyncio.get_running_loop().call_soon(self._start_listening)
        return self

    def _start_listening(self) -> None:
        if not self.finished:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.finished and self._task is not None:
            self.gone = True
            self._task.cancel()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        self.finished = True
        if self._starting is not None:
            self._starting.cancel()
        if self._listener is not None:
            self._listener.cancel()
        if not self.gone or self._task is None:
            return False
        # Ours to take back; a cancellation from anyone else (shutdown) still propagates.
        return self._task.uncancel() == 0 and kind is asyncio.CancelledError


class EventStream(Response):
    """``text/event-stream`` from an async iterator of events, sent from the request's task; ``end``
    goes out with the last body message. A client that leaves cancels the stream, and the iterator
    is closed at once (its cleanup runs now, not whenever the garbage collector finds it)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], *, end: str, headers: Mapping[str, str] | None = None) -> None:
        self.events = events
        self.end = end.encode()
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with CancelOnDisconnect(receive) as watch, contextlib.aclosing(self.events) as events:  # type: ignore[type-var]
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in events:
                await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            watch.finished = True  # the response completes with the next message
            await send({"type": "http.response.body", "body": self.end, "more_body": False})

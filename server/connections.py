"""Connection-level bounds uvicorn does not set: a deadline for request headers and a cap on their size.

uvicorn closes idle keep-alive connections (``--keep-alive-timeout``) but sets no deadline before the
first request of a connection, nor while its headers trickle in: idle or slowloris sockets then pile
up until the process runs out of file descriptors and even ``/health`` fails. This protocol (uvicorn's
httptools one, with two additions) answers ``408`` and closes a connection whose headers are not
complete ``header_timeout`` seconds after it opened or after its next request began, and ``431`` once
its headers pass ``max_header_bytes``. The body has its own deadline (``api.limits``), and
``--limit-concurrency`` caps how many connections are served at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n"
)


def _error(status_line: bytes, message: str, code: str) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    return status_line % len(body) + body


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a header deadline and a header size cap."""

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _awaiting_headers = True
        _header_bytes = 0
        _tail = b""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._awaiting_headers:  # counted up to the blank line that ends them, before parsing
                window = self._tail + data
                end = window.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
                self._tail = window[-3:]
                if self._header_bytes > max_header_bytes:
                    self._refuse(
                        _error(
                            _TOO_LARGE, f"Request headers exceed {max_header_bytes} bytes.", "request_header_too_large"
                        )
                    )
                    return
            if not self.transport.is_closing():
                super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # the next request on a kept-alive connection
                self._arm()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._awaiting_headers, self._header_bytes, self._tail = True, 0, b""  # the next request's

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._disarm()
            super().on_headers_complete()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self._awaiting_headers:
                self._refuse(
                    _error(_TIMEOUT, f"No complete request headers within {header_timeout:g} s.", "request_timeout")
                )

        def _refuse(self, response: bytes) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedProtocol

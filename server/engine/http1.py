"""A small HTTP/1.1 client for the one call on the gateway's hot path: a chat request to an upstream.

Why not aiohttp, which makes every other call to upstreams (health checks, adapter loading):
profiled under load (``benchmarks/gateway_overhead.py``, CPU time per request read from
``/proc``), aiohttp's request machinery was half of the remote gateway's CPU per plain request,
about 0.25 ms, and in a tight loop on one kept-alive connection a call cost its client 100 µs of
CPU and 220 µs from send to answer, against 26 µs and 124 µs here. What it spends that on
(cookies, redirects, proxies, tracing, middlewares, header multidicts, a URL object per request,
timers per request) this call needs none of: one POST of a JSON body we encoded, to a server we
name, answered by a status, headers we do not read, and a body, whole or as server-sent events.

The parsing, the part that must be right, is ``httptools`` (llhttp, the C parser uvicorn uses to
read our own requests). What is ours is small:

- Connections per upstream (``Http1Pool``), kept alive between requests and taken newest first;
  one idle longer than ``keepalive`` seconds is closed rather than reused, well before uvicorn's
  5 s idle timeout (vLLM's server is uvicorn) would close it under a request. No cap on their
  number (``--limit-concurrency`` bounds the requests); after a burst the idle ones are closed as
  they pass ``keepalive``.
- A request sent on a kept-alive connection that the server had just closed (no byte of an answer
  came) is sent once more on a new connection: the server never read it. Anything else that goes
  wrong is the caller's to handle: ``Unreachable`` (no connection), ``Disconnected`` (lost before
  the answer was whole), ``BadResponse`` (not HTTP), or ``TimeoutError`` (``connect_timeout``,
  or ``read_timeout`` between two pieces of an answer).
- Back-pressure: past ``_HIGH_WATER`` unread bytes, reading pauses until the caller catches up.
- A response read to its end gives its connection back (``release``); one left early is closed
  (``close``), which is how vLLM learns that the client left and aborts the request.
- ``https://`` upstreams over TLS, verified by the system's certificate store.

Not supported, and not needed for this call: redirects, proxies, cookies, compressed answers
(we send no ``Accept-Encoding``), chunked requests, HTTP/2.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

_HIGH_WATER = 256 * 1024  # unread body bytes at which reading pauses


class Http1Error(Exception):
    """A chat call failed below HTTP: the caller fails over or ends the answer."""


class Unreachable(Http1Error):
    """No connection to the upstream could be made."""


class Disconnected(Http1Error):
    """The connection was lost before the answer was whole."""


class BadResponse(Http1Error):
    """What came back is not an HTTP response the parser accepts."""


class Response:
    """One answer on one connection: its status once the headers are in, then its body."""

    def __init__(self, connection: _Connection, pool: Http1Pool, read_timeout: float | None) -> None:
        self.status = 0
        self._connection = connection
        self._pool = pool
        self._read_timeout = read_timeout
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._headers_done = False
        self._eof = False  # the whole body has arrived
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._received = False  # any byte of this answer arrived
        self._until_close = True  # no length and not chunked: the body ends when the connection does
        self._finished = False  # released or closed
        self._whole = False  # read whole (``read``): never paused

    # -------------------------------------------------------------- what the caller uses

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of any size (everything that came since the last one)."""
        while True:
            if self._pieces:
                piece = b"".join(self._pieces) if len(self._pieces) > 1 else self._pieces[0]
                self._pieces.clear()
                self._buffered = 0
                self._connection.resume()
                yield piece
            elif self._eof:
                return
            else:
                await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        self._connection.resume()
        while not self._eof:
            await self._wait()
        body = b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        return body

    def at_eof(self) -> bool:
        """Read to its end: nothing more will come, nothing is left unread."""
        return self._eof and not self._pieces

    def release(self) -> None:
        """Done with it: a connection whose answer was read whole goes back to the pool, any
        other is closed."""
        if self._finished:
            return
        self._finished = True
        connection = self._connection
        connection.response = None
        if self.at_eof() and not self._until_close and connection.reusable():
            self._pool._put(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Done with it early: the connection is closed, which the server sees as the client gone."""
        if not self._finished:
            self._finished = True
            self._connection.response = None
            self._connection.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    # -------------------------------------------------------------- what the connection tells it

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            if self._read_timeout is None:
                await waiter
            else:
                async with asyncio.timeout(self._read_timeout):
                    await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._until_close = False

    def _headers_complete(self, status: int) -> None:
        self.status = status
        self._headers_done = True
        if status in (204, 304) or 100 <= status < 200:
            self._until_close = False
        self._wake()

    def _body(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._buffered += len(piece)
        if self._buffered > _HIGH_WATER and not self._whole:
            self._connection.pause()
        self._wake()

    def _complete(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self._error is None and not self._eof:
            self._error = error
        self._wake()

    def _lost(self) -> None:
        """The connection closed: the end of a body that runs until then, else a failure."""
        if self._headers_done and self._until_close:
            self._complete()
        else:
            self._fail(Disconnected("the upstream closed the connection before its answer was whole"))


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, its parser, and the response it is reading, if any."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.lost = False
        self.broken = False  # the parser failed: nothing more can be read from it
        self.idle_since = 0.0
        self.paused = False
        self.keep_alive = False  # whether the last complete answer allows another on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None:
            self.response._lost()

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes while idle: nothing we asked for; not a connection to reuse
            self.close()
            return
        self.response._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.broken = True
            if self.response is not None:
                self.response._fail(BadResponse(f"the upstream's answer is not HTTP/1.1 ({exc})"))
            self.close()

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response._header(name, value)

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        # Asked now: the parser forgets once the message is behind it.
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.response is not None:
            self.response._complete()

    def reusable(self) -> bool:
        """The last answer on it ended cleanly, allowing another, and it is still open."""
        return self.keep_alive and not (
            self.lost or self.broken or self.transport is None or self.transport.is_closing()
        )

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Http1Pool:
    """Kept-alive connections to one upstream (``url``: scheme, host, port, and any path prefix),
    for POSTs of a JSON body; ``headers`` go with every request (an ``Authorization``)."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        keepalive: float = 2.0,
        connect_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]  # never credentials in the Host header
        fixed = {"Host": authority, "User-Agent": "lora-gateway", **(headers or {})}
        if (
            parts.username is not None and "Authorization" not in fixed
        ):  # http://user:password@host, as aiohttp takes it
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fixed["Authorization"] = "Basic " + base64.b64encode(userinfo).decode("ascii")
        for name, value in fixed.items():
            if any(c in name + value for c in "\r\n"):
                raise ValueError(f"a line break in header {name!r}")
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._idle: deque[_Connection] = deque()  # oldest first
        self._heads: dict[str, bytes] = {}  # each path's request line and fixed headers, built once
        self._closed = False

    async def post(self, path: str, body: bytes, *, read_timeout: float | None) -> Response:
        """POST ``body`` (JSON) to ``path``; returns once the answer's headers are in, within
        ``read_timeout`` of sending (None: however long it takes). The caller reads the body and
        then releases or closes the response (``async with`` releases it)."""
        fixed = self._heads.get(path)
        if fixed is None:
            fixed = self._heads[path] = b"POST %s HTTP/1.1\r\n%sContent-Type: application/json\r\n" % (
                (self._prefix + path).encode("ascii"),
                self._fixed,
            )
        head = fixed + b"Content-Length: %d\r\n\r\n" % len(body)
        request = head + body if len(body) < 65536 else None  # one write for a small body
        connection = self._take()
        while True:
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            response = Response(connection, self, read_timeout)
            connection.response, connection.keep_alive = response, False  # until this answer says so
            assert connection.transport is not None
            if request is not None:
                connection.transport.write(request)
            else:
                connection.transport.writelines((head, body))
            try:
                while not response._headers_done:
                    await response._wait()
            except Disconnected:
                response.close()
                if reused and not response._received:  # a kept-alive connection the server had just closed
                    connection = None
                    continue
                raise
            except BaseException:  # a timeout, a cancellation, not HTTP: the connection cannot be reused
                response.close()
                raise
            return response

    def _take(self) -> _Connection | None:
        """The newest idle connection still fit to carry a request."""
        self._prune()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        return None

    def _put(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)
        self._prune()

    def _prune(self) -> None:
        """Close the connections idle past ``keepalive``, oldest first: after a burst, those the
        traffic no longer needs do not wait for the server to close them."""
        stale = asyncio.get_running_loop().time() - self._keepalive
        while self._idle and self._idle[0].idle_since < stale:
            self._idle.popleft().close()

    async def _connect(self) -> _Connection:
        if self._closed:
            raise Unreachable("the connection pool is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except OSError as exc:  # refused, unreachable, reset, a TLS failure
            raise Unreachable(f"cannot connect to {self._host}:{self._port} ({type(exc).__name__})") from exc
        return connection

    def close(self) -> None:
        """Close the idle connections; those in use close when their responses are done."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

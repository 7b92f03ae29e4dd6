"""``server/engine/http1.py``: the chat call's HTTP/1.1 client, against real servers on 127.0.0.1 (a
uvicorn app, and raw asyncio servers that misbehave on purpose)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from server.engine import http1
from server.engine.http1 import BadResponse, Disconnected, Http1Pool, Unreachable
from tests.support import free_port, running_server

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Seen:
    """What a raw server saw: connections accepted, requests read (head, body), connections the
    client closed on it."""

    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    client_left: int = 0


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Seen, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader, seen: Seen) -> bool:
    """One request off ``reader`` into ``seen``; False at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        seen.client_left += 1
        return False
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    seen.requests.append((head, await reader.readexactly(length)))
    return True


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, Seen]]:
    """A TCP server on 127.0.0.1 calling ``handler(reader, writer, seen, connection_number)``."""
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer, seen, seen.connections)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
    """Kept alive: every request answered with its own body."""
    while await read_request(reader, seen):
        writer.write(OK % (len(seen.requests[-1][1]), seen.requests[-1][1]))
        await writer.drain()


async def first_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
    """Read a request and start a streamed answer with one event, and nothing after it (yet)."""
    await read_request(reader, seen)
    writer.write(CHUNKED + chunk(b"data: 1\n\n"))
    await writer.drain()


async def pieces_until(error: type[BaseException], response: http1.Response) -> list[bytes]:
    """The pieces of ``response``'s body that came before it failed with ``error``."""
    pieces = []
    with pytest.raises(error):
        async for piece in response.iter_any():
            pieces.append(piece)
    return pieces


async def eventually(check: Callable[[], bool]) -> None:
    """Wait up to a second for ``check`` to hold (what a server sees trails what the client did)."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.01)


def test_a_plain_answer_and_a_stream_from_uvicorn() -> None:
    """The real thing: uvicorn's answers, whole (content-length) and streamed (chunked), with the
    request's headers as sent."""

    async def whole(request: Request) -> Response:
        return JSONResponse({"body": (await request.body()).decode(), "headers": dict(request.headers)})

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"data: {i}\n\n".encode()
                await asyncio.sleep(0.01)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def ready(_: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/ready", ready),
            Route("/whole", whole, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
        ]
    )

    async def scenario(url: str) -> None:
        pool = Http1Pool(url, headers={"Authorization": "Bearer sk-upstream"})
        async with await pool.post("/whole", b'{"q": "\xe4\xbd\xa0\xe5\xa5\xbd"}', read_timeout=5) as response:
            assert response.status == 200
            echoed = json.loads(await response.read())
            assert response.at_eof()
        assert echoed["body"] == '{"q": "你好"}'
        assert echoed["headers"]["authorization"] == "Bearer sk-upstream"
        assert echoed["headers"]["content-type"] == "application/json"
        assert echoed["headers"]["host"] == url.removeprefix("http://")
        async with await pool.post("/stream", b"{}", read_timeout=5) as response:
            pieces = [piece async for piece in response.iter_any()]
            assert response.at_eof()
        assert b"".join(pieces) == b"".join(f"data: {i}\n\n".encode() for i in range(5))
        assert len(pieces) > 1  # as they arrived, not at the end
        pool.close()

    with running_server(app) as url:
        asyncio.run(scenario(url))


def test_connections_are_kept_alive_and_a_stale_one_is_not_reused() -> None:
    async def scenario() -> None:
        async with raw_server(answer_each) as (url, seen):
            pool = Http1Pool(url + "/prefix/", keepalive=1.0)
            for body in (b'{"a": 1}', b'{"a": 2}'):
                async with await pool.post("/v1/chat/completions", body, read_timeout=5) as response:
                    assert await response.read() == body
            assert seen.connections == 1  # the second request went on the first one's connection
            assert seen.requests[0][0].startswith(b"POST /prefix/v1/chat/completions HTTP/1.1\r\n")
            assert b"Authorization" not in seen.requests[0][0]
            await asyncio.sleep(1.2)  # idle past keepalive: closed, not reused
            async with await pool.post("/v1/chat/completions", b"{}", read_timeout=5) as response:
                await response.read()
            assert seen.connections == 2
            pool.close()

    asyncio.run(scenario())


def test_a_request_on_a_connection_the_server_just_closed_is_sent_once_more() -> None:
    """The server closes a kept-alive connection as the next request arrives on it (its idle
    timeout, racing us): nothing of an answer came, so the request goes on a new connection."""

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int
    ) -> None:
        await read_request(reader, seen)
        writer.write(OK % (2, b"{}"))
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")  # the next request: closed on, unanswered

    async def scenario() -> None:
        async with raw_server(one_per_connection) as (url, seen):
            pool = Http1Pool(url)
            for _ in range(2):
                async with await pool.post("/v1/chat/completions", b"{}", read_timeout=5) as response:
                    assert await response.read() == b"{}"
            assert seen.connections == 2 and len(seen.requests) == 2
            pool.close()

    asyncio.run(scenario())


def test_a_new_connection_closed_before_an_answer_is_disconnected_and_not_retried() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
        await read_request(reader, seen)

    async def scenario() -> None:
        async with raw_server(hang_up) as (url, seen):
            with pytest.raises(Disconnected):
                await Http1Pool(url).post("/v1/chat/completions", b"{}", read_timeout=5)
            assert seen.connections == 1

    asyncio.run(scenario())


def test_nobody_listening_is_unreachable() -> None:
    async def scenario() -> None:
        with pytest.raises(Unreachable, match="cannot connect"):
            await Http1Pool(f"http://127.0.0.1:{free_port()}").post("/v1/chat/completions", b"{}", read_timeout=5)

    asyncio.run(scenario())


def test_silence_past_the_read_timeout_is_a_timeout_and_the_stream_is_closed() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
        await first_event(reader, writer, seen)
        await read_request(reader, seen)  # until the client closes the connection

    async def scenario() -> None:
        async with raw_server(stall) as (url, seen):
            pool = Http1Pool(url)
            response = await pool.post("/v1/chat/completions", b"{}", read_timeout=0.3)
            assert await pieces_until(TimeoutError, response) == [b"data: 1\n\n"]
            assert not response.at_eof()
            response.close()  # as the remote engine does with an answer left early: the server sees it go
            await eventually(lambda: seen.client_left == 1)
            assert seen.client_left == 1
            with pytest.raises(TimeoutError):  # no headers in time either
                async with raw_server(lambda r, w, s, n: asyncio.sleep(5)) as (silent, _):
                    await Http1Pool(silent).post("/v1/chat/completions", b"{}", read_timeout=0.2)

    asyncio.run(scenario())


def test_an_answer_that_is_not_http_is_refused() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
        await read_request(reader, seen)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def scenario() -> None:
        async with raw_server(garbage) as (url, _):
            with pytest.raises(BadResponse):
                await Http1Pool(url).post("/v1/chat/completions", b"{}", read_timeout=5)

    asyncio.run(scenario())


def test_a_stream_cut_mid_way_is_disconnected_after_what_came() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
        await first_event(reader, writer, seen)
        await asyncio.sleep(0.1)

    async def scenario() -> None:
        async with raw_server(cut) as (url, _):
            response = await Http1Pool(url).post("/v1/chat/completions", b"{}", read_timeout=5)
            assert await pieces_until(Disconnected, response) == [b"data: 1\n\n"]

    asyncio.run(scenario())


def test_a_body_without_a_length_runs_to_the_connection_close_and_is_not_reused() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b'{"whole": true}')
        await writer.drain()

    async def scenario() -> None:
        async with raw_server(until_close) as (url, seen):
            pool = Http1Pool(url)
            for _ in range(2):
                async with await pool.post("/v1/chat/completions", b"{}", read_timeout=5) as response:
                    assert await response.read() == b'{"whole": true}'
            assert seen.connections == 2

    asyncio.run(scenario())


def test_reading_pauses_while_a_large_answer_is_not_consumed() -> None:
    piece = b"x" * 65536
    pieces = 32  # 2 MiB

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, _: int) -> None:
        await read_request(reader, seen)
        writer.write(CHUNKED)
        for _ in range(pieces):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader, seen)

    async def scenario() -> None:
        async with raw_server(flood) as (url, _):
            pool = Http1Pool(url)
            async with await pool.post("/v1/chat/completions", b"{}", read_timeout=5) as response:
                await asyncio.sleep(0.3)  # nothing consumed: the client stops reading past its high-water mark
                assert response._connection.paused and response._buffered < 4 * 65536 + 256 * 1024
                total = sum([len(p) async for p in response.iter_any()])
            assert total == pieces * len(piece)
            async with await pool.post("/v1/chat/completions", b"{}", read_timeout=5) as response:
                assert len(await response.read()) == pieces * len(piece)  # read whole: never paused

    asyncio.run(scenario())


def test_bad_urls_and_header_injection_are_refused() -> None:
    with pytest.raises(ValueError):
        Http1Pool("unix:///tmp/vllm.sock")
    with pytest.raises(ValueError, match="line break"):
        Http1Pool("http://127.0.0.1:8000", headers={"Authorization": "Bearer x\r\nX-Admin: 1"})


def test_idle_connections_past_keepalive_are_closed_after_a_burst() -> None:
    async def scenario() -> None:
        async with raw_server(answer_each) as (url, seen):
            pool = Http1Pool(url, keepalive=1.0)

            async def ask() -> None:
                async with await pool.post("/v1/chat/completions", b"{}", read_timeout=5) as response:
                    await response.read()

            await asyncio.gather(*(ask() for _ in range(8)))  # a burst: eight connections, then idle
            assert seen.connections == 8 and len(pool._idle) == 8
            await asyncio.sleep(1.2)
            await ask()  # one request after the burst: the seven it does not need are closed
            assert len(pool._idle) == 1 and seen.connections == 9  # (the newest was stale too)
            await eventually(lambda: seen.client_left == 8)
            assert seen.client_left == 8

    asyncio.run(scenario())


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, in PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "upstream.pem", directory / "upstream.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_an_https_upstream_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS with the system's trust store (here told of the upstream's certificate through
    ``SSL_CERT_FILE``, as a user with a private CA would); an unknown certificate is unreachable."""
    cert_file, key_file = _self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert_file, key_file)

    async def scenario(trusted: bool) -> None:
        seen = Seen()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await answer_each(reader, writer, seen, 1)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=served)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            if trusted:
                async with await Http1Pool(url).post("/v1/chat/completions", b'{"tls": 1}', read_timeout=5) as answer:
                    assert await answer.read() == b'{"tls": 1}'
            else:
                with pytest.raises(Unreachable, match="SSLCertVerificationError"):
                    await Http1Pool(url).post("/v1/chat/completions", b"{}", read_timeout=5)

    asyncio.run(scenario(trusted=False))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    asyncio.run(scenario(trusted=True))


def test_credentials_in_the_url_are_sent_as_basic_auth_never_in_the_host_header() -> None:
    async def scenario() -> None:
        async with raw_server(answer_each) as (url, seen):
            with_credentials = url.replace("http://", "http://user:p%40ss@")
            async with await Http1Pool(with_credentials).post("/v1/chat/completions", b"{}", read_timeout=5) as answer:
                await answer.read()
            head = seen.requests[0][0].decode()
            assert "Authorization: Basic dXNlcjpwQHNz\r\n" in head  # user:p@ss
            assert f"Host: {url.removeprefix('http://')}\r\n" in head

    asyncio.run(scenario())

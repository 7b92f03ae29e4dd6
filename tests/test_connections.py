"""Connection bounds (server/connections.py, api/limits.py): idle and slow sockets are closed with a
408, oversized headers get a 431, a body that never arrives gets a 408, and an unhandled error says
``Connection: close`` so pooled clients do not reuse a socket the server is closing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import running_server

TIMEOUT = 0.6


@pytest.fixture(scope="module")
def server(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from server.app import create_app

    settings = make_settings(
        base_model,
        tmp_path_factory.mktemp("empty"),
        header_timeout=TIMEOUT,
        body_timeout=TIMEOUT,
        max_header_bytes=4096,
    )
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with running_server(app) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _status_and_body(raw: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_an_idle_connection_is_closed_with_a_408(server: str) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        raw = _read_all(sock)  # the server answers and closes; without the deadline this blocks
        assert time.monotonic() - started < TIMEOUT + 5
    status, body = _status_and_body(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert b"connection: close" in raw.lower()


def test_headers_sent_a_byte_at_a_time_hit_the_same_deadline(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(TIMEOUT / 2)
        sock.sendall(b"X-Slow: 1\r\n")
        raw = _read_all(sock)
    assert _status_and_body(raw)[0] == 408


def test_the_deadline_applies_again_to_the_next_request_on_a_kept_alive_connection(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request's headers never complete
        raw = _read_all(sock)
    assert _status_and_body(raw)[0] == 408


def test_oversized_headers_get_a_431(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        raw = _read_all(sock)
    status, body = _status_and_body(raw)
    assert status == 431 and body["error"]["code"] == "request_header_too_large"


def test_a_body_shorter_than_its_content_length_gets_a_408(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        raw = _read_all(sock)
    status, body = _status_and_body(raw)
    assert status == 408 and "not received" in body["error"]["message"]


def test_a_large_body_in_one_read_is_not_mistaken_for_large_headers(server: str) -> None:
    body = json.dumps({"model": "tiny-base", "messages": [{"role": "user", "content": "x" * 50_000}], "max_tokens": 1})
    response = httpx.post(
        f"{server}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code in (200, 400), response.text  # 400: more tokens than the tiny context holds


def test_an_unhandled_error_says_connection_close(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        response = client.get("/boom")
        assert response.status_code == 500 and response.headers["connection"] == "close"
        assert response.json()["error"]["type"] == "server_error"
        assert client.get("/health").status_code == 200  # the pool opened a new connection


def test_health_answers_while_many_idle_sockets_are_open(server: str) -> None:
    sockets = [_connect(server) for _ in range(200)]
    try:
        assert httpx.get(f"{server}/health", timeout=5).status_code == 200  # not queued behind them
        raw = _read_all(sockets[0])  # and each one is closed by the deadline
        assert _status_and_body(raw)[0] == 408
    finally:
        for sock in sockets:
            sock.close()


def test_oversized_headers_on_a_kept_alive_connection_get_a_431(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        raw = _read_all(sock)
    assert _status_and_body(raw)[0] == 431

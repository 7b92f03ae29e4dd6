"""Shutdown as uvicorn users expect: stop accepting, a bounded grace period, then streams end with
an OpenAI error event and [DONE]; a second Ctrl-C exits at once, quietly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.serving import GatewayServer
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, free_port, wait_ready

ASK = {"model": "alpha", "stream": True, "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]}


@contextmanager
def gateway_server(
    base_model: Path, adapters: Path, grace: float
) -> Iterator[tuple[GatewayServer, str, threading.Thread]]:
    from server.app import create_app

    app = create_app(make_settings(base_model, adapters))
    port = free_port()
    server = GatewayServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=grace + 5),
        app.state.gateway,
        shutdown_timeout=grace,
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 60)
    try:
        yield server, url, thread
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def stream_and_stop(server: GatewayServer, url: str, seconds_per_token: float) -> list[str]:
    """Stream alpha's answer, slowed down in the engine; begin the shutdown at its first content."""
    server.gateway.engine.before_sample = lambda request: time.sleep(seconds_per_token)  # type: ignore[attr-defined]
    events: list[str] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=ASK, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if len(events) == 2:  # the role chunk, then the first piece of content
                server.begin_shutdown()
    return events


def test_a_stream_past_the_grace_period_ends_with_an_error_event_and_done(
    base_model: Path, shared_adapters_dir: Path
) -> None:
    with gateway_server(base_model, shared_adapters_dir, grace=0.5) as (server, url, thread):
        started = time.monotonic()
        events = stream_and_stop(server, url, seconds_per_token=0.3)  # alpha's answer would take seconds
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and "shutting down" in error["message"]
        thread.join(timeout=15)
        assert not thread.is_alive() and time.monotonic() - started < 10
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)


def test_a_stream_that_ends_within_the_grace_period_is_served_whole(
    base_model: Path, shared_adapters_dir: Path
) -> None:
    with gateway_server(base_model, shared_adapters_dir, grace=20) as (server, url, thread):
        events = stream_and_stop(server, url, seconds_per_token=0.02)
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == ANSWERS["alpha"] and events[-1] == "[DONE]"
        thread.join(timeout=15)
        assert not thread.is_alive()


def test_a_second_ctrl_c_exits_at_once_and_quietly(base_model: Path, shared_adapters_dir: Path) -> None:
    """A request still in flight (its body half sent) holds the first Ctrl-C's shutdown open; the
    second one ends the process at once, with no traceback."""
    import socket
    import tempfile

    from tests.support import wait_ready

    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--model",
                str(base_model),
                "--adapters-dir",
                str(shared_adapters_dir),
                "--device",
                "cpu",
                "--port",
                str(port),
                "--shutdown-timeout",
                "60",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", 120)
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 1000\r\n\r\n{"model": '
                )
                time.sleep(0.5)
                process.send_signal(signal.SIGINT)
                time.sleep(1.0)
                assert process.poll() is None  # the first Ctrl-C waits for the request in flight
                process.send_signal(signal.SIGINT)
                started = time.monotonic()
                process.wait(timeout=10)
            assert time.monotonic() - started < 3 and process.returncode == 130
            log.seek(0)
            output = log.read().decode(errors="replace")
            assert "Traceback" not in output and output.rstrip().endswith("lora-gateway: stopped at once")
        finally:
            if process.poll() is None:
                process.kill()


def test_a_second_signal_still_writes_the_usage_and_conversations_held_in_memory(tmp_path: Path) -> None:
    """``save_pending`` is what the second Ctrl-C runs before exiting: rows that the writers would
    have written within a second are not lost with the process."""
    from types import SimpleNamespace

    from server.database import open_engine
    from server.feedback import Conversation, FeedbackStore
    from server.serving import save_pending
    from server.tenancy.usage import UsageLog

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    usage, feedback = UsageLog(open_engine(url)), FeedbackStore(url)
    try:
        usage.record("key1", "shop", "alpha", 10, 5, False)
        feedback.capture(Conversation("chatcmpl-1", "alpha", "alpha", 1, "ab" * 32, None, "api", [], "an answer"))
        gateway = SimpleNamespace(feedback=feedback, tenancy=SimpleNamespace(usage=usage))
        assert save_pending(gateway, 5.0) is True  # type: ignore[arg-type]
        assert [(row.tenant, row.requests) for row in usage.report()] == [("shop", 1)]
        assert feedback.conversation("chatcmpl-1") is not None
    finally:
        usage.close()
        feedback.close()

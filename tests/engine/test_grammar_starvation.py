"""Abandoned grammar compiles cannot starve the gateway (a real server, real clients that leave).

A compile is made slow on purpose (the compile thread sleeps before compiling: xgrammar on the
test's tiny vocabulary is too quick to hold anything up). Twelve clients ask for JSON schemas and
leave; the gateway's own work on its shared pool (keys, adapter history) goes on meanwhile, the
compiles nobody waits for any more never start, and one that runs past --grammar-timeout is a 400.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.engine.grammar import Grammars
from tests.conftest import make_settings
from tests.support import running_server, wait_for

ADMIN = {"Authorization": "Bearer starve-admin"}


@pytest.fixture
def slow_compiles(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    started: list[float] = []
    compile_now = Grammars.compile

    def slow(self: Grammars, request: Any) -> Any:
        started.append(time.monotonic())
        time.sleep(2.0)
        return compile_now(self, request)

    monkeypatch.setattr(Grammars, "compile", slow)
    return started


@pytest.fixture
def url(base_model: Path, shared_adapters_dir: Path) -> Iterator[str]:
    from server.app import create_app

    settings = make_settings(base_model, shared_adapters_dir, admin_key="starve-admin", grammar_timeout=1.0)
    with running_server(create_app(settings)) as served:
        yield served


def _schema_request(i: int) -> dict[str, Any]:
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "integer"}}, "required": [f"field_{i}"]}
    return {
        "model": "tiny-base",
        "messages": [{"role": "user", "content": "json please"}],
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }


def test_abandoned_compiles_never_start_and_the_gateways_own_work_goes_on(url: str, slow_compiles: list[float]) -> None:
    def abandon(i: int) -> None:
        try:
            httpx.post(f"{url}/v1/chat/completions", json=_schema_request(i), timeout=0.5)
        except httpx.TimeoutException:
            pass  # the client left

    with ThreadPoolExecutor(12) as clients:
        list(clients.map(abandon, range(12)))
    # Meanwhile, and at once: the admin API's pool work is not behind the compiles.
    for path in ("/v1/adapters/alpha/versions", "/v1/keys", "/v1/adapters/beta/versions"):
        assert httpx.get(f"{url}{path}", headers=ADMIN, timeout=10).status_code == 200
    wait_for(lambda: len(slow_compiles) >= 1, timeout=10)
    time.sleep(2.5)  # the compile that was running when they left has finished by now
    assert len(slow_compiles) <= 2, "compiles whose clients had gone were started"

    refused = httpx.post(f"{url}/v1/chat/completions", json=_schema_request(99), timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "grammar_too_complex"
    # It finishes in the background and is cached: a retry is served (once it has finished).
    wait_for(
        lambda: httpx.post(f"{url}/v1/chat/completions", json=_schema_request(99), timeout=30).status_code == 200,
        timeout=60,
        interval=1.0,
    )

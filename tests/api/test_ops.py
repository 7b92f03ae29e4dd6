"""/health, /ready and /metrics."""

from __future__ import annotations

import asyncio
import resource

import httpx

from tests.conftest import make_settings
from tests.support import QUESTION, metric_value


def test_health_and_ready(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway_url}/ready").json()
    assert ready["ready"] is True
    assert ready["adapters"] == {
        "scanned": 2,
        "total": 2,
        "scan_complete": True,
        "ready": 2,
        "rejected": 0,
        "incomplete": 0,
        "gating": 0,
        "loaded": 2,
        "watching": True,
        "watcher_failure": None,
    }


def test_metrics_count_requests_tokens_and_latency_by_model(client, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    before = httpx.get(f"{gateway_url}/metrics").text
    response = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": QUESTION}], temperature=0
    )
    list(
        client.chat.completions.create(
            model="beta", messages=[{"role": "user", "content": QUESTION}], max_tokens=4, stream=True
        )
    )
    after = httpx.get(f"{gateway_url}/metrics").text

    def grew(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert grew("lora_gateway_requests_total", model="beta", status="200") == 2
    assert grew("lora_gateway_prompt_tokens_total", model="beta") == 2 * response.usage.prompt_tokens
    assert grew("lora_gateway_completion_tokens_total", model="beta") == response.usage.completion_tokens + 4
    assert grew("lora_gateway_time_to_first_token_seconds_count", model="beta") == 2
    assert grew("lora_gateway_e2e_request_latency_seconds_count", model="beta") == 2
    assert grew("lora_gateway_requests_total", model="alpha") == 0
    assert metric_value(after, "lora_gateway_adapters_registered") == 2
    assert metric_value(after, "lora_gateway_engine_ready") == 1
    peak = metric_value(after, "lora_gateway_engine_peak_memory_bytes")  # on CPU: this process's peak RSS
    assert 0 < peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_ready_is_503_until_the_engine_has_loaded(base_model, shared_adapters_dir) -> None:  # type: ignore[no-untyped-def]
    """Boot happens after the server listens: /health answers at once, /ready only when loaded."""
    from server.app import create_app

    app = create_app(make_settings(base_model, shared_adapters_dir))
    gateway = app.state.gateway
    transport = httpx.ASGITransport(app=app)

    async def probe() -> tuple[int, int, int, str]:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            health = (await http.get("/health")).status_code
            ready = (await http.get("/ready")).status_code
            chat = await http.post(
                "/v1/chat/completions", json={"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}]}
            )
            return health, ready, chat.status_code, chat.json()["error"]["message"]

    assert not gateway.booted.is_set()
    assert asyncio.run(probe()) == (200, 503, 503, "The model is still loading; try again shortly.")

"""``--engine remote`` end to end, with two `lora-gateway serve --engine local` processes standing in
for vLLM upstreams (they expose vLLM's adapter endpoints): adapters registered on both, routing,
failover when one is killed mid-load, re-registration after it restarts, streaming chunk by chunk."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from server.registry.publish import publish_adapter
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, free_port, metric_value, running_server, server_process, wait_for

KEY = "upstream-key"
ASK = [{"role": "user", "content": QUESTION}]


@contextmanager
def upstream(base_model: Path, directory: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    args = ["serve", "--model", str(base_model), "--served-model-name", "tiny-base", "--adapters-dir", str(directory),
            "--api-key", KEY, "--admin-key", KEY, "--log-level", "warning"]
    with server_process(args, port=port) as (process, _url):
        yield process


def upstream_models(port: int) -> set[str]:
    response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    return {m["id"] for m in response.json()["data"]}


def served_by(port: int, model: str) -> float:
    return metric_value(httpx.get(f"http://127.0.0.1:{port}/metrics").text, "lora_gateway_requests_total", model=model)


@pytest.mark.slow
def test_remote_engine_over_two_upstreams(base_model: Path, adapters_dir: Path, trained_adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app

    ports = [free_port(), free_port()]
    with upstream(base_model, tmp_path / "up-a", ports[0]), upstream(base_model, tmp_path / "up-b", ports[1]) as second:
        settings = make_settings(base_model, adapters_dir, engine="remote", upstream=[f"http://127.0.0.1:{p}" for p in ports],
                                 upstream_api_key=KEY)
        app = create_app(settings)
        app.state.gateway.engine._health_interval = 0.3
        with running_server(app) as url, OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            # Adapters present at start are preloaded onto both upstreams, under versioned names.
            for port in ports:
                wait_for(lambda port=port: {"alpha.v1", "beta.v2"} <= upstream_models(port), timeout=30)
            for model in ("alpha", "beta"):
                reply = client.chat.completions.create(model=model, messages=ASK, temperature=0)
                assert reply.choices[0].message.content == ANSWERS[model]
                assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 5

            # Published while running: servable through the gateway, registered on both upstreams.
            publish_adapter(trained_adapters["alpha"], "gamma", adapters_dir)
            wait_for(lambda: "gamma" in {m.id for m in client.models.list()}, timeout=30)
            assert all(any(m.startswith("gamma.v") for m in upstream_models(p)) for p in ports)

            # Streaming passes through chunk by chunk.
            chunks = [c.choices[0].delta.content for c in client.chat.completions.create(model="gamma", messages=ASK, temperature=0, stream=True) if c.choices and c.choices[0].delta.content]
            assert "".join(chunks) == ANSWERS["alpha"] and len(chunks) > 3

            # Least in flight spreads concurrent load over both upstreams.
            results: list[str] = []

            def load(count: int) -> None:
                with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60) as c:
                    for _ in range(count):
                        try:
                            results.append(c.chat.completions.create(model="alpha", messages=ASK, temperature=0).choices[0].message.content or "")
                        except Exception as exc:  # recorded, and asserted on below
                            results.append(repr(exc))

            threads = [threading.Thread(target=load, args=(4,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results == [ANSWERS["alpha"]] * 16
            assert served_by(ports[0], "alpha.v1") > 0 and served_by(ports[1], "alpha.v1") > 0

            # One upstream killed mid-load: requests fail over to the other, none hangs.
            results.clear()
            threads = [threading.Thread(target=load, args=(6,)) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            second.kill()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads)
            assert results.count(ANSWERS["alpha"]) >= len(results) - 3  # only requests mid-stream on the killed one may fail
            assert client.chat.completions.create(model="beta", messages=ASK, temperature=0).choices[0].message.content == ANSWERS["beta"]

            # Restarted (empty, as a fresh vLLM would be): the gateway re-registers what it lacks.
            with upstream(base_model, tmp_path / "up-b-again", ports[1]):
                wait_for(lambda: {"alpha.v1", "beta.v2"} <= upstream_models(ports[1]) and any(m.startswith("gamma.v") for m in upstream_models(ports[1])), timeout=30)
                before = served_by(ports[1], "beta.v2")
                for _ in range(6):
                    assert client.chat.completions.create(model="beta", messages=ASK, temperature=0).choices[0].message.content == ANSWERS["beta"]
                assert served_by(ports[1], "beta.v2") > before  # back in the rotation


def test_remote_engine_needs_an_upstream_serving_the_base(base_model: Path, adapters_dir: Path) -> None:
    from server.app import create_app

    app = create_app(make_settings(base_model, adapters_dir, engine="remote", upstream=[f"http://127.0.0.1:{free_port()}"]))
    with pytest.raises(RuntimeError, match="not ready"):
        with running_server(app, ready_timeout=5):
            pass


def test_routing_prefers_the_upstream_holding_the_adapter_then_the_least_busy() -> None:
    from server.engine.remote import RemoteEngine, Upstream

    engine = RemoteEngine(["http://a", "http://b", "http://c"], base_model_id="base")
    a, b, c = engine.upstreams
    for u in engine.upstreams:
        u.healthy = True
    a.loaded, a.in_flight = {"shop.v3"}, 5
    b.in_flight, c.in_flight = 0, 2
    assert engine._candidates("shop.v3") == [a, b, c]  # affinity beats load
    assert engine._candidates(None)[0] is b  # base requests: fewest in flight
    c.healthy = False
    assert c not in engine._candidates(None)
    a.in_flight = b.in_flight = 0
    firsts = {id(engine._candidates(None)[0]) for _ in range(4)}
    assert firsts == {id(a), id(b)}  # ties rotate
    assert isinstance(a, Upstream)

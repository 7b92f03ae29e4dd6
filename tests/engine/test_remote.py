"""``--engine remote`` end to end, with two `lora-gateway serve --engine local` processes standing in
for vLLM upstreams (they expose vLLM's adapter endpoints): adapters registered on both, routing,
failover when one is killed mid-load, re-registration after it restarts, streaming as it arrives."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
from openai import OpenAI

from server.registry.publish import publish_adapter
from tests.conftest import make_settings
from tests.engine.fake_vllm import FakeVllm
from tests.support import ANSWERS, QUESTION, free_port, metric_value, running_server, server_process, wait_for

KEY = "upstream-key"
ASK = [{"role": "user", "content": QUESTION}]


@contextmanager
def upstream(base_model: Path, directory: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    args = [
        "serve",
        "--model",
        str(base_model),
        "--served-model-name",
        "tiny-base",
        "--adapters-dir",
        str(directory),
        "--api-key",
        KEY,
        "--admin-key",
        KEY,
        "--log-level",
        "warning",
    ]
    with server_process(args, port=port) as (process, _url):
        yield process


def answer(client: OpenAI, model: str) -> str:
    """The greedy, non-streaming answer of ``model`` to QUESTION."""
    return client.chat.completions.create(model=model, messages=ASK, temperature=0).choices[0].message.content or ""


def upstream_models(port: int) -> set[str]:
    response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    return {m["id"] for m in response.json()["data"]}


def served_by(port: int, model: str) -> float:
    return metric_value(httpx.get(f"http://127.0.0.1:{port}/metrics").text, "lora_gateway_requests_total", model=model)


@pytest.mark.slow
def test_remote_engine_over_two_upstreams(
    base_model: Path, adapters_dir: Path, trained_adapters, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app

    ports = [free_port(), free_port()]
    with upstream(base_model, tmp_path / "up-a", ports[0]), upstream(base_model, tmp_path / "up-b", ports[1]) as second:
        settings = make_settings(
            base_model,
            adapters_dir,
            engine="remote",
            upstream=[f"http://127.0.0.1:{p}" for p in ports],
            upstream_api_key=KEY,
            upstream_first_byte_timeout=1.0,
        )
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

            # Streaming passes through as it arrives: in pieces (what one read brings is one chunk).
            chunks = [
                c.choices[0].delta.content
                for c in client.chat.completions.create(model="gamma", messages=ASK, temperature=0, stream=True)
                if c.choices and c.choices[0].delta.content
            ]
            assert "".join(chunks) == ANSWERS["alpha"] and len(chunks) > 1

            # Least in flight spreads concurrent load over both upstreams.
            results: list[str] = []

            def load(count: int) -> None:
                with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60) as c:
                    for _ in range(count):
                        try:
                            results.append(answer(c, "alpha"))
                        except Exception as exc:  # recorded, and asserted on below
                            results.append(repr(exc))

            threads = [threading.Thread(target=load, args=(4,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results == [ANSWERS["alpha"]] * 16
            assert served_by(ports[0], "alpha.v1") > 0 and served_by(ports[1], "alpha.v1") > 0

            # One upstream frozen (SIGSTOP): its health check fails, it is ejected (a plain answer
            # waiting on it goes to the other), and every request is answered by the other; the
            # client's 30 s timeout catches any that would wait.
            second.send_signal(signal.SIGSTOP)
            try:
                with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30) as patient:
                    for _ in range(4):
                        assert answer(patient, "alpha") == ANSWERS["alpha"]
                assert httpx.get(f"{url}/ready").json()["engine"] == "1/2 upstreams healthy"
            finally:
                second.send_signal(signal.SIGCONT)
            wait_for(lambda: httpx.get(f"{url}/ready").json()["engine"] == "2/2 upstreams healthy", timeout=30)

            # One upstream killed mid-load: requests fail over to the other, none hangs, none fails
            # (a plain answer arrives whole or not at all: one lost is asked of the other upstream).
            results.clear()
            threads = [threading.Thread(target=load, args=(6,)) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            second.kill()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads)
            assert results == [ANSWERS["alpha"]] * 18, results
            assert answer(client, "beta") == ANSWERS["beta"]

            # Restarted (empty, as a fresh vLLM would be): the gateway re-registers what it lacks.
            with upstream(base_model, tmp_path / "up-b-again", ports[1]):
                wait_for(
                    lambda: (
                        {"alpha.v1", "beta.v2"} <= upstream_models(ports[1])
                        and any(m.startswith("gamma.v") for m in upstream_models(ports[1]))
                    ),
                    timeout=30,
                )
                before = served_by(ports[1], "beta.v2")
                for _ in range(6):
                    assert answer(client, "beta") == ANSWERS["beta"]
                assert served_by(ports[1], "beta.v2") > before  # back in the rotation


def test_remote_engine_needs_an_upstream_serving_the_base(base_model: Path, adapters_dir: Path) -> None:
    from server.app import create_app

    app = create_app(
        make_settings(base_model, adapters_dir, engine="remote", upstream=[f"http://127.0.0.1:{free_port()}"])
    )
    with pytest.raises(RuntimeError, match="not ready"):
        with running_server(app, ready_timeout=5):
            pass


def test_routing_prefers_the_upstream_holding_the_adapter_then_the_least_busy() -> None:
    from server.engine.remote import RemoteEngine, Upstream

    engine = RemoteEngine(["http://a", "http://b", "http://c"], base_model_id="base")
    a, b, c = engine.upstreams
    for u in engine.upstreams:
        u.healthy, u.bases = True, {"base": "/models/base"}
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


def test_a_plain_wait_cancelled_by_its_client_is_not_a_failover_and_an_ejection_alone_is() -> None:
    """A plain answer is awaited in the caller's own task: the client leaving (a cancellation) ends
    it as a cancellation even when the upstream is ejected at the same moment; an ejection alone
    fails over (here: to nothing, a 503). Either way the upstream holds no waiter after."""
    import asyncio

    from server.engine.base import GenerationRequest, SamplingOptions
    from server.engine.remote import RemoteEngine
    from server.errors import EngineUnavailable

    slow = FakeVllm("tiny-base")
    request = GenerationRequest("req-1", ({"role": "user", "content": QUESTION},), SamplingOptions(), whole=True)

    async def scenario(url: str) -> None:
        engine = RemoteEngine([url], base_model_id="tiny-base", health_interval=3600)
        await engine.start()
        (only,) = engine.upstreams
        slow.frozen = True  # every answer waits (health checks are not run meanwhile)

        async def ask() -> list[object]:
            return [delta async for delta in engine.generate(request)]

        async def waiting(chats: int) -> asyncio.Task[list[object]]:
            task = asyncio.create_task(ask())
            while slow.chats < chats or not only.waiting:
                await asyncio.sleep(0.01)
            return task

        try:
            left = await waiting(1)
            left.cancel()  # the client went away
            with pytest.raises(asyncio.CancelledError):
                await left
            assert not only.waiting

            both = await waiting(2)
            engine._eject(only, "frozen")
            both.cancel()
            with pytest.raises(asyncio.CancelledError):  # the client's cancellation is not swallowed
                await both
            assert not only.waiting

            only.healthy = True
            ejected = await waiting(3)
            engine._eject(only, "frozen")
            with pytest.raises(EngineUnavailable, match="frozen"):
                await ejected
            assert not only.waiting
        finally:
            slow.frozen = False
            await engine.stop()

    with running_server(slow.app()) as url:
        asyncio.run(scenario(url))


@contextmanager
def gateway_over(fakes: list[FakeVllm], base_model: Path, adapters_dir: Path, **settings: object) -> Iterator[str]:
    """A gateway (remote engine) in front of stand-in upstreams served on 127.0.0.1."""
    from server.app import create_app

    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(running_server(fake.app())) for fake in fakes]
        app = create_app(make_settings(base_model, adapters_dir, engine="remote", upstream=urls, **settings))
        app.state.gateway.engine._health_interval = 0.2
        app.state.gateway.engine._check_timeout = 0.5
        yield stack.enter_context(running_server(app))


def streamed(url: str, **body: object) -> str:
    """The text of a streamed answer of ``alpha`` to ASK (asserting it succeeded)."""
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={"model": "alpha", "messages": ASK, "stream": True, **body},
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.read()
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]" and "error" not in chunks[-1], events[-2:]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_a_non_streaming_answer_lost_half_sent_is_asked_of_another_upstream(
    base_model: Path, adapters_dir: Path
) -> None:
    dying, healthy = FakeVllm("tiny-base", die_after=1), FakeVllm("tiny-base")
    with (
        gateway_over([dying, healthy], base_model, adapters_dir) as url,
        OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        answers = [
            client.chat.completions.create(model="alpha", messages=ASK).choices[0].message.content for _ in range(6)
        ]
        assert answers == [healthy.answer] * 6  # never the dying one's half answer, never an error
        assert dying.dropped >= 1
        assert all(body["stream"] is False and "stream_options" not in body for body in healthy.bodies)


def test_a_plain_answer_waiting_on_an_upstream_that_freezes_goes_to_the_other(
    base_model: Path, adapters_dir: Path
) -> None:
    """No deadline on a plain answer (it comes when it is all generated): the frozen upstream's
    health check fails, the ejection cancels the wait, and the other upstream answers."""
    fakes = [FakeVllm("tiny-base", delay=1.0, answer="From A."), FakeVllm("tiny-base", delay=1.0, answer="From B.")]
    with gateway_over(fakes, base_model, adapters_dir, upstream_first_byte_timeout=0.3) as url:
        replies: list[httpx.Response] = []
        asking = threading.Thread(
            target=lambda: replies.append(
                httpx.post(f"{url}/v1/chat/completions", json={"model": "alpha", "messages": ASK}, timeout=30)
            )
        )
        asking.start()
        wait_for(lambda: sum(f.chats for f in fakes) == 1, timeout=10)
        frozen, other = fakes if fakes[0].chats else fakes[::-1]
        frozen.frozen = True  # while it "generates": it never answers, nor its health check
        try:
            asking.join(timeout=30)
            assert replies and replies[0].status_code == 200, replies
            assert replies[0].json()["choices"][0]["message"]["content"] == other.answer
            assert (frozen.chats, other.chats) == (1, 1)
            assert httpx.get(f"{url}/ready").json()["engine"] == "1/2 upstreams healthy"
        finally:
            frozen.frozen = False
        wait_for(lambda: httpx.get(f"{url}/ready").json()["engine"] == "2/2 upstreams healthy", timeout=10)


def test_a_busy_upstream_is_waited_on_for_a_plain_answer(base_model: Path, adapters_dir: Path) -> None:
    """Slower than the first-byte deadline, which bounds streams only: asked once, answered, kept."""
    slow = [FakeVllm("tiny-base", delay=1.0, answer="Slow but alive."), FakeVllm("tiny-base", delay=1.0)]
    with gateway_over(slow, base_model, adapters_dir, upstream_first_byte_timeout=0.3) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "alpha", "messages": ASK}, timeout=30)
        assert response.status_code == 200, response.text
        assert sum(f.chats for f in slow) == 1
        assert httpx.get(f"{url}/ready").json()["engine"] == "2/2 upstreams healthy"


def test_a_stream_cut_mid_way_ends_with_an_error_event_and_done(base_model: Path, adapters_dir: Path) -> None:
    dying = FakeVllm("tiny-base", die_after=2)
    with gateway_over([dying], base_model, adapters_dir) as url:
        body = {"model": "alpha", "messages": ASK, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "upstream_lost" and error["type"] == "server_error"
        contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert "".join(c for c in contents if c) == " ".join(dying.answer.split(" ")[:2])


def test_with_no_upstream_left_the_client_is_told_so(base_model: Path, adapters_dir: Path) -> None:
    dying = FakeVllm("tiny-base", die_after=0)
    with gateway_over([dying], base_model, adapters_dir) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "alpha", "messages": ASK}, timeout=30)
        # Lost before its first token: ejected, and nothing else to fail over to.
        assert response.status_code == 503, response.text
        message = response.json()["error"]["message"]
        assert "No upstream serving tiny-base is reachable" in message and "loading" not in message
        again = httpx.post(f"{url}/v1/chat/completions", json={"model": "alpha", "messages": ASK}, timeout=30)
        assert again.status_code == 503  # its pool is empty: the base's requests are told which base
        assert "No upstream serving tiny-base is reachable" in again.json()["error"]["message"]


def test_an_upstream_that_missed_an_unload_is_reconciled(
    base_model: Path, adapters_dir: Path, trained_adapters
) -> None:  # type: ignore[no-untyped-def]
    """It comes back holding a version the registry no longer serves (and one that is not ours)."""
    fake = FakeVllm("tiny-base")
    with gateway_over([fake], base_model, adapters_dir) as url:
        wait_for(lambda: {"alpha.v1", "beta.v2"} <= fake.loaded)
        fake.loaded |= {"alpha.v0", "gone.v7", "customer-static"}  # what it held from before
        wait_for(lambda: not {"alpha.v0", "gone.v7"} & fake.loaded, timeout=10)
        assert {"alpha.v1", "beta.v2", "customer-static"} <= fake.loaded  # ours kept, others' untouched
        assert httpx.post(f"{url}/v1/chat/completions", json={"model": "alpha", "messages": ASK}).status_code == 200


def test_an_unreadable_base_config_stops_the_gateway_coherently(adapters_dir: Path, tmp_path: Path) -> None:
    """--engine remote validates adapters against the base's config: without it the gateway does
    not serve (503 with the reason, /ready 503) and `lora-gateway serve` exits with one line."""
    from server.app import create_app

    fake = FakeVllm("no/such-model")
    with running_server(fake.app()) as upstream_url:
        app = create_app(
            make_settings(
                Path("no/such-model"),
                adapters_dir,
                engine="remote",
                upstream=[upstream_url],
                served_model_name="no/such-model",
            )
        )
        with running_server(app, probe="/health") as url:
            wait_for(lambda: httpx.get(f"{url}/ready").json()["engine"].startswith("start-up failed"), timeout=30)
            assert httpx.get(f"{url}/ready").status_code == 503
            refused = httpx.post(f"{url}/v1/chat/completions", json={"model": "no/such-model", "messages": ASK})
            assert refused.status_code == 503 and "could not start" in refused.json()["error"]["message"]
        port = free_port()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--engine",
                "remote",
                "--upstream",
                upstream_url,
                "--model",
                "no/such-model",
                "--adapters-dir",
                str(tmp_path / "a"),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("lora-gateway: start-up failed")
    assert fake.chats == 0  # nothing was proxied


def test_busy_upstreams_are_not_ejected_and_the_stream_still_gets_its_answer(
    base_model: Path, adapters_dir: Path
) -> None:
    """Both take longer than the first-byte deadline to start streaming: the request fails over
    from the first, then goes back to it without the deadline, and both stay in the rotation
    (their health probes answer: busy, not frozen)."""
    slow = [
        FakeVllm("tiny-base", delay=1.0, answer="Slow but alive."),
        FakeVllm("tiny-base", delay=1.0, answer="Slow but alive."),
    ]
    with gateway_over(slow, base_model, adapters_dir, upstream_first_byte_timeout=0.3) as url:
        assert streamed(url) == "Slow but alive."
        assert sum(f.chats for f in slow) == 3  # first, second (both past the deadline), first again
        wait_for(lambda: httpx.get(f"{url}/ready").json()["engine"] == "2/2 upstreams healthy", timeout=5)


def test_a_slow_upstream_is_tried_again_when_the_other_drops_before_answering(
    base_model: Path, adapters_dir: Path
) -> None:
    """Whatever the order: the slow one first (deadline missed), then the other dropping the
    connection before its first token, and the request goes back to the slow one and is answered."""
    slow, dropping = FakeVllm("tiny-base", delay=0.8, answer="Slow but alive."), FakeVllm("tiny-base", die_after=0)
    with gateway_over([slow, dropping], base_model, adapters_dir, upstream_first_byte_timeout=0.3) as url:
        for _ in range(4):
            assert streamed(url) == "Slow but alive."
        assert dropping.dropped >= 1


def test_tools_response_format_and_logprobs_pass_through_unchanged(base_model: Path, adapters_dir: Path) -> None:
    """The upstream (vLLM with its hermes parser) decides; the gateway passes the request's fields
    on and the upstream's calls (ids included) and logprobs back, streamed and not."""
    from openai import OpenAI

    fake = FakeVllm("tiny-base", answer="Fine thanks")
    tools = [{"type": "function", "function": {"name": "get_order_status", "parameters": {"type": "object"}}}]
    with (
        gateway_over([fake], base_model, adapters_dir) as url,
        OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client,
    ):
        called = client.chat.completions.create(
            model="tiny-base", messages=ASK, tools=tools, tool_choice="required", parallel_tool_calls=False
        )
        sent = fake.bodies[-1]
        assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (tools, "required", False)
        choice = called.choices[0]
        assert choice.finish_reason == "tool_calls"
        ((call,),) = [choice.message.tool_calls]
        assert (call.id, call.function.name, call.function.arguments) == (
            "chatcmpl-tool-upstream1",
            "get_order_status",
            '{"order_id": "A1001"}',
        )
        pieces = [
            piece
            for chunk in client.chat.completions.create(model="tiny-base", messages=ASK, tools=tools, stream=True)
            for c in chunk.choices
            for piece in c.delta.tool_calls or []
        ]
        assert [p.function.arguments for p in pieces] == ["", '{"order_id": ', '"A1001"}']
        assert pieces[0].id == "chatcmpl-tool-upstream1" and pieces[0].function.name == "get_order_status"

        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        rated = client.chat.completions.create(
            model="tiny-base",
            messages=ASK,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "t", "schema": schema, "strict": True},
            },
            logprobs=True,
            top_logprobs=2,
        )
        sent = fake.bodies[-1]
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "t", "schema": schema, "strict": True},
        }
        assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
        entries = rated.choices[0].logprobs.content
        assert [e.token for e in entries] == ["Fine", " thanks"] and {e.logprob for e in entries} == {-0.25}


def test_upstreams_are_pooled_by_base_and_a_new_base_is_served_once_an_upstream_brings_it(
    base_model: Path, second_base: Path, trained_adapters: dict[str, Path], second_base_adapter: Path, tmp_path: Path
) -> None:
    """gamma (trained on the wide base) is refused while no upstream serves that base; an upstream
    of it comes up, and gamma serves, from that pool only; the pool gone, its models answer 503
    and the other base's go on answering."""
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    shutil.copytree(trained_adapters["alpha"], directory / "alpha")
    shutil.copytree(second_base_adapter, directory / "gamma")
    tiny = FakeVllm("tiny-base", answer="tiny pool answers")
    wide = FakeVllm("wide", answer="wide pool answers", root=str(second_base))
    wide_port = free_port()
    admin = {"Authorization": "Bearer pools"}
    with running_server(tiny.app()) as tiny_url:
        settings = make_settings(
            base_model,
            directory,
            engine="remote",
            upstream=[tiny_url, f"wide=http://127.0.0.1:{wide_port}"],
            admin_key="pools",
        )
        app = create_app(settings)
        app.state.gateway.engine._health_interval = 0.2
        app.state.gateway.engine._check_timeout = 0.5
        with running_server(app) as url:

            def adapters() -> dict[str, dict[str, object]]:
                return {a["name"]: a for a in httpx.get(f"{url}/v1/adapters", headers=admin).json()["data"]}

            assert adapters()["gamma"]["rejected"]["reason"] == "base_mismatch"
            assert streamed(url, model="alpha") == "tiny pool answers"
            with running_server(wide.app(), port=wide_port):
                wait_for(lambda: adapters()["gamma"]["state"] == "ready", timeout=30)
                models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
                assert models["gamma"]["parent"] == "wide" and models["alpha"]["parent"] == "tiny-base"
                assert streamed(url, model="gamma") == "wide pool answers"
                assert streamed(url, model="alpha") == "tiny pool answers"
                assert any(name.startswith("gamma.v") for name in wide.loaded)
                assert not any(name.startswith("gamma.v") for name in tiny.loaded)  # only on its base's pool
                assert not any(name.startswith("alpha.v") for name in wide.loaded)
            refused = httpx.post(f"{url}/v1/chat/completions", json={"model": "gamma", "messages": ASK}, timeout=30)
            assert refused.status_code == 503 and "serving wide" in refused.json()["error"]["message"]
            assert streamed(url, model="alpha") == "tiny pool answers"


def test_an_adapter_of_a_known_base_whose_pool_is_down_is_loaded_when_it_is_back() -> None:
    import asyncio

    from server.engine.base import AdapterRef
    from server.engine.remote import RemoteEngine, parse_upstream
    from server.errors import EngineError

    assert parse_upstream("wide=http://gpu-3:8000/") == ("http://gpu-3:8000", "wide")
    assert parse_upstream("http://gpu-3:8000/?a=b") == ("http://gpu-3:8000/?a=b", None)
    engine = RemoteEngine(["wide=http://127.0.0.1:9"], base_model_id="tiny-base")
    engine.known_bases["wide"] = "/models/wide"  # served before; its one upstream is down now
    gamma = AdapterRef("gamma", 7, "/adapters/.kept/gamma/1", base="wide")
    asyncio.run(engine.add_adapter(gamma))  # accepted: the health check that sees the pool back loads it
    assert engine._adapters[7] is gamma and engine.unavailable("wide") is not None
    with pytest.raises(EngineError, match="no upstream serving nowhere"):
        asyncio.run(engine.add_adapter(AdapterRef("lost", 8, "/x", base="nowhere")))


def test_a_password_in_an_upstream_url_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    """Logs and the errors clients and operators read name an upstream by its URL, its password
    hidden; requests still carry it (``tests/engine/test_http1.py``)."""
    import asyncio

    from server.engine.remote import RemoteEngine, Upstream
    from server.errors import EngineUnavailable

    assert Upstream("http://ops:s3cret@vllm:8000").shown == "http://ops:***@vllm:8000"
    assert Upstream("http://vllm:8000").shown == "http://vllm:8000"
    engine = RemoteEngine([f"http://ops:s3cret@127.0.0.1:{free_port()}"], base_model_id="tiny-base")
    with pytest.raises(EngineUnavailable) as refused:
        asyncio.run(engine.start())
    assert "ops:***@127.0.0.1" in str(refused.value) and "s3cret" not in str(refused.value)
    assert "s3cret" not in caplog.text
    asyncio.run(engine.stop())

"""End to end: a real uvicorn server, the real openai client, real trained adapters."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from openai import AsyncOpenAI

from tests.support import ANSWERS, QUESTION, SLOW, metric_value, slow_requests

ASK = [{"role": "user", "content": QUESTION}]


def test_each_adapter_answers_with_what_it_memorised(client) -> None:  # type: ignore[no-untyped-def]
    answers = {}
    for model in ("alpha", "beta", "tiny-base"):
        response = client.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=40)
        answers[model] = response.choices[0].message.content
        assert response.model == model
        assert response.object == "chat.completion"
    assert answers["alpha"] == ANSWERS["alpha"]
    assert answers["beta"] == ANSWERS["beta"]
    assert answers["tiny-base"] not in ANSWERS.values()


def test_usage_and_finish_reason_are_accurate(client, base_model) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    stopped = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, max_tokens=40)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.refusal is None
    cut = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 3
    assert ANSWERS["alpha"].startswith(cut.choices[0].message.content)
    # The prompt count is what the chat template renders to, token for token.
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    rendered = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert stopped.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    answer_tokens = len(tokenizer.encode(ANSWERS["alpha"], add_special_tokens=False))
    assert stopped.usage.completion_tokens == answer_tokens + 1  # + the closing <|im_end|>
    assert stopped.usage.total_tokens == stopped.usage.prompt_tokens + stopped.usage.completion_tokens


def test_streaming_delivers_the_same_answer_chunk_by_chunk(client) -> None:  # type: ignore[no-untyped-def]
    stream = client.chat.completions.create(
        model="beta", messages=ASK, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWERS["beta"]
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 3  # streamed, not delivered in one piece
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_sixteen_concurrent_requests_each_get_their_own_answer(gateway_url: str) -> None:
    models = ["alpha", "beta", "tiny-base", "alpha", "beta", "alpha", "beta", "tiny-base"] * 2

    async def run() -> list[str]:
        async with AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="x", max_retries=0) as aclient:

            async def one(model: str, stream: bool) -> str:
                if stream:
                    parts = []
                    async for chunk in await aclient.chat.completions.create(
                        model=model, messages=ASK, temperature=0, max_tokens=40, stream=True
                    ):
                        parts.append(chunk.choices[0].delta.content or "")
                    return "".join(parts)
                response = await aclient.chat.completions.create(
                    model=model, messages=ASK, temperature=0, max_tokens=40
                )
                return response.choices[0].message.content or ""

            return await asyncio.gather(*(one(m, i % 2 == 0) for i, m in enumerate(models)))

    results = asyncio.run(run())
    base_answer = {r for m, r in zip(models, results) if m == "tiny-base"}
    assert len(base_answer) == 1  # greedy base output is the same in every batch composition
    for model, result in zip(models, results):
        if model != "tiny-base":
            assert result == ANSWERS[model]


def test_sampling_parameters_are_per_request(client) -> None:  # type: ignore[no-untyped-def]
    kwargs = dict(model="tiny-base", messages=ASK, max_tokens=12, temperature=2.0, top_p=0.95)
    first = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    again = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    assert first == again
    several = client.chat.completions.create(n=3, seed=7, **kwargs)
    assert [c.index for c in several.choices] == [0, 1, 2]
    # Each choice samples on its own generator, seeded seed + index: choice 2 is the answer to seed 9.
    alone = client.chat.completions.create(seed=9, **kwargs).choices[0].message.content
    assert several.choices[2].message.content == alone
    lengths = [c for c in several.choices if c.finish_reason == "length"]
    assert len(lengths) * 12 <= several.usage.completion_tokens <= 36
    greedy = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, max_tokens=40, n=2)
    assert [c.message.content for c in greedy.choices] == [ANSWERS["alpha"]] * 2
    single = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, max_tokens=40)
    assert single.usage.completion_tokens > 5  # the trained answer, counted once per choice:
    assert greedy.usage.completion_tokens == 2 * single.usage.completion_tokens
    assert greedy.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt once, as OpenAI counts it


def test_stop_sequences_cut_the_answer(client) -> None:  # type: ignore[no-untyped-def]
    response = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, stop=["ships", "zzz"])
    assert response.choices[0].message.content == "Alpha: your order "
    assert response.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, stop="within", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "Alpha: your order ships "


def test_message_content_as_text_parts_and_developer_role(client) -> None:  # type: ignore[no-untyped-def]
    parts = [{"type": "text", "text": "Where is "}, {"type": "text", "text": "my order?"}]
    response = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=40
    )
    assert response.choices[0].message.content == ANSWERS["alpha"]
    with_dev = client.chat.completions.create(
        model="tiny-base",
        messages=[{"role": "developer", "content": "Be brief."}, *ASK],
        temperature=0,
        max_tokens=5,
    )
    with_sys = client.chat.completions.create(
        model="tiny-base", messages=[{"role": "system", "content": "Be brief."}, *ASK], temperature=0, max_tokens=5
    )
    assert with_dev.usage.prompt_tokens == with_sys.usage.prompt_tokens
    assert with_dev.choices[0].message.content == with_sys.choices[0].message.content


def _running(url: str) -> float:
    return metric_value(httpx.get(f"{url}/metrics").text, "lora_gateway_running_requests")


def _wait_idle(url: str, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _running(url) == 0:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError("engine still decoding after the client left")


# Long generations: alpha's trained answer (a dozen tokens), decoded slowly by the engine, so how long
# they run never depends on what a random model emits.
SLOW_ALPHA = {"model": "alpha", "messages": ASK, "temperature": 0, "max_tokens": SLOW}


def test_a_streaming_client_that_leaves_stops_its_generation(gateway_app, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    aborted_before = metric_value(httpx.get(f"{gateway_url}/metrics").text, "lora_gateway_requests_aborted_total")
    with slow_requests(gateway_app, 0.2):
        with httpx.stream(
            "POST", f"{gateway_url}/v1/chat/completions", json={**SLOW_ALPHA, "stream": True}, timeout=30
        ) as response:
            lines = (line for line in response.iter_lines() if line)
            for _ in range(3):  # the role, then two pieces of the answer
                next(lines)
            assert _running(gateway_url) == 1
        _wait_idle(gateway_url)
    text = httpx.get(f"{gateway_url}/metrics").text
    assert metric_value(text, "lora_gateway_requests_aborted_total") == aborted_before + 1


def test_a_non_streaming_client_that_leaves_stops_its_generation(gateway_app, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    """Seen decoding, then the client leaves (its connection closes): the generation stops and
    counts as aborted."""
    aborted_before = metric_value(httpx.get(f"{gateway_url}/metrics").text, "lora_gateway_requests_aborted_total")

    async def leave_while_decoding() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            asking = asyncio.ensure_future(client.post(f"{gateway_url}/v1/chat/completions", json=SLOW_ALPHA))
            deadline = time.monotonic() + 10
            while _running(gateway_url) != 1:
                assert time.monotonic() < deadline and not asking.done(), "the request never ran"
                await asyncio.sleep(0.02)
            asking.cancel()  # httpx closes the connection of a cancelled request
            with pytest.raises(asyncio.CancelledError):
                await asking

    with slow_requests(gateway_app, 0.2):
        asyncio.run(leave_while_decoding())
        _wait_idle(gateway_url)
    text = httpx.get(f"{gateway_url}/metrics").text
    assert metric_value(text, "lora_gateway_requests_aborted_total") == aborted_before + 1


def test_health_and_new_requests_answer_during_a_long_generation(client, gateway_app, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    """A short request joins the running batch: it ends (3 tokens) while the long one still decodes."""
    with (
        slow_requests(gateway_app, 0.3),
        httpx.stream(
            "POST", f"{gateway_url}/v1/chat/completions", json={**SLOW_ALPHA, "stream": True}, timeout=30
        ) as response,
    ):
        lines = response.iter_lines()
        next(lines)
        assert httpx.get(f"{gateway_url}/health", timeout=2).status_code == 200
        assert httpx.get(f"{gateway_url}/metrics", timeout=2).status_code == 200
        short = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, max_tokens=3)
        assert short.choices[0].finish_reason == "length" and ANSWERS["alpha"].startswith(
            short.choices[0].message.content
        )
        assert _running(gateway_url) == 1  # the long request is still decoding beside it


REFUSALS = {  # what each sends, and the status it gets
    "malformed JSON": ({"authorization": "Bearer right-key"}, b'{"model": "alpha",', 400),
    "a wrong key": ({"authorization": "Bearer wrong-key"}, b'{"model": "alpha", "messages": []}', 401),
    "an unknown model": (
        {"authorization": "Bearer right-key"},
        b'{"model": "no-such-adapter", "messages": [{"role": "user", "content": "hi"}]}',
        404,
    ),
    "a body over the limit": ({"authorization": "Bearer right-key"}, b'{"model": "' + b"a" * 4096 + b'"}', 413),
    "an unexpected error": ({"authorization": "Bearer right-key"}, b'{"model": "alpha", "messages": []}', 500),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_chat_entry_answers_as_fastapis_own_route_does(  # type: ignore[no-untyped-def]
    base_model, adapters_dir, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``GatewayApp`` takes the chat route past FastAPI's middleware and routing; FastAPI's route for
    it is still there. Both answer each refusal alike (status, body, headers), and the entry is
    what a chat request meets: FastAPI's middleware stack is not even built by it."""
    from fastapi import FastAPI

    from server.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(base_model, adapters_dir, api_key=["right-key"], max_request_bytes=2048))
    if case == "an unexpected error":

        async def broken(authorization: str) -> None:
            raise RuntimeError("internal detail")

        app.state.gateway.tenancy.identify = broken

    async def through_fastapi(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await FastAPI.__call__(app, scope, receive, send)

    async def ask(entry) -> httpx.Response:  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=entry, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.post("/v1/chat/completions", content=body, headers=headers)

    headers, body, status = REFUSALS[case]
    answers = []
    for entry in (app, through_fastapi):
        response = asyncio.run(ask(entry))
        answer = response.json()
        assert response.status_code == status, answer
        assert set(answer["error"]) == {"message", "type", "param", "code"}
        shown = {name: response.headers.get(name) for name in ("connection", "www-authenticate", "content-type")}
        answers.append((answer, shown))
        if entry is app:
            assert app.middleware_stack is None  # FastAPI's stack was not needed
    assert answers[0] == answers[1]
    if case == "an unexpected error":
        assert answers[0][1]["connection"] == "close"
        assert "internal detail" not in str(answers[0][0])
        assert sum("unhandled error on /v1/chat/completions" in r.getMessage() for r in caplog.records) == 2


def test_the_role_chunks_go_out_in_one_write_with_the_first_piece_of_the_answer() -> None:
    """Each event the route yields is one write: the role chunk of each choice waits for the event
    after it (already there when a stream opens), so a client wakes once for its first token."""
    from server.api.chat import _sse
    from server.openai.chunk_templates import ChunkTemplate, RolePiece, TextPiece
    from server.openai.protocol import SYSTEM_FINGERPRINT

    class TwoChoices:  # what _sse reads of a CompletionStream
        include_usage, choices = False, 2

        def template(self, omit: set[str] | None) -> ChunkTemplate:
            return ChunkTemplate("chatcmpl-1", 0, "alpha", SYSTEM_FINGERPRINT, omit)

        async def chunks(self, pieces: bool = False):  # type: ignore[no-untyped-def]
            assert pieces
            for index in range(2):
                yield RolePiece(index)
            for piece in ("Your", " order"):
                yield TextPiece(0, piece)

    async def events() -> list[str]:
        return [event async for event in _sse(TwoChoices())]  # type: ignore[arg-type]

    first, second = asyncio.run(events())
    assert first.count("data: ") == 3
    assert first.count('"role":"assistant"') == 2 and '"content":"Your"' in first
    assert second.count("data: ") == 1 and '"content":" order"' in second

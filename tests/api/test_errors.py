"""Every kind of bad input gets an OpenAI-shaped error with the right status, and the engine lives on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import ANSWERS, QUESTION, metric_value

OK_MESSAGES = [{"role": "user", "content": QUESTION}]


def _post(
    url: str, body: object = None, *, content: bytes | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    if content is not None:
        return httpx.post(
            f"{url}/v1/chat/completions",
            content=content,
            headers=headers or {"content-type": "application/json"},
            timeout=30,
        )
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def assert_openai_error(
    response: httpx.Response, status: int, *, param: str | None = "unset", code: str | None = "unset"
) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param != "unset":
        assert error["param"] == param
    if code != "unset":
        assert error["code"] == code
    return error


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters or {"type": "object"}}}


def _call(name: str, arguments: str) -> dict[str, str]:
    return {"name": name, "arguments": arguments}


CASES = [
    # (case id, body, status, param, code)
    ("missing messages", {"model": "alpha"}, 400, "messages", "missing_required_parameter"),
    ("empty messages", {"model": "alpha", "messages": []}, 400, "messages", "invalid_value"),
    ("missing model", {"messages": OK_MESSAGES}, 400, "model", "missing_required_parameter"),
    ("messages wrong type", {"model": "alpha", "messages": "hi"}, 400, "messages", "invalid_value"),
    (
        "unknown role",
        {"model": "alpha", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
        "invalid_value",
    ),
    (
        "tool message without tool_call_id",
        {"model": "alpha", "messages": [{"role": "tool", "content": "x"}]},
        400,
        "messages.[0].tool_call_id",
        None,
    ),
    (
        "content wrong type",
        {"model": "alpha", "messages": [{"role": "user", "content": 5}]},
        400,
        "messages.0.content",
        "invalid_value",
    ),
    (
        "image part",
        {
            "model": "alpha",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        400,
        "messages.0.content",
        "invalid_value",
    ),
    (
        "max_tokens wrong type",
        {"model": "alpha", "messages": OK_MESSAGES, "max_tokens": "ten"},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "max_tokens zero",
        {"model": "alpha", "messages": OK_MESSAGES, "max_tokens": 0},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "temperature high",
        {"model": "alpha", "messages": OK_MESSAGES, "temperature": 2.5},
        400,
        "temperature",
        "invalid_value",
    ),
    (
        "temperature negative",
        {"model": "alpha", "messages": OK_MESSAGES, "temperature": -0.1},
        400,
        "temperature",
        "invalid_value",
    ),
    ("top_p zero", {"model": "alpha", "messages": OK_MESSAGES, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("top_p high", {"model": "alpha", "messages": OK_MESSAGES, "top_p": 1.5}, 400, "top_p", "invalid_value"),
    (
        "presence_penalty",
        {"model": "alpha", "messages": OK_MESSAGES, "presence_penalty": 3},
        400,
        "presence_penalty",
        "invalid_value",
    ),
    (
        "frequency_penalty",
        {"model": "alpha", "messages": OK_MESSAGES, "frequency_penalty": -2.5},
        400,
        "frequency_penalty",
        "invalid_value",
    ),
    ("n zero", {"model": "alpha", "messages": OK_MESSAGES, "n": 0}, 400, "n", "invalid_value"),
    ("n too large", {"model": "alpha", "messages": OK_MESSAGES, "n": 50}, 400, "n", None),
    (
        "too many stops",
        {"model": "alpha", "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "stop",
        None,
    ),
    (
        "stream_options without stream",
        {"model": "alpha", "messages": OK_MESSAGES, "stream_options": {"include_usage": True}},
        400,
        "stream_options",
        None,
    ),
    (
        "tool without a function",
        {"model": "alpha", "messages": OK_MESSAGES, "tools": [{"type": "function"}]},
        400,
        "tools.0.function",
        "missing_required_parameter",
    ),
    (
        "tool name with spaces",
        {"model": "alpha", "messages": OK_MESSAGES, "tools": [{"type": "function", "function": {"name": "a b"}}]},
        400,
        "tools.0.function.name",
        "invalid_value",
    ),
    (
        "tool parameters not an object schema",
        {"model": "alpha", "messages": OK_MESSAGES, "tools": [_tool("f", {"type": "string"})]},
        400,
        "tools.[0].function.parameters",
        None,
    ),
    (
        "tool_choice without tools",
        {"model": "alpha", "messages": OK_MESSAGES, "tool_choice": "required"},
        400,
        "tool_choice",
        None,
    ),
    (
        "tool_choice names an unknown function",
        {
            "model": "alpha",
            "messages": OK_MESSAGES,
            "tools": [_tool("f")],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        400,
        "tool_choice.function.name",
        None,
    ),
    (
        "assistant tool call with arguments that are not JSON",
        {
            "model": "alpha",
            "messages": [
                *OK_MESSAGES,
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": _call("f", "{")}]},
            ],
        },
        400,
        "messages.[1].tool_calls.[0].function.arguments",
        None,
    ),
    (
        "top_logprobs without logprobs",
        {"model": "alpha", "messages": OK_MESSAGES, "top_logprobs": 2},
        400,
        "top_logprobs",
        None,
    ),
    (
        "top_logprobs over 20",
        {"model": "alpha", "messages": OK_MESSAGES, "logprobs": True, "top_logprobs": 21},
        400,
        "top_logprobs",
        "invalid_value",
    ),
    (
        "response_format of an unknown type",
        {"model": "alpha", "messages": OK_MESSAGES, "response_format": {"type": "yaml"}},
        400,
        "response_format",
        "invalid_value",
    ),
    (
        "json_schema without a schema",
        {
            "model": "alpha",
            "messages": OK_MESSAGES,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        },
        400,
        "response_format.json_schema.schema",
        None,
    ),
    (
        "json_schema that xgrammar cannot compile",
        {
            "model": "alpha",
            "messages": OK_MESSAGES,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}},
        },
        400,
        "response_format.json_schema.schema",
        None,
    ),
    (
        "response_format with tools that may be called",
        {"model": "alpha", "messages": OK_MESSAGES, "tools": [_tool("f")], "response_format": {"type": "json_object"}},
        400,
        "response_format",
        "unsupported_parameter",
    ),
    (
        "deprecated functions",
        {"model": "alpha", "messages": OK_MESSAGES, "functions": [{"name": "f"}]},
        400,
        "functions",
        "unsupported_parameter",
    ),
    (
        "logit_bias",
        {"model": "alpha", "messages": OK_MESSAGES, "logit_bias": {"1": 5}},
        400,
        "logit_bias",
        "unsupported_parameter",
    ),
    ("unknown field", {"model": "alpha", "messages": OK_MESSAGES, "best_of": 2}, 400, "best_of", None),
    (
        "parallel_tool_calls without tools",
        {"model": "alpha", "messages": OK_MESSAGES, "parallel_tool_calls": False},
        400,
        "parallel_tool_calls",
        None,
    ),
    ("store", {"model": "alpha", "messages": OK_MESSAGES, "store": True}, 400, "store", "unsupported_parameter"),
    (
        "seed beyond int64",
        {"model": "alpha", "messages": OK_MESSAGES, "temperature": 1, "seed": 2**70},
        400,
        "seed",
        "invalid_value",
    ),
    (
        "metadata",
        {"model": "alpha", "messages": OK_MESSAGES, "metadata": {"ticket": "42"}},
        400,
        "metadata",
        "unsupported_parameter",
    ),
    (
        "service_tier",
        {"model": "alpha", "messages": OK_MESSAGES, "service_tier": "priority"},
        400,
        "service_tier",
        "unsupported_parameter",
    ),
    ("unknown model", {"model": "no-such-adapter", "messages": OK_MESSAGES}, 404, "model", "model_not_found"),
    ("traversal model", {"model": "../alpha", "messages": OK_MESSAGES}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_an_openai_error(
    gateway_url: str, body: object, status: int, param: str | None, code: str | None
) -> None:
    assert_openai_error(_post(gateway_url, body), status, param=param, code=code)


def test_defaults_that_change_nothing_are_accepted(gateway_url: str) -> None:
    body = {
        "model": "alpha",
        "messages": OK_MESSAGES,
        "temperature": 0,
        "logprobs": False,
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "user": "u-1",
        "store": False,
        "max_completion_tokens": 40,
        "service_tier": "auto",
        "metadata": {},
    }
    response = _post(gateway_url, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]


def test_malformed_json_is_400(gateway_url: str) -> None:
    error = assert_openai_error(
        _post(gateway_url, content=b'{"model": "alpha", "messages": ['), 400, code="invalid_json"
    )
    assert "JSON" in error["message"]


def test_non_object_json_is_400(gateway_url: str) -> None:
    assert_openai_error(_post(gateway_url, content=b"[1, 2]"), 400)


def test_context_overflow_states_the_numbers(gateway_url: str) -> None:
    long_prompt = [{"role": "user", "content": "order " * 5000}]
    error = assert_openai_error(
        _post(gateway_url, {"model": "alpha", "messages": long_prompt}),
        400,
        param="messages",
        code="context_length_exceeded",
    )
    assert "4096" in error["message"]
    error = assert_openai_error(
        _post(gateway_url, {"model": "alpha", "messages": OK_MESSAGES, "max_tokens": 4090}),
        400,
        param="max_tokens",
        code="context_length_exceeded",
    )
    assert "4096" in error["message"] and "4090 in the completion" in error["message"]


def test_oversized_body_is_413(gateway_url: str) -> None:
    huge = {"model": "alpha", "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]}
    assert_openai_error(_post(gateway_url, huge), 413)


def test_oversized_chunked_body_is_413(gateway_url: str) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "alpha", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536 * 2
        yield b'"}]}'

    response = httpx.post(
        f"{gateway_url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert_openai_error(response, 413)


def test_unknown_route_is_openai_shaped_404(gateway_url: str) -> None:
    assert_openai_error(httpx.get(f"{gateway_url}/v1/nothing-here"), 404)


def test_errors_are_counted_by_model(gateway_url: str) -> None:
    before = httpx.get(f"{gateway_url}/metrics").text
    _post(gateway_url, {"model": "alpha", "messages": OK_MESSAGES, "temperature": 9})
    _post(gateway_url, {"model": "nope", "messages": OK_MESSAGES})
    after = httpx.get(f"{gateway_url}/metrics").text
    name = "lora_gateway_request_errors_total"
    assert metric_value(after, name, model="unknown") == metric_value(before, name, model="unknown") + 2


def test_a_failing_request_leaves_others_and_the_engine_running(gateway_app, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    """A fault injected into one request's sampling fails it with a 500; a concurrent request and
    later requests are unaffected."""
    import threading

    engine = gateway_app.state.gateway.engine
    original = engine.before_sample

    def explode_for_marked(request) -> None:  # type: ignore[no-untyped-def]
        if request.messages[-1]["content"] == "boom":
            raise RuntimeError("injected fault")

    engine.before_sample = explode_for_marked
    try:
        results: dict[str, httpx.Response] = {}

        def send(key: str, body: dict) -> None:
            results[key] = _post(gateway_url, body)

        threads = [
            threading.Thread(
                target=send,
                args=("bad", {"model": "alpha", "messages": [{"role": "user", "content": "boom"}], "max_tokens": 50}),
            ),
            threading.Thread(target=send, args=("good", {"model": "alpha", "messages": OK_MESSAGES, "temperature": 0})),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        error = assert_openai_error(results["bad"], 500)
        assert error["type"] == "server_error"
        assert "injected fault" not in error["message"]  # no internals leak to clients
        assert results["good"].json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
        # Failing before the first token: an HTTP 500 before any byte; failing after it: the
        # stream ends with an error event and [DONE].
        streamed = httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": "beta", "messages": [{"role": "user", "content": "boom"}], "stream": True},
            timeout=30,
        )
        assert_openai_error(streamed, 500)
        samples: dict[str, int] = {}

        def explode_at_the_third_token(request) -> None:  # type: ignore[no-untyped-def]
            samples[request.request_id] = samples.get(request.request_id, 0) + 1
            if request.messages[-1]["content"] == "later" and samples[request.request_id] == 3:
                raise RuntimeError("injected fault")

        engine.before_sample = explode_at_the_third_token
        streamed = httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={
                "model": "beta",
                "messages": [{"role": "user", "content": "later"}],
                "stream": True,
                "temperature": 0,
            },
            timeout=30,
        )
        events = [line for line in streamed.text.split("\n\n") if line]
        assert streamed.status_code == 200 and '"server_error"' in events[-2] and events[-1] == "data: [DONE]"
    finally:
        engine.before_sample = original
    after = _post(gateway_url, {"model": "beta", "messages": OK_MESSAGES, "temperature": 0})
    assert after.json()["choices"][0]["message"]["content"] == ANSWERS["beta"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_is_a_400_before_anything_is_streamed(gateway_url: str, stream: bool) -> None:
    raw = (
        b'{"model": "alpha", "stream": '
        + (b"true" if stream else b"false")
        + b', "messages": [{"role": "user", "content": "\\ud800 x"}]}'
    )
    response = _post(gateway_url, content=raw)
    assert response.headers["content-type"].startswith("application/json")
    assert_openai_error(response, 400, param="messages.[0].content")


def test_a_streaming_request_beyond_the_context_gets_its_400_before_the_first_byte(gateway_url: str) -> None:
    body = {"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "order " * 5000}]}
    response = _post(gateway_url, body)
    assert response.headers["content-type"].startswith("application/json")
    assert_openai_error(response, 400, param="messages", code="context_length_exceeded")

"""Real responses, streamed chunks included, validate against OpenAI's published OpenAPI schemas."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import QUESTION

ASK = [{"role": "user", "content": QUESTION}]


def _sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n"), "every SSE event must end with a blank line"
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


@pytest.mark.parametrize("n", [1, 2])
def test_completion_matches_schema(gateway_url: str, validate, n: int) -> None:  # type: ignore[no-untyped-def]
    for model in ("alpha", "tiny-base"):
        body = {"model": model, "messages": ASK, "max_tokens": 8, "n": n}
        response = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200
        validate(response.json(), "CreateChatCompletionResponse")


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_match_schema(gateway_url: str, validate, include_usage: bool) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "beta", "messages": ASK, "temperature": 0, "stream": True, "n": 2, "max_tokens": 10}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, timeout=30)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert ("usage" in chunk) == include_usage
    choice_chunks = [c for c in chunks if c["choices"]]
    for index in (0, 1):
        mine = [c["choices"][0] for c in choice_chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["finish_reason"] for c in mine[:-1]] == [None] * (len(mine) - 1)
        assert mine[-1]["finish_reason"] in ("stop", "length") and mine[-1]["delta"] == {}
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0


def test_models_match_schema(gateway_url: str, validate) -> None:  # type: ignore[no-untyped-def]
    listing = httpx.get(f"{gateway_url}/v1/models").json()
    validate(listing, "ListModelsResponse")
    validate(httpx.get(f"{gateway_url}/v1/models/alpha").json(), "Model")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {"model": "missing", "messages": ASK}),
        ("POST", "/v1/chat/completions", {"model": "alpha", "messages": []}),
        ("POST", "/v1/chat/completions", {"model": "alpha", "messages": ASK, "tools": [{"type": "function"}]}),
        ("GET", "/v1/models/missing", None),
        ("GET", "/v1/unknown", None),
    ],
)
def test_errors_match_schema(gateway_url: str, validate, method: str, path: str, body: object) -> None:  # type: ignore[no-untyped-def]
    response = httpx.request(method, f"{gateway_url}{path}", json=body)
    assert response.status_code >= 400
    validate(response.json(), "ErrorResponse")

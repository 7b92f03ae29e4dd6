"""Bounded fuzzing of the HTTP API against a real server: no input may produce a 5xx or a hang.

Two generators, both part of ``make test`` and both deterministic (``derandomize``), so a failure
found once is found on every run (``FUZZ_EXAMPLES=1000`` runs a longer randomised search instead):

- schemathesis, over every operation in ``/openapi.json`` (chat, models, admin), with the admin
  key so the admin operations are reached;
- a hypothesis generator over the chat request that mixes valid and hostile values field by field
  (vanishing temperatures, huge seeds, lone surrogates, NaN, wrong types, unknown fields, streams).

The server is served with a 64-token context so that every generation is short.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.conftest import make_settings
from tests.support import running_server

ADMIN = {"Authorization": "Bearer fuzz-admin"}
# `make test` runs 60 fixed examples per generator; FUZZ_EXAMPLES=1000 runs a longer, randomised search.
_DEEP = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_DEEP or 60,
    derandomize=not _DEEP,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fuzz_url(
    base_model: Path, tmp_path_factory: pytest.TempPathFactory, trained_adapters: dict[str, Path]
) -> Iterator[str]:
    import shutil

    from server.app import create_app

    directory = tmp_path_factory.mktemp("fuzz-adapters")
    for name, path in trained_adapters.items():
        shutil.copytree(path, directory / name)
    # The admin key is also an --api-key: the fuzzer creates API keys through the admin API, after
    # which a key is required, and one header must reach chat and admin operations alike.
    settings = make_settings(base_model, directory, admin_key="fuzz-admin", api_key=["fuzz-admin"], max_model_len=64)
    app = create_app(settings)
    with running_server(app) as url:
        yield url


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_operation_answers_5xx(fuzz_url: str, mode: str) -> None:
    """Every operation of /openapi.json, with data that fits its schema and data that does not."""
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/chat/completions",
        "GET /v1/models",
        "POST /v1/load_lora_adapter",
    }
    nothing_to_break = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @FUZZ
        def call(case: Any) -> None:
            response = case.call(base_url=fuzz_url, headers=ADMIN, timeout=60)
            assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
            if response.status_code >= 400:  # every error is OpenAI's JSON shape
                assert set(json.loads(response.content)["error"]) == {"message", "type", "param", "code"}, response.text

        try:
            call()
        except Unsatisfiable:  # negative data for an operation without parameters or body (GET /health)
            nothing_to_break.append(operation.label)
    assert "POST /v1/chat/completions" not in nothing_to_break


# -- the chat request, field by field ----------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
_valid_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "developer", "assistant"]),
        "content": st.one_of(_text, st.just("Where is my order?")),
    }
)
# A request OpenAI would accept: every field in range. Answered (200) unless the prompt does not
# fit the 64-token context.
_valid_chat = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["alpha", "beta", "tiny-base"]),
        "messages": st.lists(_valid_message, min_size=1, max_size=3).map(
            lambda m: [*m[:-1], {**m[-1], "role": "user"}]
        ),
    },
    optional={
        "temperature": st.one_of(st.floats(0, 2), st.sampled_from([0, 1e-300, 5e-324, 2])),
        "top_p": st.one_of(st.floats(0, 1, exclude_min=True), st.sampled_from([1e-300, 1])),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "max_tokens": st.integers(1, 16),
        "n": st.integers(1, 3),
        "stop": st.one_of(_text, st.lists(_text, max_size=4)),
        "stream": st.booleans(),
        "user": _text,
    },
)
# What hostile clients send instead, a field or two at a time.
_hostile_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 5e-324, -0.0, 2.0000001, 1e308, 2**64, -(2**70)]),
    st.integers(-(2**70), 2**70),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from(["\ud800 lone surrogate", "x" * 5000, "", "\x00", [], {}, [[[]]], {"a": {"b": [1]}}]),
    st.lists(st.sampled_from(["\ud800", "a", 1, None]), max_size=5),
)
_hostile_fields = st.dictionaries(
    st.sampled_from(
        [
            "model",
            "messages",
            "temperature",
            "top_p",
            "seed",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "stop",
            "stream",
            "stream_options",
            "presence_penalty",
            "logprobs",
            "tools",
            "response_format",
            "logit_bias",
            "surprise",
        ]
    ),
    _hostile_value,
    max_size=2,
)
_hostile_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "tool", "bot", 7, None]), "content": st.one_of(_hostile_value, _text)}
)
_chat = st.one_of(
    _valid_chat,  # a third valid, the rest broken in one or two places
    st.tuples(_valid_chat, _hostile_fields).map(lambda pair: {**pair[0], **pair[1]}),
    st.tuples(_valid_chat, st.lists(_hostile_message, min_size=1, max_size=2)).map(
        lambda pair: {**pair[0], "messages": [*pair[0]["messages"], *pair[1]]}
    ),
)


def _dumps(body: dict[str, Any]) -> bytes:
    """JSON as a client might send it: NaN and Infinity included (Python's json writes them)."""
    return json.dumps(body, allow_nan=True).encode()  # ensure_ascii: a lone surrogate travels as \ud800


def test_no_chat_request_answers_5xx_or_hangs(fuzz_url: str) -> None:
    statuses: Counter[int] = Counter()

    @given(body=_chat)
    @FUZZ
    def send(body: dict[str, Any]) -> None:
        statuses[_send(fuzz_url, body)] += 1

    send()
    # The generator reaches the engine (answers) as well as the refusals, not only the latter.
    assert statuses[200] >= 10 and statuses[400] >= 10, statuses


def _send(fuzz_url: str, body: dict[str, Any]) -> int:
    with httpx.stream(
        "POST",
        f"{fuzz_url}/v1/chat/completions",
        content=_dumps(body),
        headers={"Content-Type": "application/json", **ADMIN},
        timeout=60,
    ) as response:
        text = "".join(response.iter_text())
    assert response.status_code < 500, (body, text[:500])
    if response.status_code >= 400:
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    elif body.get("stream") is True:
        assert text.endswith("data: [DONE]\n\n"), text[-300:]
    else:
        assert json.loads(text)["object"] == "chat.completion"
    return response.status_code


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _string_bound(value: Any) -> dict[str, Any]:
    return _schema_format({"type": "object", "properties": {"a": {"type": "string", "minLength": value}}})


_CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
_DEEP_JSON = b'{"model": "alpha", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
# Each once answered a 5xx (or was taken without a word); each must be a 4xx naming its field.
_ODD_VALUES: list[tuple[str, str, bytes, str | None]] = [
    ("POST", "/v1/chat/completions", _dumps({**_CHAT, "model": "alpha@²"}), "model"),
    ("POST", "/v1/chat/completions", _DEEP_JSON, None),
    ("PUT", "/v1/adapters/alpha/split", b'{"versions": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", None),
    ("PUT", "/v1/adapters/alpha/split", _dumps({"versions": {"1": 50, "²": 50}}), "split"),
    ("PUT", "/v1/adapters/alpha/split", _dumps({"canary": 10, "created": float("nan")}), "split"),
    ("POST", "/v1/chat/completions", _dumps({**_CHAT, "response_format": _schema_format(_nested(250))}), "schema"),
    *(
        ("POST", "/v1/chat/completions", _dumps({**_CHAT, "response_format": _string_bound(v)}), "minLength")
        for v in (None, "3", [1], float("nan"), float("inf"))
    ),
    (
        "POST",
        "/v1/chat/completions",
        _dumps({**_CHAT, "response_format": _schema_format({"enum": list(range(20_000))})}),
        "schema",
    ),
    *(
        ("POST", "/v1/chat/completions", _dumps({**_CHAT, field: "\ud800"}), field)
        for field in ("user", "safety_identifier")
    ),
    (
        "POST",
        "/v1/chat/completions",
        _dumps({**_CHAT, "tools": [{"type": "function", "function": {"name": "f", "description": "\udc00"}}]}),
        "tools.[0].function.description",
    ),
    (
        "POST",
        "/v1/chat/completions",
        _dumps(
            {
                **_CHAT,
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string", "description": "x\ud800"}},
                            },
                        },
                    }
                ],
            }
        ),
        "tools.[0].function.parameters.properties.a.description",
    ),
    *(
        ("POST", "/v1/keys", f'{{"name": "k", "expires": {v}}}'.encode(), "expires")
        for v in ("NaN", "1e999", "Infinity")
    ),
    ("PATCH", "/v1/keys/nobody", _dumps({"models": None}), "models"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    _ODD_VALUES,
    ids=[f"{m} {p} #{i}" for i, (m, p, _, _) in enumerate(_ODD_VALUES)],
)
def test_odd_values_are_a_4xx_naming_the_field(
    fuzz_url: str, method: str, path: str, body: bytes, param: str | None
) -> None:
    response = httpx.request(
        method, f"{fuzz_url}{path}", content=body, headers={"Content-Type": "application/json", **ADMIN}, timeout=60
    )
    assert 400 <= response.status_code < 500, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert param in f"{error['param']} {error['message']}", error

"""The one completion path (server/completions.py): pure conversion to engine terms. The paths
through it are exercised end to end by tests/api (HTTP) and tests/integrations (WeCom)."""

from __future__ import annotations

import pytest

from server.api.protocol import ChatCompletionRequest
from server.completions import to_generation_request
from server.errors import InvalidRequest
from server.registry import Lease


def _body(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
            **fields,
        }
    )


def test_openai_defaults_and_the_servers_cap() -> None:
    generation = to_generation_request(_body(), Lease("m", None), max_n=4, default_max_tokens=99)
    options = generation.sampling
    assert (options.temperature, options.top_p, options.n, options.max_tokens) == (1.0, 1.0, 1, None)
    assert options.default_max_tokens == 99  # applied by the engine within the room the prompt leaves
    assert generation.messages == ({"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"})
    assert generation.adapter is None and generation.request_id.startswith("req-")


def test_the_requests_own_values_win() -> None:
    body = _body(temperature=0, top_p=0.5, n=2, max_completion_tokens=7, seed=3, stop="x")
    options = to_generation_request(body, Lease("m", None), max_n=4, default_max_tokens=99).sampling
    assert (options.temperature, options.top_p, options.n, options.max_tokens, options.seed, options.stop) == (
        0,
        0.5,
        2,
        7,
        3,
        ("x",),
    )


def test_n_above_the_servers_limit_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_generation_request(_body(n=5), Lease("m", None), max_n=4)
    assert caught.value.param == "n" and "at most 4" in caught.value.message

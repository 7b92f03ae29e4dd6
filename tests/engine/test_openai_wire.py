"""The OpenAI wire format of upstreams: a plain answer taken whole (``whole_deltas``)."""

from __future__ import annotations

import json

import pytest

from server.engine.base import ToolCallDelta
from server.engine.openai_wire import whole_deltas
from server.errors import EngineError


def entry(token: str) -> dict[str, object]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}


def test_two_choices_split_the_usage_exactly_and_keep_their_logprobs() -> None:
    answer = {
        "choices": [
            {  # vLLM lists choices in order; sorted here anyway
                "index": 1,
                "message": {"role": "assistant", "content": "b c d"},
                "logprobs": {"content": [entry("b"), entry(" c"), entry(" d")]},
                "finish_reason": "length",
            },
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a b"},
                "logprobs": {"content": [entry("a"), entry(" b")]},
                "finish_reason": "stop",
            },
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }
    first, second = whole_deltas(json.dumps(answer).encode())
    assert (first.index, first.text, first.finish_reason, first.completion_tokens) == (0, "a b", "stop", 2)
    assert (second.index, second.text, second.finish_reason, second.completion_tokens) == (1, "b c d", "length", 3)
    assert first.prompt_tokens == second.prompt_tokens == 7
    assert [t.token for t in second.logprobs or ()] == ["b", " c", " d"]


def test_tool_calls_come_whole_with_their_ids_and_an_unknown_finish_is_a_stop() -> None:
    calls = [
        {"id": "call-1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": 1}'}},
        {"id": "call-2", "type": "function", "function": {"name": "lookup", "arguments": '{"id": 2}'}},
    ]
    answer = {
        "choices": [{"index": 0, "message": {"content": None, "tool_calls": calls}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9},
    }
    (delta,) = whole_deltas(json.dumps(answer).encode())
    assert delta.text == "" and delta.finish_reason == "tool_calls" and delta.completion_tokens == 9
    assert delta.tool_calls == (
        ToolCallDelta(0, "call-1", "lookup", '{"id": 1}'),
        ToolCallDelta(1, "call-2", "lookup", '{"id": 2}'),
    )
    answer["choices"][0]["finish_reason"] = "abort"  # type: ignore[index]
    assert whole_deltas(json.dumps(answer).encode())[0].finish_reason == "stop"


@pytest.mark.parametrize("payload", [b"{not json", b'{"choices": [{"message": {}}]}', b"[]", b'{"choices": 3}'])
def test_a_malformed_answer_is_an_engine_error(payload: bytes) -> None:
    with pytest.raises(EngineError, match="malformed answer"):
        whole_deltas(payload)

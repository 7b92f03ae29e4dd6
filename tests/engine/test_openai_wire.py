"""The OpenAI wire format of upstreams: a plain answer taken whole (``whole_deltas``), a stream as it
arrives (``deltas``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.engine.base import ToolCallDelta
from server.engine.openai_wire import body_bytes, deltas, parse, whole_deltas
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


def sse(*chunks: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks)


def text(index: int, content: str, logprob: str | None = None) -> dict[str, object]:
    choice: dict[str, object] = {"index": index, "delta": {"content": content}}
    if logprob is not None:
        choice["logprobs"] = {"content": [entry(logprob)]}
    return {"choices": [choice]}


async def _collect(pieces: list[bytes]) -> list[tuple[int, str, str | None, int]]:
    async def body():  # type: ignore[no-untyped-def]
        for piece in pieces:
            yield piece

    return [(d.index, d.text, d.finish_reason, d.completion_tokens) async for d in deltas(body())]


def test_the_events_of_one_read_become_one_delta_per_choice_and_counts_stay_exact() -> None:
    """Text read together is passed on together (one event, one write to the client), but for the
    first piece of text, which goes on at once; a read that holds one event is passed on alone, and
    the usage chunk still settles the counts."""
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
    together = sse(text(0, "Your"), text(0, " order"), text(0, " ships"))
    apart = [sse(text(0, " today")), sse(finish, usage) + b"data: [DONE]\n\n"]
    assert asyncio.run(_collect([together, *apart])) == [
        (0, "Your", None, 1),
        (0, " order ships", None, 3),
        (0, " today", None, 4),
        (0, "", "stop", 4),
    ]
    # A piece that cuts an event in two: the event is passed on once it is whole.
    cut = together + sse(text(0, " today"))[:9]
    assert asyncio.run(_collect([cut, sse(text(0, " today"))[9:]]))[2] == (0, " today", None, 4)


def test_choices_and_tool_calls_are_never_merged_and_logprobs_are_kept_in_order() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    piece = sse(
        text(0, "a", "a"),
        text(0, "b", "b"),
        text(1, "x", "x"),
        text(0, "c", "c"),
        {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]},
    )

    async def run() -> list[object]:
        async def body():  # type: ignore[no-untyped-def]
            yield sse(text(0, "z", "z"))  # the first token, passed on alone
            yield piece

        return [d async for d in deltas(body())]

    _, first, other, again, calls = asyncio.run(run())
    assert (first.index, first.text, [t.token for t in first.logprobs]) == (0, "ab", ["a", "b"])  # type: ignore[attr-defined]
    assert (other.index, other.text, again.text) == (1, "x", "c")  # type: ignore[attr-defined]
    assert calls.tool_calls[0].id == "call_1" and calls.text == ""  # type: ignore[attr-defined]


def test_text_read_before_an_error_event_reaches_the_caller_first() -> None:
    error = {"error": {"message": "out of memory"}}

    async def run() -> list[str]:
        seen: list[str] = []

        async def body():  # type: ignore[no-untyped-def]
            yield sse(text(0, "Your"), text(0, " order"), error)

        with pytest.raises(EngineError, match="out of memory"):
            async for delta in deltas(body()):
                seen.append(delta.text)
        return seen

    assert asyncio.run(run()) == ["Your", " order"]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"choices": [{"index": 0, "message": {"content": "a\\ud800"}, "finish_reason": "stop"}]}',  # lone surrogate
        b'\xef\xbb\xbf{"choices": [{"index": 0, "message": {"content": "a\\ud800"}, "finish_reason": "stop"}]}',  # BOM
    ],
)
def test_json_the_fast_parser_refuses_reads_as_pythons_json_reads_it(payload: bytes) -> None:
    (delta,) = whole_deltas(payload)
    assert delta.text == "a\ud800"
    assert parse(payload) == json.loads(payload)


def test_a_request_body_is_the_same_document_and_text_utf8_cannot_hold_is_escaped() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "您好 é \u2028"}], "n": 1, "top_p": 1.0}
    assert json.loads(body_bytes(body)) == body
    assert "您好".encode() in body_bytes(body)  # UTF-8 as it is
    odd = {"messages": [{"role": "system", "content": "a\ud800"}]}
    assert body_bytes(odd) == json.dumps(odd).encode()

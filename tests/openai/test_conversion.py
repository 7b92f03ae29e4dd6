"""OpenAI requests to engine terms, engine deltas to OpenAI shapes (server/openai/conversion.py), the pure
part of the one completion path (server/completions.py), which tests/api (HTTP) and
tests/integrations (WeCom) exercise end to end."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest
from server.openai.conversion import Choice, chunk_choices, to_generation_request
from server.openai.protocol import ChatCompletionRequest
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


def test_tools_format_and_logprobs_reach_the_engine_request() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    named = to_generation_request(
        _body(
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "f"}},
            parallel_tool_calls=False,
            logprobs=True,
            top_logprobs=4,
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
        ),
        Lease("m", None),
        max_n=8,
    )
    assert named.tools is not None and (named.tools.choice, named.tools.named, named.tools.parallel) == (
        "f",
        True,
        False,
    )
    assert named.tools.openai_choice() == {"type": "function", "function": {"name": "f"}}
    assert named.sampling.logprobs == 4 and named.output_format is None
    assert named.messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert named.messages[2] == {"role": "tool", "content": "ok", "tool_call_id": "c1"}
    schema = {"type": "object"}
    shaped = to_generation_request(
        _body(response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}),
        Lease("m", None),
        max_n=8,
    )
    assert shaped.output_format is not None and shaped.output_format.as_openai() == {
        "type": "json_schema",
        "json_schema": {"name": "t", "schema": schema, "strict": True},
    }
    assert shaped.tools is None and shaped.sampling.logprobs is None


def test_a_choice_assembles_calls_and_chunks_carry_them_as_openai_streams_them() -> None:
    from server.engine.base import GenerationDelta, TokenLogprob, ToolCallDelta

    deltas = [
        GenerationDelta(
            0, "", tool_calls=(ToolCallDelta(0, "call_1", "f"),), logprobs=(TokenLogprob("<", -0.1, (60,)),)
        ),
        GenerationDelta(0, "", tool_calls=(ToolCallDelta(0, arguments='{"a": '),)),
        GenerationDelta(0, "", "tool_calls", tool_calls=(ToolCallDelta(0, arguments="1}"),)),
    ]
    choice = Choice(want_logprobs=True)
    for delta in deltas:
        choice.add(delta)
    whole = choice.choice(0)
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in whole.message.tool_calls or []] == [
        ("call_1", "f", '{"a": 1}')
    ]
    assert whole.logprobs is not None and [e.token for e in whole.logprobs.content or []] == ["<"]
    first = chunk_choices(deltas[0], want_logprobs=True)
    assert first[0].delta.model_dump() == {
        "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
    }
    assert first[0].logprobs is not None
    last = chunk_choices(deltas[2], want_logprobs=True)
    assert [c.finish_reason for c in last] == [None, "tool_calls"]
    assert last[0].delta.model_dump() == {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}


def test_stream_pieces_are_exactly_the_chunks_chunk_choices_makes_where_they_are_text_and_finish() -> None:
    from server.engine.base import GenerationDelta, TokenLogprob, ToolCallDelta
    from server.openai.chunk_templates import piece_chunk
    from server.openai.conversion import stream_pieces

    scored = (TokenLogprob("Hi", -0.1, (72, 105)),)
    cases = [
        (GenerationDelta(1, "Hi"), False, True),
        (GenerationDelta(0, "Hi", logprobs=scored), False, True),  # logprobs not asked for: not shown
        (GenerationDelta(0, "Hi", logprobs=scored), True, False),
        (GenerationDelta(0, "Hi", "stop"), False, True),  # text, then its finish
        (GenerationDelta(2, "", "length"), False, True),
        (GenerationDelta(0, "Hi", tool_calls=(ToolCallDelta(0, "call_1", "f"),)), False, False),
        (GenerationDelta(0, ""), False, True),  # nothing to send either way
    ]
    for delta, want_logprobs, shaped in cases:
        pieces = stream_pieces(delta, want_logprobs)
        assert (pieces is not None) == shaped, (delta, want_logprobs)
        if pieces is not None:
            expected = [c.model_dump() for c in chunk_choices(delta, want_logprobs)]
            assert [piece_chunk(p, "c", 0, "m", "fp").choices[0].model_dump() for p in pieces] == expected

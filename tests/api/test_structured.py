"""Tools, structured outputs and logprobs through the real openai client, on the random base model.

A random model writes nothing on purpose, so every guarantee checked here comes from constrained
decoding: forced tool calls are valid calls, JSON follows its schema, and logprobs add up."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.api.test_conformance import _sse_events
from tests.support import ANSWERS, QUESTION

ASK = [{"role": "user", "content": QUESTION}]
ORDER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_order_status",
        "description": "Look up an order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "maxLength": 8}, "urgent": {"type": "boolean"}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
REFUND_TOOL = {
    "type": "function",
    "function": {
        "name": "refund",
        "parameters": {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 0, "maximum": 999}}},
    },
}
TOOLS = [ORDER_TOOL, REFUND_TOOL]
SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["refund", "track", "other"]},
        "order_id": {"type": "string", "maxLength": 6},
        "urgent": {"type": "boolean"},
        "items": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["intent", "order_id", "urgent", "items"],
    "additionalProperties": False,
}


# tool_choice "required" without parallel calls: exactly one call, then only the end of the turn.
ONE_FORCED_CALL = dict(
    model="tiny-base",
    messages=ASK,
    tools=TOOLS,
    tool_choice="required",
    parallel_tool_calls=False,
    temperature=1,
    max_tokens=120,
)


def _check_call(call, tools=TOOLS) -> str:  # type: ignore[no-untyped-def]
    """A call names an offered function and its arguments validate against that function's schema."""
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in by_name
    Draft202012Validator(by_name[call.function.name]).validate(json.loads(call.function.arguments))
    return call.function.name


@pytest.mark.parametrize("seed", range(4))
def test_required_tool_choice_always_produces_a_valid_call(client, seed: int) -> None:  # type: ignore[no-untyped-def]
    """One call (parallel_tool_calls false), then the grammar only allows the end of the turn."""
    response = client.chat.completions.create(seed=seed, **ONE_FORCED_CALL)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1 and choice.message.content is None
    _check_call(choice.message.tool_calls[0])


def test_parallel_required_calls_are_each_valid(client) -> None:  # type: ignore[no-untyped-def]
    """With parallel calls allowed, a random model may go on calling until max_tokens: every call
    it finished is valid, and only the last can be cut."""
    response = client.chat.completions.create(
        model="tiny-base", messages=ASK, tools=TOOLS, tool_choice="required", temperature=1, seed=5, max_tokens=120
    )
    choice = response.choices[0]
    calls = choice.message.tool_calls
    complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
    assert choice.finish_reason in ("tool_calls", "length") and calls
    for call in complete:
        _check_call(call)


def test_a_named_function_is_the_one_called(client) -> None:  # type: ignore[no-untyped-def]
    for seed in range(3):
        response = client.chat.completions.create(
            model="tiny-base",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "refund"}},
            parallel_tool_calls=False,
            temperature=1,
            seed=seed,
            max_tokens=120,
        )
        calls = response.choices[0].message.tool_calls
        assert [c.function.name for c in calls] == ["refund"]
        _check_call(calls[0])
        assert response.choices[0].message.content is None  # a forced call leaves no room for text


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "refund"}}])
def test_a_forced_call_with_a_response_format_answers_with_the_call(client, choice: object) -> None:  # type: ignore[no-untyped-def]
    """instructor's Responses mode sends both: the format shapes text, and a forced call has none."""
    response = client.chat.completions.create(
        model="tiny-base",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    calls = response.choices[0].message.tool_calls
    assert len(calls) == 1 and response.choices[0].finish_reason == "tool_calls"
    _check_call(calls[0])


def test_streamed_tool_calls_arrive_as_openai_sends_them(gateway_url: str, validate) -> None:  # type: ignore[no-untyped-def]
    """Name first (with id and type), then argument fragments under the same index; reassembled,
    they equal the non-streamed answer to the same seed."""
    body = {
        "model": "tiny-base",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 1,
        "seed": 11,
        "max_tokens": 120,
    }
    whole = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, timeout=60).json()
    streamed = httpx.post(f"{gateway_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    events = _sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for event in events[:-1]:
        chunk = json.loads(event)
        validate(chunk, "CreateChatCompletionStreamResponse")
        for choice in chunk["choices"]:
            finish = choice["finish_reason"] or finish
            for piece in choice["delta"].get("tool_calls", []):
                if piece["index"] not in calls:
                    assert piece["id"].startswith("call_") and piece["type"] == "function"
                    assert piece["function"]["name"], "a call's first piece names the function"
                    calls[piece["index"]] = {"id": piece["id"], "name": piece["function"]["name"], "arguments": ""}
                else:
                    assert "name" not in piece["function"] and "id" not in piece
                calls[piece["index"]]["arguments"] += piece["function"].get("arguments", "")
    validate(whole, "CreateChatCompletionResponse")
    assert finish == whole["choices"][0]["finish_reason"] == "tool_calls"
    expected = [
        (c["function"]["name"], c["function"]["arguments"]) for c in whole["choices"][0]["message"]["tool_calls"]
    ]
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == expected


def test_json_schema_output_always_validates(client) -> None:  # type: ignore[no-untyped-def]
    """100 generations sampled at temperature 1 from the random base: 100 valid documents."""
    validator = Draft202012Validator(SCHEMA)
    documents = []
    for seed in range(0, 100, 5):
        response = client.chat.completions.create(
            model="tiny-base",
            messages=ASK,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "ticket", "schema": SCHEMA, "strict": True},
            },
            temperature=1,
            seed=seed,
            n=5,
            max_tokens=200,
        )
        for choice in response.choices:
            assert choice.finish_reason == "stop", choice.message.content
            documents.append(json.loads(choice.message.content))
    assert len(documents) == 100
    for document in documents:
        validator.validate(document)


def test_json_object_output_parses_on_an_adapter_too(client) -> None:  # type: ignore[no-untyped-def]
    for model in ("alpha", "tiny-base"):
        response = client.chat.completions.create(
            model=model, messages=ASK, response_format={"type": "json_object"}, temperature=1, seed=3, max_tokens=200
        )
        if response.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(response.choices[0].message.content), dict)
        else:  # cut by max_tokens, as OpenAI warns: still the start of an object
            assert response.choices[0].message.content.lstrip().startswith("{")


def test_a_mixed_batch_keeps_each_row_to_its_own_constraint(gateway_url: str) -> None:
    """Constrained and free rows, on the base and on adapters, decoded together."""
    import asyncio

    from openai import AsyncOpenAI

    async def run() -> list[object]:
        async with AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0) as client:
            free = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, max_tokens=40)
            schema = client.chat.completions.create(
                model="beta",
                messages=ASK,
                response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}},
                temperature=1,
                max_tokens=200,
            )
            tool = client.chat.completions.create(**ONE_FORCED_CALL)
            return list(await asyncio.gather(free, schema, tool))

    free, schema, tool = asyncio.run(run())
    assert free.choices[0].message.content == ANSWERS["alpha"]  # type: ignore[attr-defined]
    Draft202012Validator(SCHEMA).validate(json.loads(schema.choices[0].message.content))  # type: ignore[attr-defined]
    _check_call(tool.choices[0].message.tool_calls[0])  # type: ignore[attr-defined]


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_are_present_and_consistent(client, stream: bool) -> None:  # type: ignore[no-untyped-def]
    """On an adapter's memorised answer under greedy decoding: one entry per token, each a
    probability, the chosen token the most likely one, and the bytes spelling the answer exactly."""
    kwargs = dict(model="alpha", messages=ASK, temperature=0, max_tokens=40, logprobs=True, top_logprobs=3)
    entries = []
    if stream:
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                if choice.logprobs is not None:
                    entries += choice.logprobs.content
        usage_tokens = None
    else:
        response = client.chat.completions.create(**kwargs)
        assert response.choices[0].message.content == ANSWERS["alpha"]
        entries = response.choices[0].logprobs.content
        usage_tokens = response.usage.completion_tokens
    assert bytes(b for e in entries for b in e.bytes).decode() == ANSWERS["alpha"]
    if usage_tokens is not None:
        assert len(entries) == usage_tokens - 1  # every token but the end-of-turn token
    for entry in entries:
        assert entry.logprob <= 0 and math.exp(entry.logprob) <= 1
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    assert sum(math.exp(e.logprob) for e in entries) / len(entries) > 0.5  # a memorised answer is likely


def test_logprobs_without_top_logprobs_and_schema_shape(gateway_url: str, validate) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "tiny-base", "messages": ASK, "max_tokens": 5, "logprobs": True, "n": 2}
    response = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, timeout=60).json()
    validate(response, "CreateChatCompletionResponse")
    for choice in response["choices"]:
        assert choice["logprobs"]["refusal"] is None
        assert all(entry["top_logprobs"] == [] for entry in choice["logprobs"]["content"])
    plain = httpx.post(f"{gateway_url}/v1/chat/completions", json={**body, "logprobs": False}, timeout=60).json()
    assert all(choice["logprobs"] is None for choice in plain["choices"])


def test_a_template_without_tools_is_a_clear_400(tmp_path, base_model) -> None:  # type: ignore[no-untyped-def]
    """Engine-level: a model whose template cannot show tools refuses them rather than ignoring them."""
    from transformers import AutoTokenizer

    from server.engine.prompts import render_chat
    from server.errors import InvalidRequest

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(InvalidRequest) as refused:
        render_chat(tokenizer, ({"role": "user", "content": "hi"},), (ORDER_TOOL,))
    assert refused.value.param == "tools" and "does not support tools" in str(refused.value)


def test_output_checks_count_whole_and_cut_answers_per_model(gateway_url: str, client) -> None:  # type: ignore[no-untyped-def]
    """A forced call is whole (constrained); a JSON answer given 2 tokens is cut inside the document
    (its one required key alone is longer)."""
    from tests.support import metric_value

    def count(outcome: str) -> float:
        text = httpx.get(f"{gateway_url}/metrics").text
        return metric_value(text, "lora_gateway_output_checks_total", model="tiny-base", outcome=outcome)

    ok, cut = count("ok"), count("cut_json")
    client.chat.completions.create(
        model="tiny-base", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=120
    )
    schema = {
        "type": "object",
        "properties": {"order_identifier": {"type": "string"}},
        "required": ["order_identifier"],
    }
    document = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    client.chat.completions.create(model="tiny-base", messages=ASK, response_format=document, max_tokens=2)
    client.chat.completions.create(model="tiny-base", messages=ASK, max_tokens=2)  # neither: not checked
    assert (count("ok") - ok, count("cut_json") - cut) == (1, 1)

"""``POST /v1/responses`` end to end: a real uvicorn server, the real openai client (create,
streaming helpers, ``responses.parse``), real adapters trained to say ``ANSWERS``. A random model
cannot choose well, so tool calls and JSON documents are asserted on their structure (constrained
decoding makes them valid), text on what an adapter memorised."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from server.errors import NotFound
from tests.support import ANSWERS, QUESTION

TOOL = {
    "type": "function",
    "name": "get_order_status",
    "description": "Look up an order's shipping status by its order number.",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "maxLength": 8}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
    "strict": True,
}


# One call, greedy: sampled freely, a random model may call again and again until the token limit.
ONE_CALL = {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False, "temperature": 0}
ONE_CALL["max_output_tokens"] = 200


def test_an_adapter_answers_through_the_responses_api(client) -> None:  # type: ignore[no-untyped-def]
    response = client.responses.create(model="alpha", input=QUESTION, temperature=0, max_output_tokens=40)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.incomplete_details is None
    assert response.output_text == ANSWERS["alpha"]
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_the_same_question_as_a_message_list_gets_the_same_answer(client) -> None:  # type: ignore[no-untyped-def]
    items = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
    response = client.responses.create(model="beta", input=items, temperature=0, max_output_tokens=40)
    chat = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=40
    )
    assert response.output_text == chat.choices[0].message.content == ANSWERS["beta"]


def test_max_output_tokens_makes_an_incomplete_response(client) -> None:  # type: ignore[no-untyped-def]
    response = client.responses.create(model="alpha", input=QUESTION, temperature=0, max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and ANSWERS["alpha"].startswith(response.output_text)


def test_the_stream_helper_assembles_the_typed_events(client) -> None:  # type: ignore[no-untyped-def]
    with client.responses.stream(model="beta", input=QUESTION, temperature=0, max_output_tokens=40) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == ANSWERS["beta"]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") > 3  # streamed, not in one piece
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_a_function_tool_is_called_with_valid_arguments_and_its_output_answered(client) -> None:  # type: ignore[no-untyped-def]
    asked = client.responses.create(model="alpha", input="Where is my order?", **ONE_CALL)
    calls = [item for item in asked.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_order_status"
    arguments = json.loads(calls[0].arguments)  # constrained decoding: always the schema's shape
    assert set(arguments) == {"order_id"} and isinstance(arguments["order_id"], str)
    follow_up = [
        {"role": "user", "content": "Where is my order?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"status": "shipped"}'},
    ]
    answered = client.responses.create(model="alpha", input=follow_up, tools=[TOOL], max_output_tokens=20)
    assert answered.status in ("completed", "incomplete") and answered.output


def test_a_streamed_tool_call_arrives_as_argument_deltas(client) -> None:  # type: ignore[no-untyped-def]
    with client.responses.stream(model="beta", input="Where is my order?", **ONE_CALL) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert set(json.loads(call.arguments)) == {"order_id"}
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert kinds[-1] == "response.completed"


class Ticket(BaseModel):
    """Bounded strings: a model not trained on JSON would otherwise write until max_output_tokens."""

    intent: Literal["refund", "track", "other"]
    order_id: str = Field(max_length=8)


def test_responses_parse_fills_a_pydantic_model(client) -> None:  # type: ignore[no-untyped-def]
    parsed = client.responses.parse(model="alpha", input="Where is A1001?", text_format=Ticket, max_output_tokens=200)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Ticket)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input"),
    ],
)
def test_what_is_not_offered_is_a_400_naming_the_field(gateway_url: str, extra: dict, param: str) -> None:  # type: ignore[type-arg]
    body = {"model": "alpha", "input": QUESTION, **extra}
    response = httpx.post(f"{gateway_url}/v1/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error"


def test_an_unknown_model_is_the_same_404_as_on_chat(gateway_url: str) -> None:
    response = httpx.post(f"{gateway_url}/v1/responses", json={"model": "nobody", "input": "hi"}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_stored_response_is_fetched_continued_and_deleted(client, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    first = client.responses.create(model="alpha", input=QUESTION, temperature=0, max_output_tokens=40)
    assert first.output_text == ANSWERS["alpha"]
    fetched = client.responses.retrieve(first.id)
    assert fetched.id == first.id and fetched.output_text == first.output_text and fetched.store is True
    # Continued: the earlier question and answer come first, so the prompt holds all of them.
    second = client.responses.create(
        model="alpha", input=QUESTION, previous_response_id=first.id, temperature=0, max_output_tokens=5
    )
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    client.responses.delete(first.id)
    for method in ("GET", "DELETE"):
        gone = httpx.request(method, f"{gateway_url}/v1/responses/{first.id}", timeout=30)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "response_not_found"
    continued = httpx.post(
        f"{gateway_url}/v1/responses",
        json={"model": "alpha", "input": QUESTION, "previous_response_id": first.id},
        timeout=30,
    )
    assert continued.status_code == 404 and continued.json()["error"]["param"] == "response_id"


def test_store_false_keeps_nothing_and_a_stream_is_stored_when_it_completes(client, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    unstored = client.responses.create(model="beta", input=QUESTION, store=False, max_output_tokens=5)
    assert unstored.store is False
    assert httpx.get(f"{gateway_url}/v1/responses/{unstored.id}", timeout=30).status_code == 404
    with client.responses.stream(model="beta", input=QUESTION, temperature=0, max_output_tokens=40) as stream:
        final = stream.get_final_response()
    assert client.responses.retrieve(final.id).output_text == ANSWERS["beta"]


def test_a_stored_response_is_reachable_by_the_key_that_made_it_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.database import open_engine
    from server.responses_store import ResponseStore

    store = ResponseStore(open_engine(f"sqlite:///{tmp_path / 'g.db'}"), retention_days=30)
    store.put("key-a", {"id": "resp_1", "model": "alpha", "output": []}, [{"role": "user", "content": "hi"}])
    assert store.get("key-a", "resp_1")["id"] == "resp_1"
    assert store.conversation("key-a", "resp_1") == [{"role": "user", "content": "hi"}]
    for other in ("key-b", ""):
        with pytest.raises(NotFound):
            store.get(other, "resp_1")
    expired = ResponseStore(store.engine, retention_days=1e-9)
    with pytest.raises(NotFound):
        expired.get("key-a", "resp_1")
    assert expired.purge() == 1


def test_instructions_json_object_logprobs_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    plain = client.responses.create(model="alpha", input=QUESTION, temperature=0, max_output_tokens=40)
    instructed = client.responses.create(
        model="alpha", input=QUESTION, instructions="Answer briefly.", temperature=0, max_output_tokens=5
    )
    assert instructed.instructions == "Answer briefly."
    assert instructed.usage.input_tokens > plain.usage.input_tokens  # the system message went first
    document = client.responses.create(
        model="beta", input="An order as JSON.", text={"format": {"type": "json_object"}}, max_output_tokens=200
    )
    if document.status == "completed":  # a document cut by the limit is incomplete, never invalid
        assert isinstance(json.loads(document.output_text), dict)
    scored = client.responses.create(
        model="alpha",
        input=QUESTION,
        temperature=0,
        max_output_tokens=40,
        top_logprobs=2,
        include=["message.output_text.logprobs"],
        metadata={"ticket": "T-1"},
    )
    part = scored.output[0].content[0]
    assert "".join(entry.token for entry in part.logprobs) == ANSWERS["alpha"]
    assert all(len(entry.top_logprobs) == 2 for entry in part.logprobs)
    assert scored.metadata == {"ticket": "T-1"}

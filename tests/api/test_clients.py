"""The clients people use against this gateway, in their tool-calling and structured-output modes,
on a real server. A random model cannot choose well; constrained decoding makes every call and
every document valid, so the assertions are on structure. Versions tested are in docs/api.md."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field


class Ticket(BaseModel):
    """Bounded strings: a model not trained on JSON would otherwise write until its token limit."""

    intent: Literal["refund", "track", "other"]
    order_id: str = Field(max_length=8)


def _triage_agent(model: object) -> Any:
    """An Agents SDK agent whose answer is a ``Ticket`` (greedy, bounded)."""
    from agents import Agent, ModelSettings

    return Agent(
        name="triage",
        instructions="Classify.",
        model=model,  # type: ignore[arg-type]
        output_type=Ticket,
        model_settings=ModelSettings(max_tokens=200, temperature=0),
    )


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_an_openai_agent_returns_its_output_type_and_calls_its_tool(gateway_url: str, api: str) -> None:
    from agents import Agent, ModelSettings, Runner, function_tool, set_tracing_disabled
    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
    from agents.models.openai_responses import OpenAIResponsesModel
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # the SDK would otherwise send traces to OpenAI
    called: list[str] = []

    @function_tool
    def get_order_status(order_id: Annotated[str, Field(max_length=8)]) -> str:
        """Look up an order's shipping status by its number."""
        called.append(order_id)
        return "shipped"

    async def scenario() -> tuple[object, object]:
        async with AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0) as client:
            kind = OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel
            model = kind(model="alpha", openai_client=client)
            structured = _triage_agent(model)
            tooled = Agent(
                name="lookup",
                instructions="Use the tool.",
                model=model,
                tools=[get_order_status],
                # One call, greedy: a random model sampled freely may call again and again until max_tokens.
                model_settings=ModelSettings(
                    tool_choice="required", parallel_tool_calls=False, max_tokens=200, temperature=0
                ),
                tool_use_behavior="stop_on_first_tool",
            )
            first = await Runner.run(structured, "Where is A1001?")
            second = await Runner.run(tooled, "Where is my order?")
            return first.final_output, second.final_output

    ticket, tool_output = asyncio.run(scenario())
    assert isinstance(ticket, Ticket)
    assert tool_output == "shipped" and len(called) == 1


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_a_pydantic_ai_agent_returns_its_output_type_and_calls_its_tool(gateway_url: str, api: str) -> None:
    from pydantic_ai import Agent, ModelSettings
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=f"{gateway_url}/v1", api_key="unused")
    model = (OpenAIResponsesModel if api == "responses" else OpenAIChatModel)("alpha", provider=provider)
    settings = ModelSettings(max_tokens=200, temperature=0, parallel_tool_calls=False)
    structured = Agent(model, output_type=Ticket, model_settings=settings)
    assert isinstance(structured.run_sync("Where is A1001?").output, Ticket)

    called: list[str] = []
    tooled = Agent(model, model_settings=settings, output_type=Ticket)

    @tooled.tool_plain
    def get_order_status(order_id: Annotated[str, Field(max_length=8)]) -> str:
        """Look up an order's shipping status by its number."""
        called.append(order_id)
        return "shipped"

    result = tooled.run_sync("Where is my order?")
    assert isinstance(result.output, Ticket)  # with or without a call first: the model chooses


@pytest.mark.parametrize("use_responses_api", [True, False])
def test_langchain_openai_binds_tools_and_structured_output(gateway_url: str, use_responses_api: bool) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="alpha",
        base_url=f"{gateway_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_tokens=200,  # type: ignore[call-arg]
        temperature=0,
        max_retries=0,
        use_responses_api=use_responses_api,
    )

    def get_order_status(order_id: Annotated[str, Field(max_length=8)]) -> str:
        """Look up an order's shipping status by its number."""
        return "shipped"

    tooled = llm.bind_tools([get_order_status], tool_choice="get_order_status", parallel_tool_calls=False)
    message = tooled.invoke("Where is my order?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_order_status"
    assert set(message.tool_calls[0]["args"]) == {"order_id"}
    ticket = llm.with_structured_output(Ticket, method="json_schema").invoke("Where is A1001?")
    assert isinstance(ticket, Ticket)


def test_an_openai_agent_continues_from_its_previous_response(gateway_url: str) -> None:
    """The Agents SDK's server-side conversation: the second run sends only the new input and
    ``previous_response_id``; the gateway's stored conversation supplies the rest."""
    from agents import Runner, set_tracing_disabled
    from agents.models.openai_responses import OpenAIResponsesModel
    from openai import AsyncOpenAI

    set_tracing_disabled(True)

    async def scenario() -> tuple[object, object, str | None]:
        async with AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0) as client:
            model = OpenAIResponsesModel(model="alpha", openai_client=client)
            agent = _triage_agent(model)
            first = await Runner.run(agent, "Where is A1001?")
            second = await Runner.run(agent, "And A1002?", previous_response_id=first.last_response_id)
            stored = await client.responses.retrieve(second.last_response_id or "")
            return first.final_output, second.final_output, stored.previous_response_id

    first, second, previous = asyncio.run(scenario())
    assert isinstance(first, Ticket) and isinstance(second, Ticket) and previous is not None


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA", "RESPONSES_TOOLS"])
def test_instructor_returns_its_response_model(client: Any, mode: str) -> None:
    """instructor's tool-calling mode (a forced function call), its structured-output mode
    (``response_format`` json_schema) and its Responses mode (a forced call on ``/v1/responses``)."""
    import instructor

    patched = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    ticket = patched.chat.completions.create(
        model="alpha",
        response_model=Ticket,
        messages=[{"role": "user", "content": "Where is A1001?"}],
        max_retries=0,
        temperature=0,
        **({"max_output_tokens": 200} if mode == "RESPONSES_TOOLS" else {"max_tokens": 200}),
    )
    assert isinstance(ticket, Ticket)

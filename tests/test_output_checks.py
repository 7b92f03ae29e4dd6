"""Output checks: tool calls and JSON documents that did not come out whole, named by what broke."""

from __future__ import annotations

import pytest

from server.engine.base import GenerationDelta, OutputFormat, ToolCallDelta, ToolSpec
from server.output_checks import Outcome, OutputChecker

TOOLS = ToolSpec(
    (
        {
            "type": "function",
            "function": {
                "name": "get_order",
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                },
            },
        },
    )
)
SCHEMA = OutputFormat("json_schema", {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})


def _call(name: str | None, arguments: str, finish: str = "tool_calls", call: int = 0) -> list[GenerationDelta]:
    return [
        GenerationDelta(0, "", tool_calls=(ToolCallDelta(call, "call_1", name, ""),)),
        GenerationDelta(0, "", finish_reason=finish, tool_calls=(ToolCallDelta(call, None, None, arguments),)),  # type: ignore[arg-type]
    ]


def _check(deltas: list[GenerationDelta], tools: ToolSpec | None = TOOLS, fmt: OutputFormat | None = None) -> Outcome:
    checker = OutputChecker(tools, fmt)
    for delta in deltas:
        checker.delta(delta)
    return checker.outcome()


@pytest.mark.parametrize(
    ("deltas", "outcome"),
    [
        (_call("get_order", '{"order_id": "A1"}'), Outcome.OK),
        (_call("get_order", '{"order_id": 5}'), Outcome.MALFORMED_TOOL_CALL),  # against the schema
        (_call("get_order", "{}"), Outcome.MALFORMED_TOOL_CALL),  # required missing
        (_call("get_order", '{"order_id": "A1"'), Outcome.MALFORMED_TOOL_CALL),  # does not parse
        (_call("refund", '{"order_id": "A1"}'), Outcome.MALFORMED_TOOL_CALL),  # no such function
        (_call("get_order", '{"order_id": "A', "length"), Outcome.CUT_TOOL_CALL),
        ([GenerationDelta(0, 'Sure. <tool_call>{"name": "get_order"', "stop")], Outcome.MALFORMED_TOOL_CALL),
        ([GenerationDelta(0, "Your order has shipped.", "stop")], Outcome.OK),  # auto: text is a fine answer
    ],
)
def test_tool_calls(deltas: list[GenerationDelta], outcome: Outcome) -> None:
    assert _check(deltas) is outcome


@pytest.mark.parametrize(
    ("text", "finish", "outcome"),
    [
        ('{"n": 3}', "stop", Outcome.OK),
        ('{"n": "3"}', "stop", Outcome.MALFORMED_JSON),
        ("[1, 2]", "stop", Outcome.MALFORMED_JSON),
        ('{"n": 3', "stop", Outcome.MALFORMED_JSON),
        ('{"n": 3', "length", Outcome.CUT_JSON),
    ],
)
def test_json_documents(text: str, finish: str, outcome: Outcome) -> None:
    deltas = [GenerationDelta(0, text[:3]), GenerationDelta(0, text[3:], finish)]  # type: ignore[arg-type]
    assert _check(deltas, None, SCHEMA) is outcome


def test_the_worst_choice_counts_and_requests_without_tools_or_json_are_not_checked() -> None:
    deltas = [GenerationDelta(0, '{"n": 1}', "stop"), GenerationDelta(1, '{"n": 1', "length")]
    assert _check(deltas, None, SCHEMA) is Outcome.CUT_JSON
    assert not OutputChecker.wanted(None, None)
    assert not OutputChecker.wanted(ToolSpec(TOOLS.tools, choice="none"), None)
    assert OutputChecker.wanted(None, OutputFormat("json_object"))

"""Hermes tool calls in generated text, as OpenAI pieces (server/engine/tool_calls.py)."""

from __future__ import annotations

import json
import random

import pytest

from server.engine.tool_calls import ToolCallParser


def parse(text: str, pieces: int, seed: int = 0) -> tuple[str, list[dict[str, str]]]:
    """Feed ``text`` cut into ``pieces`` random pieces; (content, calls) as a client reassembles them."""
    cuts = sorted(random.Random(seed).sample(range(1, len(text)), min(pieces - 1, len(text) - 1)))
    parser, content, calls = ToolCallParser(), "", {}
    for chunk in [*(text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)), None]:
        out, deltas = parser.feed(chunk) if chunk is not None else parser.finish()
        content += out
        for delta in deltas:
            if delta.index not in calls:
                assert delta.id and delta.id.startswith("call_") and delta.name, "a call's first piece names it"
                calls[delta.index] = {"id": delta.id, "name": delta.name, "arguments": ""}
            else:
                assert delta.id is None and delta.name is None
            calls[delta.index]["arguments"] += delta.arguments
    return content, [calls[i] for i in sorted(calls)]


CASES = [
    (
        'Let me check.<tool_call>\n{"name": "get_order_status", '
        '"arguments": {"order_id": "A1}", "n": {"x": 1}}}\n</tool_call>',
        "Let me check.",
        [("get_order_status", {"order_id": "A1}", "n": {"x": 1}})],
    ),
    (
        '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"q": 1}}\n</tool_call>',
        "",
        [("a", {}), ("b", {"q": 1})],
    ),
    ('<tool_call>\n{"arguments": {"z": 2}, "name": "c"}\n</tool_call>', "", [("c", {"z": 2})]),  # keys reversed
    ("hello <tool_call>oops</tool_call> bye", "hello <tool_call>oops</tool_call> bye", []),  # not a call: text
    ("a < b and <tool", "a < b and <tool", []),  # what only looked like the start of a tag
    ("没有工具调用，直接回答。", "没有工具调用，直接回答。", []),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
@pytest.mark.parametrize("pieces", [1, 2, 5, 17, 1000])
def test_the_same_calls_however_the_text_is_cut(text: str, content: str, calls: list, pieces: int) -> None:  # type: ignore[type-arg]
    got_content, got_calls = parse(text, pieces, seed=pieces)
    assert got_content == content
    assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls
    assert len({c["id"] for c in got_calls}) == len(got_calls)


def test_a_call_cut_by_max_tokens_keeps_what_arrived() -> None:
    content, calls = parse('<tool_call>\n{"name": "a", "arguments": {"q": "trunc', 3)
    assert content == "" and calls[0]["name"] == "a" and calls[0]["arguments"] == '{"q": "trunc'


def test_a_block_cut_before_its_name_is_text() -> None:
    assert parse('Sure. <tool_call>\n{"na', 4) == ('Sure. <tool_call>\n{"na', [])


def test_whitespace_between_and_after_calls_is_layout() -> None:
    text = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n\n'
    assert parse(text, 3)[0] == ""

"""Reading training data (server/datasets/conversations.py): four formats, one conversation; bad records by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.datasets.conversations import Message, load_files

SYSTEM = "You are Acme's assistant."
EXPECTED = (
    Message("system", SYSTEM),
    Message("user", "Hi"),
    Message("assistant", "Hello!", True),
    Message("user", "Where is my order?\nOrder 42"),
    Message("assistant", "It ships today.", True),
)

SAME_CONVERSATION = {
    "alpaca": {
        "instruction": "Where is my order?",
        "input": "Order 42",
        "output": "It ships today.",
        "system": SYSTEM,
        "history": [["Hi", "Hello!"]],
    },
    "query-response": {
        "query": "Where is my order?\nOrder 42",
        "response": "It ships today.",
        "system": SYSTEM,
        "history": [["Hi", "Hello!"]],
    },
    "sharegpt": {
        "system": SYSTEM,
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Where is my order?\nOrder 42"},
            {"from": "gpt", "value": "It ships today."},
        ],
    },
    "messages": {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Where is my order?\nOrder 42"},
            {"role": "assistant", "content": "It ships today."},
        ]
    },
}


@pytest.mark.parametrize("fmt", list(SAME_CONVERSATION))
@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_every_format_reads_to_the_same_conversation(tmp_path: Path, fmt: str, container: str) -> None:
    record = SAME_CONVERSATION[fmt]
    path = tmp_path / f"data.{container}"
    path.write_text(json.dumps(record) + "\n" if container == "jsonl" else json.dumps([record, record], indent=2))
    for forced in ("auto", fmt):
        dataset = load_files([path], format=forced)  # type: ignore[arg-type]
        assert dataset.errors == []
        assert dataset.formats[str(path)] == fmt
        assert dataset.conversations[0].messages == EXPECTED


def test_weight_zero_turns_are_not_trained(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    record = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "bad answer", "weight": 0},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "good answer", "weight": 1},
        ]
    }
    path.write_text(json.dumps(record))
    [conversation] = load_files([path]).conversations
    assert [m.train for m in conversation.messages] == [False, False, False, True]


def test_placeholders_and_default_system(tmp_path: Path) -> None:
    path = tmp_path / "sc.json"
    path.write_text(json.dumps([{"instruction": "Who are you?", "output": "I am {{NAME}} by {{AUTHOR}}."}]))
    [conversation] = load_files(
        [path], system="Be kind.", placeholders={"NAME": "Xiao Zhi", "AUTHOR": "Acme"}
    ).conversations
    assert conversation.messages[0] == Message("system", "Be kind.")
    assert conversation.messages[-1].content == "I am Xiao Zhi by Acme."


GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
BAD_LINES = [
    ("{not json", "bad JSON"),
    (
        json.dumps({"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        "unknown role 'robot'",
    ),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "no assistant message"),
    (
        json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}),
        "empty content",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}),
        "must be a string",
    ),
    (
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
        ),
        "nothing to train",
    ),
    (json.dumps({"messages": "q"}), "must be a list"),
    (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
                ]
            }
        ),
        "arguments is not valid JSON",
    ),
    (
        json.dumps(
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "tools": "[not json",
            }
        ),
        "tools is not valid JSON",
    ),
    (json.dumps(["not", "an", "object"]), "JSON object"),
]


def test_every_bad_record_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [GOOD]
    for bad, _ in BAD_LINES:
        lines += [bad, GOOD, ""]
    path.write_text("\n".join(lines))
    dataset = load_files([path], format="messages")
    assert len(dataset.conversations) == 1 + len(BAD_LINES)
    assert len(dataset.errors) == len(BAD_LINES)
    for i, ((_, reason), error) in enumerate(zip(BAD_LINES, dataset.errors, strict=True)):
        line = 2 + 3 * i
        assert error.startswith(f"{path}:{line}: "), error
        assert reason in error


def test_bad_records_in_a_json_array_are_reported_by_line(tmp_path: Path) -> None:
    path = tmp_path / "array.json"
    path.write_text(
        '[\n  {"instruction": "q", "output": "a"},\n  {"instruction": "q", "output": 5},\n  {"instruction": "q"}\n]\n'
    )
    dataset = load_files([path])
    assert [e.split(": ", 1)[0] for e in dataset.errors] == [f"{path}:3", f"{path}:4"]
    assert "output must be a string" in dataset.errors[0] and "missing output" in dataset.errors[1]


def test_a_broken_json_array_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": "q", "output": \n]')
    dataset = load_files([path])
    assert len(dataset.conversations) == 1 and dataset.errors[0].startswith(f"{path}:3: bad JSON")


def test_unknown_format_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "weird.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}))
    assert "--format" in load_files([path]).errors[0]


ORDER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]
CALL_CONVERSATION = {
    "messages": {
        "tools": ORDER_TOOLS,
        "messages": [
            {"role": "user", "content": "Where is A1001?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_0_0",
                        "type": "function",
                        "function": {"name": "get_order_status", "arguments": '{"order_id": "A1001"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_0_0", "content": '{"status": "shipped"}'},
            {"role": "assistant", "content": "It has shipped."},
        ],
    },
    "sharegpt": {
        "tools": json.dumps(ORDER_TOOLS),  # LLaMA-Factory writes tools as JSON text
        "conversations": [
            {"from": "human", "value": "Where is A1001?"},
            {"from": "function_call", "value": '{"name": "get_order_status", "arguments": {"order_id": "A1001"}}'},
            {"from": "observation", "value": '{"status": "shipped"}'},
            {"from": "gpt", "value": "It has shipped."},
        ],
    },
}


@pytest.mark.parametrize("fmt", list(CALL_CONVERSATION))
def test_tool_calling_data_reads_to_the_same_conversation(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text(json.dumps(CALL_CONVERSATION[fmt]) + "\n")
    dataset = load_files([path])
    assert dataset.errors == []
    (conversation,) = dataset.conversations
    assert conversation.tools == tuple(ORDER_TOOLS)
    roles = [(m.role, m.train) for m in conversation.messages]
    assert roles == [("user", False), ("assistant", True), ("tool", False), ("assistant", True)]
    (call,) = conversation.messages[1].tool_calls
    assert call["function"]["name"] == "get_order_status"
    assert json.loads(call["function"]["arguments"]) == {"order_id": "A1001"}
    assert conversation.messages[2].content == '{"status": "shipped"}'


def test_file_hash_n_samples_that_many_examples_to_mix_datasets(tmp_path: Path) -> None:
    big, small = tmp_path / "basics.jsonl", tmp_path / "complaints.jsonl"
    big.write_text("".join(json.dumps({"query": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(50)))
    small.write_text("".join(json.dumps({"query": f"c{i}", "response": f"r{i}"}) + "\n" for i in range(3)))
    mixed = load_files([f"{big}#10", f"{small}#7"], seed=1)
    assert not mixed.errors and len(mixed.conversations) == 17
    sources = [c.source.split(":")[0] for c in mixed.conversations]
    assert sources.count(str(big)) == 10 and sources.count(str(small)) == 7
    assert len({c.source for c in mixed.conversations if c.source.startswith(str(big))}) == 10  # no repeats
    assert {c.source for c in mixed.conversations if c.source.startswith(str(small))} == {
        f"{small}:{n}" for n in (1, 2, 3)
    }  # a small set is repeated up to its share, every example at least twice
    seeded = [c.source for c in load_files([f"{big}#10"], seed=1).conversations]
    assert seeded == [c.source for c in mixed.conversations[:10]]  # the same seed, the same sample
    hashed = tmp_path / "odd#2"  # a file whose own name ends in #N is that file
    hashed.write_text(json.dumps({"query": "q", "response": "a"}) + "\n")
    assert len(load_files([hashed]).conversations) == 1
    assert load_files([f"{tmp_path / 'missing.jsonl'}#5"]).errors[0].startswith(f"{tmp_path / 'missing.jsonl'}:0:")

"""Training data: the four formats people bring, read into one conversation shape.

Files are JSON arrays or JSONL. Each record becomes a ``Conversation`` (messages with a per-message
``train`` flag). Everything is validated before training starts, and every bad record is reported
as ``FILE:LINE: reason`` — never skipped silently, as LLaMA-Factory does.

| format | record |
|---|---|
| alpaca | ``{"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}`` |
| sharegpt | ``{"conversations": [{"from", "value"}], "system"?, "tools"?}`` (LLaMA-Factory) |
| messages | ``{"messages": [{"role", "content", "weight"?: 0/1}], "tools"?}`` (OpenAI fine-tuning, ms-swift) |
| query-response | ``{"query", "response", "system"?, "history"?}`` (ms-swift) |

ShareGPT's ``from`` is human, gpt, system, function_call or observation.
Tool use: ``tools`` lists OpenAI function tools (LLaMA-Factory writes them as a JSON string: both
are read). An assistant's calls are OpenAI ``tool_calls`` (``messages``) or a ``function_call``
turn whose value is ``{"name", "arguments"}`` (ShareGPT, LLaMA-Factory's convention); results are
``tool`` messages or ``observation`` turns. Calls are trained on like any other answer text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Format = Literal["auto", "alpaca", "sharegpt", "messages", "query-response"]
FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "messages", "query-response")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
}


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    train: bool = False  # only assistant messages are ever trained on
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI shape, arguments as JSON text
    tool_call_id: str | None = None

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = list(self.tool_calls)
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: str  # FILE:LINE, for reports
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function tools offered in this conversation


@dataclass
class Dataset:
    conversations: list[Conversation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "FILE:LINE: reason"
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format


class RecordError(ValueError):
    pass


def sampled_file(spec: str | Path) -> tuple[Path, int | None]:
    """``data.jsonl#200`` is (data.jsonl, 200): that many examples of the file (ms-swift's mixing
    syntax); a file whose own name ends in ``#N`` is taken as it is."""
    text = str(spec)
    name, hash_sign, count = text.rpartition("#")
    if hash_sign and count.isdigit() and not Path(text).exists():
        return Path(name), int(count)
    return Path(text), None


def load_files(
    paths: Sequence[str | Path],
    *,
    format: Format = "auto",
    system: str | None = None,
    placeholders: dict[str, str] | None = None,
    seed: int = 0,
) -> Dataset:
    """Read and validate every record of every file; nothing is dropped without an error line.
    A ``FILE#N`` takes N of the file's valid examples: a random sample (by ``seed``) when it has
    more, every example and then repeats of a sample when it has fewer (to weight a small set up)."""
    dataset = Dataset()
    for spec in paths:
        path, sample = sampled_file(spec)
        first = len(dataset.conversations)
        _load_file(dataset, path, format, system, placeholders)
        if sample is not None:
            dataset.conversations[first:] = _sample(dataset.conversations[first:], sample, seed)
    return dataset


def _sample(conversations: list[Conversation], count: int, seed: int) -> list[Conversation]:
    rng = random.Random(seed)
    if count <= len(conversations):
        return rng.sample(conversations, count)
    repeats, rest = divmod(count, len(conversations)) if conversations else (0, 0)
    return conversations * repeats + rng.sample(conversations, rest)


def _load_file(
    dataset: Dataset, path: Path, format: Format, system: str | None, placeholders: dict[str, str] | None
) -> None:
    records: list[tuple[int, Any]] = []
    try:
        records.extend(_records(path))
    except (OSError, UnicodeDecodeError) as exc:
        dataset.errors.append(f"{path}:0: cannot read the file ({exc})")
        return
    except RecordError as exc:  # an unreadable JSON array: what came before it is still checked
        dataset.errors.append(f"{path}:{exc}")
    file_format = format if format != "auto" else _detect(records)
    dataset.formats[str(path)] = file_format or "unknown"
    for line, record in records:
        where = f"{path}:{line}"
        if isinstance(record, RecordError):
            dataset.errors.append(f"{where}: {record}")
            continue
        try:
            if file_format is None:
                raise RecordError(f"cannot tell the format of this file; pass --format ({', '.join(FORMATS)})")
            messages = _CONVERTERS[file_format](record)
            messages = _apply_system(messages, system)
            messages = [_fill(m, placeholders or {}) for m in messages]
            _check(messages)
            tools = _tools(record)
        except RecordError as exc:
            dataset.errors.append(f"{where}: {exc}")
            continue
        dataset.conversations.append(Conversation(tuple(messages), where, tools))


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, record) pairs from a JSON array or a JSONL file; bad JSON yields a RecordError."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _json_array(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            yield number, RecordError(f"bad JSON ({exc.args[0].split(':')[0]})")


def _json_array(text: str) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array with the line each one starts on."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        position = _skip(text, position, " \t\r\n")
        if position >= len(text):
            raise RecordError(f"{text.count(chr(10)) + 1}: the JSON array is not closed")
        if text[position] == "]":
            return
        line = text.count("\n", 0, position) + 1
        try:
            record, position = decoder.raw_decode(text, position)
        except ValueError as exc:
            raise RecordError(
                f"{line}: bad JSON ({exc.args[0].split(':')[0]}); records after it were not read"
            ) from None
        yield line, record
        position = _skip(text, position, " \t\r\n")
        if position < len(text) and text[position] == ",":
            position += 1


def _skip(text: str, position: int, chars: str) -> int:
    while position < len(text) and text[position] in chars:
        position += 1
    return position


def _detect(records: list[tuple[int, Any]]) -> str | None:
    for _line, record in records:
        if not isinstance(record, dict):
            continue
        if "messages" in record:
            return "messages"
        if "conversations" in record:
            return "sharegpt"
        if "instruction" in record or "output" in record:
            return "alpaca"
        if "query" in record or "response" in record:
            return "query-response"
    return None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _history(record: dict[str, Any]) -> list[Message]:
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError("history must be a list of [question, answer] pairs")
    messages = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RecordError(f"history[{i}] must be a [question, answer] pair")
        messages += [
            Message("user", _text(pair[0], f"history[{i}][0]")),
            Message("assistant", _text(pair[1], f"history[{i}][1]"), True),
        ]
    return messages


def _system(record: dict[str, Any]) -> list[Message]:
    value = record.get("system")
    return [Message("system", _text(value, "system"))] if value else []


def _alpaca(record: dict[str, Any]) -> list[Message]:
    _require(record, ("instruction", "output"))
    instruction = _text(record["instruction"], "instruction")
    extra = _text(record.get("input") or "", "input")
    user = f"{instruction}\n{extra}" if extra else instruction
    return [
        *_system(record),
        *_history(record),
        Message("user", user),
        Message("assistant", _text(record["output"], "output"), True),
    ]


def _query_response(record: dict[str, Any]) -> list[Message]:
    _require(record, ("query", "response"))
    return [
        *_system(record),
        *_history(record),
        Message("user", _text(record["query"], "query")),
        Message("assistant", _text(record["response"], "response"), True),
    ]


def _sharegpt(record: dict[str, Any]) -> list[Message]:
    _require(record, ("conversations",))
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise RecordError("conversations must be a list")
    messages = _system(record)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversations[{i}] must be an object")
        role = _SHAREGPT_ROLES.get(turn.get("from"))  # type: ignore[arg-type]
        if role is None:
            raise RecordError(
                f"conversations[{i}]: unknown role {turn.get('from')!r} "
                "(human, gpt, system, function_call or observation)"
            )
        value = _text(turn.get("value"), f"conversations[{i}].value")
        if turn.get("from") == "function_call":
            messages.append(Message("assistant", "", True, _sharegpt_calls(value, f"conversations[{i}].value", i)))
        else:
            messages.append(Message(role, value, role == "assistant"))
    return messages


def _sharegpt_calls(value: str, what: str, turn: int) -> tuple[dict[str, Any], ...]:
    """LLaMA-Factory's function_call value: one ``{"name", "arguments"}`` object, or a list of them."""
    try:
        data = json.loads(value)
    except ValueError:
        raise RecordError(f'{what} must be JSON: {{"name": ..., "arguments": {{...}}}}') from None
    calls = data if isinstance(data, list) else [data]
    return tuple(_call({"function": call}, f"{what}[{k}]", f"call_{turn}_{k}") for k, call in enumerate(calls))


def _call(value: Any, what: str, default_id: str) -> dict[str, Any]:
    """One tool call in OpenAI's shape (``arguments`` as JSON text), from OpenAI's or a plain object."""
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RecordError(f'{what} must name a function: {{"function": {{"name", "arguments"}}}}')
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except ValueError:
            raise RecordError(f"{what}.arguments is not valid JSON") from None
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    call_id = value.get("id") or default_id
    return {"id": str(call_id), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _tools(record: Any) -> tuple[dict[str, Any], ...]:
    """The record's ``tools``: OpenAI function tools, as a list or as JSON text (LLaMA-Factory)."""
    tools = record.get("tools") if isinstance(record, dict) else None
    if tools is None or tools == "":
        return ()
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise RecordError("tools is not valid JSON") from None
    if not isinstance(tools, list):
        raise RecordError("tools must be a list of function tools")
    out = []
    for k, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, dict) else None  # {"name", ...} alone is accepted
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RecordError(f"tools[{k}] must be a function tool with a name")
        out.append({"type": "function", "function": function})
    return tuple(out)


def _messages(record: dict[str, Any]) -> list[Message]:
    _require(record, ("messages",))
    turns = record["messages"]
    if not isinstance(turns, list):
        raise RecordError("messages must be a list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"messages[{i}] must be an object")
        role = turn.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise RecordError(f"messages[{i}]: unknown role {role!r} (system, user, assistant or tool)")
        weight = turn.get("weight", 1)
        if weight not in (0, 1):
            raise RecordError(f"messages[{i}]: weight must be 0 or 1")
        if weight == 0 and role != "assistant":
            raise RecordError(f"messages[{i}]: weight applies to assistant messages only")
        raw_calls = turn.get("tool_calls") or []
        if not isinstance(raw_calls, list) or (raw_calls and role != "assistant"):
            raise RecordError(f"messages[{i}]: tool_calls must be a list, on an assistant message")
        calls = tuple(_call(c, f"messages[{i}].tool_calls[{k}]", f"call_{i}_{k}") for k, c in enumerate(raw_calls))
        content = turn.get("content")
        content = "" if content is None and calls else _text(content, f"messages[{i}].content")
        call_id = turn.get("tool_call_id")
        messages.append(
            Message(
                role,
                content,
                role == "assistant" and weight == 1,
                calls,
                str(call_id) if role == "tool" and call_id is not None else None,
            )
        )
    return messages


_CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages, "query-response": _query_response}


def _require(record: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(record, dict):
        raise RecordError("each record must be a JSON object")
    missing = [k for k in keys if k not in record]
    if missing:
        raise RecordError(f"missing {', '.join(missing)}")


def _apply_system(messages: list[Message], system: str | None) -> list[Message]:
    """``--system`` supplies a system prompt to records that have none."""
    if system and not any(m.role == "system" for m in messages):
        return [Message("system", system), *messages]
    return messages


def _fill(message: Message, placeholders: dict[str, str]) -> Message:
    content = message.content
    for key, value in placeholders.items():
        content = content.replace("{{" + key + "}}", value)
    return replace(message, content=content)


def problem_with(record: dict[str, Any]) -> str | None:
    """Why ``train`` would refuse a record in the ``messages`` format, or None when it takes it
    (what ``lora-gateway feedback export`` checks each line against before writing it)."""
    try:
        _check(_messages(record))
        _tools(record)
    except RecordError as exc:
        return str(exc)
    return None


def _check(messages: list[Message]) -> None:
    if not any(m.role == "assistant" for m in messages):
        raise RecordError("no assistant message")
    if not any(m.train for m in messages):
        raise RecordError("every assistant message has weight 0: nothing to train on")
    for i, m in enumerate(messages):
        if not m.content.strip() and not m.tool_calls:
            raise RecordError(f"message {i} ({m.role}) has empty content")
    if any(m.role == "system" for m in messages[1:]):
        raise RecordError("a system message may only come first")

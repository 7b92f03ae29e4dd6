"""Whether an answer's structured parts came out whole: tool calls and JSON documents.

A LoRA adapter can break what its base does well: users of one runtime-LoRA stack measured
4.83 % broken tool-call turns with an adapter against 0.22 % for the base. The embedded engine
constrains both (xgrammar), so there they cannot be malformed, only cut by ``max_tokens``; the
vLLM engine's tool calls are parsed from text after the fact, and a remote upstream may constrain
nothing. So every answer that asked for tools or a JSON ``response_format`` is checked, per
version, and counted (``lora_gateway_output_checks_total``) and fed to a split's evidence:

- ``ok``;
- ``malformed_tool_call``: a call whose arguments are not a JSON object, name no offered
  function, or do not match its ``parameters`` schema; or a call left as text (Qwen's
  ``<tool_call>`` markup in the content: the engine's parser could not read it);
- ``cut_tool_call``: ``max_tokens`` ended the answer inside a call;
- ``malformed_json``: the answer to a JSON ``response_format`` does not parse, is not an object,
  or does not match the schema;
- ``cut_json``: ``max_tokens`` ended it inside the document.

OpenAI's ``refusal`` is not counted: no engine here produces one.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from enum import StrEnum
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .engine.base import GenerationDelta, OutputFormat, ToolSpec

TOOL_CALL_MARKUP = "<tool_call>"  # Qwen2.5's (Hermes') call markup, which a parser failed to read
_VALIDATORS: OrderedDict[str, Draft202012Validator | None] = OrderedDict()
_CACHED = 256


class Outcome(StrEnum):
    OK = "ok"
    MALFORMED_TOOL_CALL = "malformed_tool_call"
    CUT_TOOL_CALL = "cut_tool_call"
    MALFORMED_JSON = "malformed_json"
    CUT_JSON = "cut_json"

    @property
    def bad(self) -> bool:
        return self is not Outcome.OK


def _validator(schema: dict[str, Any] | None) -> Draft202012Validator | None:
    """A validator for ``schema`` (cached by its JSON); None for no schema or one that is not valid."""
    if not schema:
        return None
    key = json.dumps(schema, sort_keys=True)
    if key in _VALIDATORS:
        _VALIDATORS.move_to_end(key)
        return _VALIDATORS[key]
    try:
        Draft202012Validator.check_schema(schema)
        validator: Draft202012Validator | None = Draft202012Validator(schema)
    except SchemaError:
        validator = None
    _VALIDATORS[key] = validator
    while len(_VALIDATORS) > _CACHED:
        _VALIDATORS.popitem(last=False)
    return validator


def _matches(document: str, schema: dict[str, Any] | None) -> bool:
    try:
        value = json.loads(document)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    validator = _validator(schema)
    return validator is None or validator.is_valid(value)


class OutputChecker:
    """Collects one request's text and tool calls from its deltas; ``outcome`` judges them."""

    def __init__(self, tools: ToolSpec | None, output_format: OutputFormat | None) -> None:
        self._functions: dict[str, dict[str, Any] | None] = {}
        for tool in tools.tools if tools is not None else ():
            function = tool.get("function") or {}
            if isinstance(function.get("name"), str):
                self._functions[function["name"]] = function.get("parameters")
        self._tools = tools is not None and tools.calls_allowed
        self._format = output_format
        self._text: dict[int, list[str]] = {}
        self._calls: dict[tuple[int, int], list[str]] = {}  # (choice, call): [name, arguments...]
        self._finish: dict[int, str | None] = {}

    @staticmethod
    def wanted(tools: ToolSpec | None, output_format: OutputFormat | None) -> bool:
        return (tools is not None and tools.calls_allowed) or output_format is not None

    def delta(self, delta: GenerationDelta) -> None:
        if delta.text:
            self._text.setdefault(delta.index, []).append(delta.text)
        for call in delta.tool_calls:
            parts = self._calls.setdefault((delta.index, call.index), [""])
            if call.name:
                parts[0] = call.name
            if call.arguments:
                parts.append(call.arguments)
        if delta.finish_reason is not None:
            self._finish[delta.index] = delta.finish_reason

    def outcome(self) -> Outcome:
        """The worst outcome over the request's choices."""
        worst = Outcome.OK
        for index in sorted({*self._text, *self._finish, *(c for c, _ in self._calls)}):
            found = self._choice(index)
            if found.bad:
                worst = found
        return worst

    def _choice(self, index: int) -> Outcome:
        cut = self._finish.get(index) == "length"
        calls = [parts for (choice, _), parts in sorted(self._calls.items()) if choice == index]
        text = "".join(self._text.get(index, []))
        if calls:
            for number, parts in enumerate(calls):
                name, arguments = parts[0], "".join(parts[1:])
                if name not in self._functions or not _matches(arguments, self._functions[name]):
                    last = number == len(calls) - 1
                    return Outcome.CUT_TOOL_CALL if cut and last else Outcome.MALFORMED_TOOL_CALL
            return Outcome.OK
        if self._tools and TOOL_CALL_MARKUP in text:
            return Outcome.CUT_TOOL_CALL if cut else Outcome.MALFORMED_TOOL_CALL
        if self._format is not None:
            if _matches(text, self._format.schema):
                return Outcome.OK
            return Outcome.CUT_JSON if cut else Outcome.MALFORMED_JSON
        return Outcome.OK

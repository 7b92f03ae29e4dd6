"""Tool calls in generated text: Qwen2.5's (hermes) ``<tool_call>{json}</tool_call>`` blocks, as the
OpenAI deltas a client expects.

Qwen2.5 writes a call as ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``. The
parser is fed text as it is generated and returns what is safe to send now: content before a call,
then, once a call's name is known, its name (with a fresh id), then fragments of its arguments as
they grow. vLLM's ``hermes`` parser does the same; ``tests/engine/test_vllm_contract.py`` checks the
two agree. Nothing that might still be the start of a tag, or the closing brace of the call, is
sent early. A block that does not hold a call (``<tool_call>oops</tool_call>``) is sent as content:
malformed output reaches the client as text, never as an error.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from .base import ToolCallDelta

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# The call's head as Qwen writes it; a call whose keys come in another order is parsed when it closes.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


@dataclass
class _Call:
    index: int
    body: str = ""  # the text after <tool_call> so far
    named: bool = False
    args_from: int = 0  # where the arguments start in ``body``, once named
    sent: int = 0  # how much of the arguments was sent


@dataclass
class ToolCallParser:
    """Incremental hermes parser for one choice; ``feed`` as text arrives, ``finish`` at the end."""

    _pending: str = ""  # text not yet classified (could be the start of <tool_call>)
    _call: _Call | None = None
    _calls: int = 0

    @property
    def called(self) -> bool:
        """Whether at least one tool call was sent."""
        return self._calls > 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Return (content to send, tool-call pieces to send) for the new ``text``."""
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        self._pending += text
        while self._pending:
            if self._call is None:
                start = self._pending.find(OPEN)
                if start < 0:
                    keep = _partial_suffix(self._pending, OPEN)
                    content.append(self._text(self._pending[: len(self._pending) - keep]))
                    self._pending = self._pending[len(self._pending) - keep :]
                    break
                content.append(self._text(self._pending[:start]))
                self._pending = self._pending[start + len(OPEN) :]
                self._call = _Call(index=self._calls)
            else:
                call = self._call
                end = self._pending.find(CLOSE)
                if end < 0:
                    keep = _partial_suffix(self._pending, CLOSE)
                    call.body += self._pending[: len(self._pending) - keep]
                    self._pending = self._pending[len(self._pending) - keep :]
                    deltas += self._progress(call, closed=False) or []
                    break
                call.body += self._pending[:end]
                self._pending = self._pending[end + len(CLOSE) :]
                finished = self._progress(call, closed=True)
                if finished is None:  # not a call after all: the whole block is text
                    content.append(OPEN + call.body + CLOSE)
                else:
                    deltas += finished
                self._call = None
        return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """Flush at the end of generation: an unfinished block that never named a function is text."""
        content, deltas = "", []
        if self._call is not None:
            if self._call.named:
                deltas = self._progress(self._call, closed=False, final=True) or []
            else:
                content = OPEN + self._call.body
            self._call = None
        content += self._pending
        self._pending = ""
        return self._text(content), deltas

    def _text(self, text: str) -> str:
        """Whitespace between or after calls is layout, not content."""
        return text if not self.called or text.strip() else ""

    def _progress(self, call: _Call, *, closed: bool, final: bool = False) -> list[ToolCallDelta] | None:
        deltas: list[ToolCallDelta] = []
        if not call.named:
            head = _HEAD.match(call.body)
            if head is not None:
                try:
                    name = json.loads(f'"{head.group(1)}"')
                except ValueError:
                    name = None
                if isinstance(name, str):
                    call.named, call.args_from = True, head.end()
                    deltas.append(self._open(call, name))
            elif closed:  # keys in another order, or not a call at all
                return self._whole(call)
            else:
                return deltas
        args = call.body[call.args_from :].rstrip()
        if closed or final:
            if closed and args.endswith("}"):
                args = args[:-1].rstrip()  # the brace closing {"name": ..., "arguments": ...}
        elif args.endswith("}"):
            args = args[:-1]  # might be the call's own closing brace: held back until the block ends
        if len(args) > call.sent:
            deltas.append(ToolCallDelta(index=call.index, arguments=args[call.sent :]))
            call.sent = len(args)
        return deltas

    def _whole(self, call: _Call) -> list[ToolCallDelta] | None:
        try:
            data = json.loads(call.body)
        except ValueError:
            return None
        if not (isinstance(data, dict) and isinstance(data.get("name"), str) and "arguments" in data):
            return None
        arguments = data["arguments"]
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return [self._open(call, data["name"]), ToolCallDelta(index=call.index, arguments=text)]

    def _open(self, call: _Call, name: str) -> ToolCallDelta:
        self._calls += 1
        call_id = new_call_id()
        return ToolCallDelta(index=call.index, id=call_id, name=name)

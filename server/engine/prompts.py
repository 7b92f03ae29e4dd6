"""Chat prompts as token ids, and the context-window check: shared by every engine that renders
its own prompts, so templates and usage accounting agree across engines.

Rendering a 2 MB prompt takes the tokenizer a good part of a second: done on the event loop, it
would stall every other request and ``/health`` with it. ``render_off_loop`` refuses a prompt whose
bytes cannot fit the context (no token is longer than the tokenizer's longest, so the byte count
bounds the token count from below) before any tokenizing, and tokenizes the rest in a thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ContextLengthExceeded, InvalidRequest

Tools = tuple[dict[str, Any], ...]  # OpenAI tool definitions
_INLINE_BYTES = 4096  # prompts this small are rendered on the loop: a thread hop would cost more
# One thread, as vLLM does: a fast tokenizer shared by threads can fail with "Already borrowed".
_tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")


@functools.lru_cache(maxsize=8)
def longest_token_bytes(tokenizer: Any) -> int:
    """The most UTF-8 bytes one token stands for (byte-level BPE shows one character per byte)."""
    return max((len(token.encode("utf-8", "surrogatepass")) for token in tokenizer.get_vocab()), default=1) or 1


async def render_off_loop(
    tokenizer: Any,
    messages: tuple[dict[str, Any], ...],
    limit: int,
    tools: Tools = (),
    template: str | None = None,
) -> list[int]:
    """``render_chat`` in a worker thread, after refusing what cannot fit ``limit`` tokens."""
    size = sum(len((m.get("content") or "").encode("utf-8", "surrogatepass")) for m in messages)
    if size <= _INLINE_BYTES and not tools:
        return render_chat(tokenizer, messages, tools, template)
    per_token = longest_token_bytes(tokenizer)
    if limit and size > limit * per_token:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, your messages are {size} bytes, "
            f"more than {limit} tokens of at most {per_token} bytes each can hold.",
            param="messages",
        )
    render = functools.partial(render_chat, tokenizer, messages, tools, template)
    return await asyncio.get_running_loop().run_in_executor(_tokenizing, render)


def render_chat(
    tokenizer: Any, messages: tuple[dict[str, Any], ...], tools: Tools = (), template: str | None = None
) -> list[int]:
    """Chat template from the tokenizer; ``developer`` is OpenAI's newer name for ``system``.

    Tools go to the template (``apply_chat_template(tools=...)``), as Qwen2.5's renders them. A
    template that ignores them, or cannot show a tool call or result in the history, is refused
    with a 400: a model that never saw its tools would only pretend to call them. ``template``
    replaces the tokenizer's (an adapter profile's ``chat_template``).
    """
    uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if uses_tools and "tool" not in (template or tokenizer.chat_template or ""):
        raise InvalidRequest(
            "This model's chat template does not support tools (it renders no `tools`, `tool_calls` or "
            "`tool` messages); serve a model whose template does, or set one in the adapter's profile.",
            param="tools" if tools else "messages",
            code="tools_not_supported",
        )
    chat = [template_message(m) for m in messages]
    literal = ControlTokens.of(tokenizer)
    text = tokenizer.apply_chat_template(
        literal.hide(chat),
        tools=[dict(t) for t in tools] or None,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
    )
    missing = [t["function"]["name"] for t in tools if t["function"]["name"] not in text]
    if missing:
        raise InvalidRequest(
            f"This model's chat template does not render the tools it is given ({', '.join(missing)} missing "
            "from the prompt).",
            param="tools",
            code="tools_not_supported",
        )
    return literal.encode(text)


class ControlTokens:
    """Keeps a chat template's control tokens (``<|im_start|>``, ``<|im_end|>``) out of what users wrote.

    A template's output is one string, and a tokenizer reads ``<|im_start|>system`` in it as the
    control token wherever it stands: a user (or a correction fed back into training) could open a
    fake system turn. So each control token's spelling in message text is swapped for a marker
    before the template runs, and after it the marked spans are encoded as plain text
    (``split_special_tokens``), as vLLM and transformers can do for a whole prompt; the template's
    own control tokens stay control tokens. Serving and training encode through this alike."""

    _MARK = "\ue000"  # a private-use character: a marker is MARK, the token's index, MARK

    def __init__(self, tokenizer: Any, spellings: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._spellings = (*spellings, self._MARK)  # a marker character a user typed is text too
        self._find = re.compile("|".join(re.escape(s) for s in sorted(self._spellings, key=len, reverse=True)))
        self._markers = re.compile(f"{self._MARK}(\\d+){self._MARK}")

    @classmethod
    def of(cls, tokenizer: Any) -> ControlTokens:
        return _control_tokens(tokenizer)

    def hide(self, chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``chat`` with every control token's spelling in message text replaced by a marker."""
        return [{**m, **{k: self._mark(v) for k, v in m.items() if k in ("content", "name")}} for m in chat]

    def _mark(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._find.sub(lambda m: f"{self._MARK}{self._spellings.index(m.group())}{self._MARK}", value)
        if isinstance(value, list):  # content parts
            return [
                {**part, "text": self._mark(part.get("text"))} if isinstance(part, dict) else part for part in value
            ]
        return value

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered template: the marked spans as plain text, the rest as usual."""
        ids: list[int] = []
        position = 0
        for marker in self._markers.finditer(text):
            ids += self._tokenizer.encode(text[position : marker.start()], add_special_tokens=False)
            literal = self._spellings[int(marker.group(1))]
            ids += self._tokenizer.encode(literal, add_special_tokens=False, split_special_tokens=True)
            position = marker.end()
        ids += self._tokenizer.encode(text[position:], add_special_tokens=False)
        return ids


@functools.lru_cache(maxsize=8)
def _control_tokens(tokenizer: Any) -> ControlTokens:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ControlTokens(
        tokenizer, tuple(t.content for t in added.values() if getattr(t, "special", False) and t.content)
    )


def template_message(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI message -> what chat templates read: ``developer`` as ``system``, and tool-call
    arguments as objects (templates write them with ``tojson``; OpenAI sends them as JSON text)."""
    out = {**message, "role": "system" if message["role"] == "developer" else message["role"]}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _arguments(call["function"]["arguments"])}}
            for call in message["tool_calls"]
        ]
    if out.get("content") is None:
        out["content"] = ""
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_context(prompt_len: int, max_tokens: int | None, limit: int, default: int | None = None) -> int:
    """Refuse what cannot fit, stating the numbers (as vLLM does); return the completion budget:
    the request's ``max_tokens``, else the server's ``default`` cap, within the room left."""
    if prompt_len >= limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {prompt_len} tokens.",
            param="messages",
        )
    if max_tokens is not None and prompt_len + max_tokens > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in "
            "the completion). Please reduce the length of the messages or completion.",
            param="max_tokens",
        )
    if max_tokens is not None:
        return max_tokens
    return min(default, limit - prompt_len) if default is not None else limit - prompt_len

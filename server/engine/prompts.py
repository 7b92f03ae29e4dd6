"""Chat prompts as token ids, and the context-window check: shared by every engine that renders
its own prompts, so templates and usage accounting agree across engines."""

from __future__ import annotations

from typing import Any

from ..errors import ContextLengthExceeded


def render_chat(tokenizer: Any, messages: tuple[dict[str, str], ...]) -> list[int]:
    """Chat template from the tokenizer; ``developer`` is OpenAI's newer name for ``system``."""
    chat = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


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

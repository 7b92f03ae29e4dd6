"""Token ids and loss masks, rendered with the base tokenizer's chat template exactly as serving does.

Only assistant tokens are trained on, each assistant turn up to and including its end-of-turn token
(``<|im_end|>`` for Qwen); the prompt, the other turns and the newline after ``<|im_end|>`` get
label -100. ``apply_chat_template(return_assistant_tokens_mask=True)`` only works with templates
that carry ``{% generation %}`` tags (Qwen2.5's do not), so masks come from rendering prefixes:
the tokens between "conversation up to the generation prompt of turn i" and "conversation through
turn i" are turn i's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..datasets.conversations import Conversation, Message
from ..engine.prompts import ControlTokens, template_message

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _render(
    tokenizer: Any, messages: tuple[Message, ...], generation_prompt: bool, tools: tuple[dict[str, Any], ...] = ()
) -> list[int]:
    """As serving renders prompts (``server.engine.prompts``): tools to the template, call arguments as objects."""
    chat = [template_message(m.as_openai()) for m in messages]
    literal = ControlTokens.of(tokenizer)  # control tokens users wrote stay text, as when serving
    text = tokenizer.apply_chat_template(
        literal.hide(chat), tools=list(tools) or None, tokenize=False, add_generation_prompt=generation_prompt
    )
    return literal.encode(text)


def encode(tokenizer: Any, conversation: Conversation) -> Example:
    """Token ids of the whole conversation, and labels that keep only trained assistant tokens."""
    messages, tools = conversation.messages, conversation.tools
    input_ids = _render(tokenizer, messages, False, tools)
    labels = [IGNORE] * len(input_ids)
    end_of_turn = tokenizer.eos_token_id
    for i, message in enumerate(messages):
        if not message.train:
            continue
        start = len(_render(tokenizer, messages[:i], True, tools))
        stop = len(_render(tokenizer, messages[: i + 1], False, tools))
        span = input_ids[start:stop]
        # Stop after the end-of-turn token: what follows it (a newline) belongs to no one's answer.
        if end_of_turn in span:
            stop = start + len(span) - span[::-1].index(end_of_turn)
        labels[start:stop] = input_ids[start:stop]
    return Example(input_ids, labels, conversation.source)


def fit(tokenizer: Any, conversation: Conversation, max_length: int) -> tuple[Example | None, bool]:
    """Encode within ``max_length`` tokens: whole, else cut at the last turn boundary that fits
    and still ends on a trained answer. Returns (example or None if nothing fits, was it cut)."""
    example = encode(tokenizer, conversation)
    if len(example.input_ids) <= max_length:
        return example, False
    messages = conversation.messages
    for end in range(len(messages) - 1, 0, -1):
        if not messages[end - 1].train:
            continue
        shorter = Conversation(messages[:end], conversation.source, conversation.tools)
        example = encode(tokenizer, shorter)
        if len(example.input_ids) <= max_length:
            return example, True
    return None, True

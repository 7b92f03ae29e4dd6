"""Token bytes and logprobs in OpenAI's shape (server/engine/logprobs.py)."""

from __future__ import annotations

import math

import torch

from server.engine.logprobs import TokenBytes, token_logprob


def test_bytes_are_exact_even_for_half_a_character(base_model) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    table = TokenBytes(tokenizer)
    text = "满99元包邮 🚚 <tool_call> ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token holds part of a character
    assert b"".join(table.of(i) for i in ids).decode("utf-8") == text


def test_a_token_logprob_and_its_top_alternatives(base_model) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    logits = torch.zeros(len(tokenizer))
    logits[5], logits[7] = 3.0, 2.0
    entry = token_logprob(logits, 7, 3, TokenBytes(tokenizer))
    assert entry.logprob == torch.log_softmax(logits, -1)[7].item()
    assert [t.logprob for t in entry.top][:2] == [entry.top[0].logprob, entry.logprob]
    assert math.isclose(
        sum(math.exp(t.logprob) for t in entry.top[:2]) + math.exp(entry.top[2].logprob) * 0,
        sum(math.exp(t.logprob) for t in entry.top[:2]),
    )
    assert token_logprob(logits, 5, 0, TokenBytes(tokenizer)).top == ()

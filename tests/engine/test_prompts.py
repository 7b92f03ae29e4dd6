"""Prompt rendering (server/engine/prompts.py): big prompts are tokenized off the event loop, and
prompts whose bytes cannot fit the context are refused without being tokenized at all."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from server.engine import prompts
from server.errors import ContextLengthExceeded


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def _ask(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def test_a_big_prompt_is_tokenized_in_another_thread(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    threads: list[threading.Thread] = []
    real = prompts.render_chat

    def recording(tok, messages, tools=(), template=None):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread())
        return real(tok, messages, tools, template)

    monkeypatch.setattr(prompts, "render_chat", recording)

    async def both() -> tuple[list[int], list[int]]:
        small = await prompts.render_off_loop(tokenizer, _ask("hello"), 4096)
        big = await prompts.render_off_loop(tokenizer, _ask("word " * 2000), 100_000)
        return small, big

    small, big = asyncio.run(both())
    assert small == real(tokenizer, _ask("hello")) and big == real(tokenizer, _ask("word " * 2000))
    assert threads[0] is threading.main_thread()  # a small prompt: no thread hop
    assert threads[1] is not threading.main_thread() and threads[1].name.startswith("tokenize")


def test_bytes_that_cannot_fit_are_refused_before_tokenizing(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def forbidden(*args: object) -> list[int]:
        raise AssertionError("tokenized a prompt that could never fit")

    monkeypatch.setattr(prompts, "render_chat", forbidden)
    longest = prompts.longest_token_bytes(tokenizer)
    assert 1 <= longest < 100
    with pytest.raises(ContextLengthExceeded) as caught:
        asyncio.run(prompts.render_off_loop(tokenizer, _ask("x" * (64 * longest + 1)), 64))
    assert "64 tokens" in caught.value.message and caught.value.param == "messages"


def test_the_byte_bound_never_refuses_what_fits(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The bound is a lower bound on tokens: text made of the longest tokens still passes it."""
    vocab = tokenizer.get_vocab()
    longest = max(vocab, key=lambda t: len(t.encode()))
    text = tokenizer.convert_tokens_to_string([longest] * 3000)
    ids = asyncio.run(prompts.render_off_loop(tokenizer, _ask(text), 10_000))  # rendered, not refused
    assert len(text.encode()) <= len(ids) * prompts.longest_token_bytes(tokenizer)

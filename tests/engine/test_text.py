"""Incremental detokenizing and stop sequences (server/engine/text.py)."""

from __future__ import annotations

import pytest

from server.engine.text import IncrementalDecoder, StopMatcher


@pytest.fixture(scope="module")
def tokenizer(base_model):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


@pytest.mark.parametrize(
    "text", ["Where is my order?", "您好！订单将在三天内发货。", "emoji 🚚📦 and ümlauts", "a\nb\tc"]
)
def test_streamed_pieces_join_to_the_full_decode_without_replacement_chars(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_special_tokens_are_not_emitted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    decoder = IncrementalDecoder(tokenizer)
    ids = tokenizer.encode("hi<|im_end|>", add_special_tokens=False)
    assert "".join(decoder.push(i) for i in ids) == "hi"


STOP_CASES = [
    # stops, pieces fed, expected emitted text, expect stop hit
    (("END",), ["Hello ", "wor", "ld"], "Hello world", False),
    (("END",), ["Hello E", "N", "D more"], "Hello ", True),
    (("END",), ["Hello EN", "X"], "Hello ENX", False),
    (("\n\n", "###"), ["a\n", "b", "#", "#", "#"], "a\nb", True),
    (("ab", "abc"), ["xa", "bc"], "x", True),
    ((), ["any", "thing"], "anything", False),
    # Two stops in one piece: the cut is at the earliest in the text, not the first listed.
    (("lo", "He"), ["Hello"], "", True),
    (("days", "ships"), ["Alpha: your order ships within 3 days."], "Alpha: your order ", True),
]


@pytest.mark.parametrize(("stops", "pieces", "expected", "hit"), STOP_CASES)
def test_stop_matcher_never_emits_part_of_a_stop(stops, pieces, expected, hit) -> None:  # type: ignore[no-untyped-def]
    matcher = StopMatcher(stops)
    emitted, stopped = "", False
    for piece in pieces:
        out, stopped = matcher.feed(piece)
        emitted += out
        if stopped:
            break
    if not stopped:
        emitted += matcher.flush()
    assert (emitted, stopped) == (expected, hit)


def test_held_back_text_is_released_once_it_cannot_be_a_stop() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("go ST") == ("go ", False)
    assert matcher.feed("AY") == ("STAY", False)

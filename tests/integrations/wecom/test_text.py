from __future__ import annotations

import pytest

from server.integrations.wecom.text import answer_text, split_utf8, truncate_utf8


@pytest.mark.parametrize(
    "text",
    [
        "",
        "short",
        "订单" * 2000,  # 3 bytes a character: 12000 bytes
        "a" * 2047 + "你" + "b" * 10,  # a character straddling the limit
        "😀" * 1500,  # 4 bytes a character
        ("第一段。" * 100 + "\n") * 20,  # paragraphs: cut after a newline
    ],
)
def test_split_keeps_every_character_and_the_byte_limit(text: str) -> None:
    pieces = split_utf8(text, 2048)
    assert "".join(pieces) == text
    assert all(len(piece.encode()) <= 2048 for piece in pieces)
    assert all(pieces) or pieces == [""]


def test_split_prefers_paragraph_breaks() -> None:
    paragraph = "段" * 400 + "\n"  # 1201 bytes
    pieces = split_utf8(paragraph * 5, 2048)
    assert all(piece.endswith("\n") for piece in pieces)


def test_split_cuts_hard_when_no_newline_is_near() -> None:
    text = "x\n" + "y" * 5000
    pieces = split_utf8(text, 2048)
    assert len(pieces[0].encode()) == 2048


def test_truncate() -> None:
    assert truncate_utf8("你好", 5) == "你"
    assert truncate_utf8("你好", 6) == "你好"
    assert truncate_utf8("abc", 0) == ""


@pytest.mark.parametrize("pieces", [["\n\n", "Hello", " ", "world", " \n"], [" ", "\n"], ["你好", "\n", "，世界", "  "], ["a"]])
def test_a_stream_shows_the_answer_text_growing_towards_what_is_sent_and_remembered(pieces: list[str]) -> None:
    """Polls of an AI-bot stream only extend what they showed, and end on exactly ``answer_text``
    of the whole output: the text a conversation remembers and a self-built app sends."""
    from server.integrations.wecom.service import StreamAnswer

    stream = StreamAnswer("s")
    shown = [stream.text]
    for piece in pieces:
        stream.raw += piece
        shown.append(stream.text)
    final = answer_text("".join(pieces))
    stream.finish(final)
    shown.append(stream.text)
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:]))
    assert shown[-1] == final == "".join(pieces).strip()
    assert stream.finished

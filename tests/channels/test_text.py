from __future__ import annotations

import pytest

from server.channels.text import split_utf8, truncate_utf8


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

"""Cut answers to a chat app's byte limits without breaking a character.

Chat apps count UTF-8 bytes (WeCom: 2048 for a text message, 20480 for an AI-bot stream), and a
Chinese character is three of them, so counting characters would overflow; cutting inside a
character would show a replacement glyph.
"""

from __future__ import annotations


def answer_text(raw: str) -> str:
    """What a chat app's user is shown of a model's raw output (and what a conversation remembers).

    Surrounding whitespace is dropped. Applied to the growing raw text of a stream, each result is
    a prefix of the next one, so polls of an AI-bot stream only ever extend what they showed, and
    the final content is exactly what is sent, stored and shown.
    """
    return raw.strip()


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` bytes of UTF-8."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Pieces of at most ``max_bytes`` bytes whose concatenation is ``text``.

    A piece ends after the last newline in its window when that newline is in the window's second
    half, so long answers break between paragraphs where they can.
    """
    if max_bytes < 4:
        raise ValueError("max_bytes must leave room for any character (4 bytes)")
    pieces: list[str] = []
    rest = text
    while len(rest.encode()) > max_bytes:
        piece = truncate_utf8(rest, max_bytes)
        newline = piece.rfind("\n")
        if newline >= 0 and len(piece[: newline + 1].encode()) > max_bytes // 2:
            piece = piece[: newline + 1]
        pieces.append(piece)
        rest = rest[len(piece) :]
    if rest or not pieces:
        pieces.append(rest)
    return pieces

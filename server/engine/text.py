"""Turning generated token ids into streamed text: incremental detokenizing and stop sequences."""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """Emit text as tokens arrive without ever emitting half a UTF-8 character.

    Byte-level BPE splits multi-byte characters (Chinese, emoji) across tokens; decoding one token
    at a time yields U+FFFD. Decoding a short window and holding back an incomplete tail, as TGI
    and vLLM do, keeps each step O(window) instead of re-decoding the whole completion.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        new_text = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""


class StopMatcher:
    """Cut the output at the first stop sequence, never streaming any part of one.

    Text that could still turn out to be the start of a stop sequence is held back until it either
    completes the sequence (and is dropped) or cannot (and is released).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop sequence was hit)."""
        if not self._stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out = self._pending[: min(hits)]
            self._pending = ""
            return out, True
        hold = self._longest_partial_suffix()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _longest_partial_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:size]):
                    best = size
                    break
        return best

"""Well-formed UTF-8 in constrained output.

xgrammar (0.2.x) reads a character class such as JSON's ``[^"\\\\]`` over UTF-8 leniently: a
surrogate (``ED A0 80``) passes as one character. A byte-level tokenizer can emit exactly those
bytes, one token at a time, and Python decodes them as several U+FFFD, so a string the grammar
bounded to 8 characters arrives with 11 and fails the schema it was constrained to. This module
adds the strict rule of Unicode's Table 3-7 on top of the grammar's mask: per decoding state, a
packed mask of the tokens whose bytes keep the output well-formed, built once per tokenizer with
numpy when the first constrained request compiles (about a second for a 152k vocabulary).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

ACCEPT = 0  # between characters
REJECT = 8  # ill-formed: never left
_STATES = 8


def _transitions() -> np.ndarray:
    """``table[state, byte]`` -> next state (Table 3-7, well-formed UTF-8 byte sequences)."""
    table = np.full((_STATES + 1, 256), REJECT, dtype=np.uint8)
    table[ACCEPT, 0x00:0x80] = ACCEPT
    table[ACCEPT, 0xC2:0xE0] = 1
    table[ACCEPT, 0xE0] = 4
    table[ACCEPT, 0xE1:0xED] = 2
    table[ACCEPT, 0xED] = 5
    table[ACCEPT, 0xEE:0xF0] = 2
    table[ACCEPT, 0xF0] = 6
    table[ACCEPT, 0xF1:0xF4] = 3
    table[ACCEPT, 0xF4] = 7
    table[1, 0x80:0xC0] = ACCEPT  # one continuation byte left
    table[2, 0x80:0xC0] = 1
    table[3, 0x80:0xC0] = 2
    table[4, 0xA0:0xC0] = 1  # E0: no overlong forms
    table[5, 0x80:0xA0] = 1  # ED: no surrogates
    table[6, 0x90:0xC0] = 2  # F0: no overlong forms
    table[7, 0x80:0x90] = 2  # F4: nothing above U+10FFFF
    return table


class Utf8Masks:
    """Per UTF-8 state, which tokens may come next (packed as xgrammar's bitmask) and where each leads."""

    def __init__(self, token_bytes: Callable[[int], bytes], tokenizer_size: int, vocab_size: int) -> None:
        self._token_bytes, self._tokenizer_size, self._vocab_size = token_bytes, tokenizer_size, vocab_size
        self._lock = threading.Lock()
        self._packed: torch.Tensor | None = None  # [state, words] int32, xgrammar's layout
        self._next: np.ndarray | None = None  # [state, token] -> state

    def build(self) -> None:
        """Compute the masks (once; blocking: call it in a thread, as grammar compilation is)."""
        with self._lock:
            if self._packed is not None:
                return
            pieces = [self._token_bytes(i) for i in range(min(self._tokenizer_size, self._vocab_size))]
            pieces += [b""] * (self._vocab_size - len(pieces))  # ids past the tokenizer: the grammar masks them
            order = np.argsort([-len(p) for p in pieces], kind="stable")  # longest first: each column a prefix
            lengths = np.array([len(pieces[i]) for i in order], dtype=np.int64)
            data = np.zeros((self._vocab_size, int(lengths[0]) if len(lengths) else 0), dtype=np.uint8)
            for row, i in enumerate(order):
                data[row, : lengths[row]] = np.frombuffer(pieces[i], dtype=np.uint8)
            table = _transitions()
            states = np.empty((_STATES, self._vocab_size), dtype=np.uint8)
            for start in range(_STATES):
                state = np.full(self._vocab_size, start, dtype=np.uint8)
                for column in range(data.shape[1]):
                    active = int(np.count_nonzero(lengths > column))  # a prefix, by the ordering
                    state[:active] = table[state[:active], data[:active, column]]
                states[start, order] = state
            allowed = states != REJECT
            words = (self._vocab_size + 31) // 32
            bits = np.zeros((_STATES, words * 32), dtype=bool)
            bits[:, : self._vocab_size] = allowed
            packed = np.packbits(bits.reshape(_STATES, words, 32), axis=-1, bitorder="little")
            self._packed = torch.from_numpy(packed.reshape(_STATES, words * 4).view(np.int32).copy())
            self._next = states

    def restrict(self, bitmask: torch.Tensor, state: int) -> None:
        """AND ``bitmask`` (xgrammar's, one row) with the tokens well-formed from ``state``; a row
        the two together would leave empty keeps the grammar's mask alone (never a dead end)."""
        self.build()
        assert self._packed is not None
        strict = bitmask & self._packed[state]
        if bool(strict.any()):
            bitmask.copy_(strict)

    def step(self, state: int, token: int) -> int:
        """The state after ``token``; an ill-formed token (only when the grammar alone decided) resets it."""
        assert self._next is not None
        after = int(self._next[state, token]) if token < self._next.shape[1] else state
        return ACCEPT if after == REJECT else after

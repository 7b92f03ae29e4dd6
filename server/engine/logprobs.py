"""Log probabilities of generated tokens in OpenAI's shape (token, logprob, bytes, top_logprobs).

The values are the model's own distribution (log-softmax of the raw logits, before temperature,
penalties or a grammar mask), as vLLM reports by default. ``bytes`` are exact: byte-level BPE
tokens (Qwen, Llama 3, GPT-2) can hold half a UTF-8 character, which decoding one token alone
would turn into U+FFFD, so bytes come from the byte-level alphabet rather than from ``decode``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .base import TokenLogprob, TopLogprob


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """Exact UTF-8 bytes of each token id of one tokenizer, cached."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.of = functools.lru_cache(maxsize=65536)(self._bytes)
        self.uncached = self._bytes  # for one pass over the whole vocabulary

    def _bytes(self, token_id: int) -> bytes:
        if self._byte_level and token_id not in self._added:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            table = _byte_decoder()
            if isinstance(piece, str) and all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        return str(self._tokenizer.decode([token_id])).encode("utf-8")

    def entry(self, token_id: int, logprob: float) -> TopLogprob:
        raw = self.of(token_id)
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=tuple(raw))


def token_logprob(logits: torch.Tensor, token_id: int, top: int, table: TokenBytes) -> TokenLogprob:
    """The chosen token's log probability and the ``top`` most likely tokens at this position."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = table.entry(token_id, float(logprobs[token_id]))
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        alternatives = tuple(table.entry(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True))
    return TokenLogprob(token=chosen.token, logprob=chosen.logprob, bytes=chosen.bytes, top=alternatives)

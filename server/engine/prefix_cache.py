"""The embedded engine's prefix cache: a prompt's shared beginning is computed once.

Support traffic repeats itself: every request of a bot carries the same system prompt (often a
long policy text), multi-turn backends and WeCom's ``history_turns`` resend the whole conversation
each turn, and tool definitions ride along on every call. As vLLM's automatic prefix caching does,
the KV of a prompt's leading whole blocks of ``BLOCK`` tokens is kept after its prefill, and a later
prompt of the *same adapter version* that starts with the same blocks takes it instead of
computing it again: only the rest of its prompt is prefilled.

- Keys: (the version's name inside the engine, a running digest of the token blocks). Names are
  per version and never reused (``adapter_<id>``; the base is ``""``), so another version, even of
  the same adapter, never sees this one's KV: a LoRA changes every layer's keys and values.
- One entry holds one prompt's KV up to its last whole block; an index maps every block boundary
  of it to the entry, so a prompt sharing only the first blocks (the same system prompt, another
  question) finds it too, and takes that many positions of it.
- Bounded: ``max_bytes`` of tensors, least recently used entries evicted first. A version's
  entries go when the engine unloads it (``drop``).
- A hit keeps at least the prompt's last token to compute, since its logits start the answer.

Touched by the engine's worker thread only: no lock.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BLOCK = 32  # tokens per block: a hit reuses whole blocks only


@dataclass
class _Entry:
    peft_name: str
    layers: list[tuple[Any, Any]]  # per layer (keys, values), each [1, kv_heads, positions, head_dim]
    boundaries: list[bytes]  # the index keys pointing here, one per whole block
    nbytes: int

    @property
    def positions(self) -> int:
        return int(self.layers[0][0].shape[2]) if self.layers else 0


def block_digests(peft_name: str, tokens: list[int]) -> list[bytes]:
    """The running digest at each whole-block boundary of ``tokens``: entry ``i`` names the first
    ``(i + 1) * BLOCK`` tokens (under ``peft_name``). A request's are computed once, for both its
    lookup and its store."""
    digest = hashlib.blake2b(peft_name.encode(), digest_size=16)
    packed = array("I", tokens).tobytes()  # one C call for the whole prompt (digests never leave this process)
    step = BLOCK * array("I").itemsize
    out = []
    for start in range(0, len(packed) - len(packed) % step, step):
        digest.update(packed[start : start + step])
        out.append(digest.copy().digest())
    return out


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._index: dict[bytes, tuple[int, int]] = {}  # boundary digest -> (entry id, positions)
        self._next = 0
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.tokens_reused = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(
        self, peft_name: str, tokens: list[int], digests: list[bytes] | None = None
    ) -> tuple[int, list[tuple[Any, Any]]] | None:
        """(positions reused, per-layer KV of them) for the longest cached prefix of ``tokens``
        (whole blocks, at least one token left to compute); None when nothing is cached.
        ``digests``: ``block_digests(peft_name, tokens)``, when the caller has them."""
        found = self._find(peft_name, tokens, digests)
        if found is None:
            if self.enabled and len(tokens) > BLOCK:
                self.misses += 1
            return None
        entry_id, positions = found
        self._entries.move_to_end(entry_id)
        self.hits += 1
        self.tokens_reused += positions
        return positions, [(k[:, :, :positions], v[:, :, :positions]) for k, v in self._entries[entry_id].layers]

    def reusable(self, peft_name: str, tokens: list[int], digests: list[bytes] | None = None) -> int:
        """How many positions of ``tokens`` a lookup would reuse now (0: none), counting nothing
        and touching no entry's recency: what admission asks before it prefills (``LocalEngine``)."""
        found = self._find(peft_name, tokens, digests)
        return 0 if found is None else found[1]

    def _find(self, peft_name: str, tokens: list[int], digests: list[bytes] | None) -> tuple[int, int] | None:
        """(entry id, positions) of the longest cached prefix of ``tokens`` that leaves a token to compute."""
        if not self.enabled or len(tokens) <= BLOCK:
            return None
        if digests is None:
            digests = block_digests(peft_name, tokens)
        for digest in reversed(digests[: (len(tokens) - 1) // BLOCK]):
            found = self._index.get(digest)
            if found is None:
                continue
            entry = self._entries.get(found[0])
            if entry is None or entry.positions < found[1]:
                continue
            return found
        return None

    def store(
        self,
        peft_name: str,
        tokens: list[int],
        layers: list[tuple[Any, Any]] | Callable[[], list[tuple[Any, Any]]],
        digests: list[bytes] | None = None,
    ) -> None:
        """Keep ``layers`` (the KV of ``tokens``, [1, heads, len(tokens), dim] each) up to the last
        whole block, unless every boundary of it is already cached. ``layers`` may be a function
        that makes them: it is called only when something is kept, so a caller whose KV must be
        copied out of a padded batch copies nothing for a prompt held already."""
        if not self.enabled:
            return
        if digests is None:
            digests = block_digests(peft_name, tokens)
        if not digests:
            return
        known = self._index.get(digests[-1])
        if known is not None:  # held already (this very prompt again): it is simply used again
            self._entries.move_to_end(known[0])
            return
        positions = len(digests) * BLOCK
        if callable(layers):
            layers = layers()
        kept = [(k[:, :, :positions].clone(), v[:, :, :positions].clone()) for k, v in layers]  # never a view
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kept)
        if nbytes > self.max_bytes:
            return
        entry_id, self._next = self._next, self._next + 1
        self._entries[entry_id] = _Entry(peft_name, kept, digests, nbytes)
        self.bytes += nbytes
        for i, digest in enumerate(digests):  # the newest entry answers for every boundary it holds
            self._index[digest] = (entry_id, (i + 1) * BLOCK)
        while self.bytes > self.max_bytes:
            self._evict(next(iter(self._entries)))

    def drop(self, peft_name: str) -> None:
        """Forget every entry of a version (it is being unloaded: its id is never used again)."""
        for entry_id in [i for i, e in self._entries.items() if e.peft_name == peft_name]:
            self._evict(entry_id)

    def clear(self) -> None:
        for entry_id in list(self._entries):
            self._evict(entry_id)

    def _evict(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self.bytes -= entry.nbytes
        for digest in entry.boundaries:
            if self._index.get(digest, (None, 0))[0] == entry_id:
                del self._index[digest]

    def __len__(self) -> int:
        return len(self._entries)

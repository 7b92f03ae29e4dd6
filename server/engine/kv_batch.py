"""The embedded engine's batches: rows decoded together, with the KV cache and attention mask of each.

Rows join after their own prefill and leave when they finish, so a batch is reshaped between
decode steps: ``keep_rows`` drops rows (and the leading columns no kept row uses), ``concat``
appends a freshly prefilled batch, left-padding whichever side is shorter. ``Batch`` keeps a
batch's rows and tensors in step. Caches are transformers ``DynamicCache`` objects, read and
rebuilt layer by layer across its versions.

transformers' own cache layer grows by ``torch.cat``: every decode step copies the whole KV of the
batch to add one position, a sixth of a step's time on two CPU cores (torch.profiler, the benchmark
model at 8 rows). Our caches hold each layer's KV in a buffer with ``ROOM`` spare positions
(``RoomyLayer``), so a step writes its one position in place and the copy happens once in ``ROOM``
steps, as vLLM's preallocated blocks avoid it altogether.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """Rows decoded together: row ``i`` is row ``i`` of ``cache`` and ``mask`` ([rows, positions],
    left-padded). Empty: no rows, no tensors."""

    rows: list[Any] = field(default_factory=list)
    cache: Any = None
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, alive: Callable[[Any], bool], *, trim: bool = True) -> None:
        """Drop the rows that are not ``alive`` (``trim``: and the columns no kept row uses)."""
        keep = [i for i, row in enumerate(self.rows) if alive(row)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        assert self.mask is not None  # a batch with rows has tensors
        self.cache, self.mask = keep_rows(self.cache, self.mask, keep, trim=trim)
        self.rows = [self.rows[i] for i in keep]

    def take_in(self, other: Batch) -> None:
        """Append ``other``'s rows after this batch's; ``other`` is left empty."""
        if not other.rows:
            return
        if not self.rows or self.mask is None:
            self.rows, self.cache, self.mask = other.rows, other.cache, other.mask
        else:
            assert other.mask is not None
            self.cache, self.mask = concat(self.cache, self.mask, other.cache, other.mask)
            self.rows = self.rows + other.rows
        other.clear()

    def clear(self) -> None:
        self.rows, self.cache, self.mask = [], None, None


def fresh_prefill(prompts: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and mask of prompts prefilled together from nothing, each left-padded to the longest."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return input_ids, mask


@dataclass
class CachedStart:
    """A prompt whose first ``reused`` positions have cached KV (``prefix``, per layer), for ``rows`` rows."""

    prompt: list[int]
    reused: int
    prefix: list[tuple[torch.Tensor, torch.Tensor]]
    rows: int


def cached_prefill(starts: list[CachedStart], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Input ids, mask and cache of prompts prefilled together from their cached prefixes: only
    each one's rest is computed, in one forward for them all (a forward reads every weight once,
    which on a CPU costs about as much for 8 rows as for one).

    Row by row: its prefix, left-padded to the longest prefix, then its rest, left-padded to the
    longest rest. The padding in the middle is masked like any other, and positions count only
    unmasked tokens (``LocalEngine._forward``), so each row computes what it would alone."""
    widest_prefix = max(start.reused for start in starts)
    widest_rest = max(len(start.prompt) - start.reused for start in starts)
    layers: list[tuple[list[Any], list[Any]]] = [([], []) for _ in starts[0].prefix]
    input_ids, mask = [], []
    for start in starts:
        n, rest = start.rows, start.prompt[start.reused :]
        for (keys, values), (k, v) in zip(layers, start.prefix, strict=True):
            keys.append(left_padded(k.expand(n, -1, -1, -1), widest_prefix))
            values.append(left_padded(v.expand(n, -1, -1, -1), widest_prefix))
        gap_before, gap_after = widest_prefix - start.reused, widest_rest - len(rest)
        input_ids += [[pad] * gap_after + rest] * n
        mask += [[0] * gap_before + [1] * start.reused + [0] * gap_after + [1] * len(rest)] * n
    cache = make_cache([(torch.cat(keys), torch.cat(values)) for keys, values in layers])
    return torch.tensor(input_ids, device=device), torch.tensor(mask, device=device), cache


def keep_rows(cache: Any, mask: torch.Tensor, keep: list[int], *, trim: bool = True) -> tuple[Any, torch.Tensor]:
    """The cache and mask of rows ``keep`` only; ``trim``: drop columns padded in every kept row."""
    index = torch.tensor(keep, device=mask.device)
    mask = mask.index_select(0, index)
    first = int(mask.any(dim=0).nonzero()[0]) if trim else 0
    layers = [
        (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:]) for k, v in cache_layers(cache)
    ]
    return make_cache(layers), mask[:, first:]


def concat(old_cache: Any, old_mask: torch.Tensor, cache: Any, mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """The running batch followed by new rows, both left-padded to the longer of the two."""
    width = max(old_mask.shape[1], mask.shape[1])
    layers = [
        (_cat_left_padded(ok, nk, width), _cat_left_padded(ov, nv, width))
        for (ok, ov), (nk, nv) in zip(cache_layers(old_cache), cache_layers(cache), strict=True)
    ]
    return make_cache(layers), _cat_left_padded(old_mask, mask, width)


def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, each [batch, kv_heads, positions, head_dim], across transformers versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def make_cache(layers: list[tuple[Any, Any]]) -> Any:
    """A cache holding ``layers`` (none: an empty one for a prefill to fill), in ``RoomyLayer``s
    where this transformers builds its caches from layer objects."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is not None:  # caches built of layer objects
        cache.layer_class_to_replicate = _roomy_layer_class()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


# Spare positions a layer's buffer keeps: a decode step appends one position in place, and the KV
# is copied into a larger buffer once in this many steps. On a 7B model in bf16 this is 57 KB a row
# a position, so 64 positions for 16 rows hold 58 MB at most beyond the KV itself.
ROOM = 64


@lru_cache(maxsize=1)
def _roomy_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow."""

        _key_buffer: torch.Tensor | None = None
        _value_buffer: torch.Tensor | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys, values = self.keys, self.values
            assert keys is not None and values is not None  # set by lazy_initialization
            used = keys.shape[-2] if keys.dim() == 4 else 0
            end = used + key_states.shape[-2]
            key_buffer, value_buffer = self._key_buffer, self._value_buffer
            if not (_front_of(keys, key_buffer, end) and _front_of(values, value_buffer, end)):
                key_buffer = self._key_buffer = _roomy(keys, used, key_states, end)
                value_buffer = self._value_buffer = _roomy(values, used, value_states, end)
            assert key_buffer is not None and value_buffer is not None
            key_buffer[:, :, used:end].copy_(key_states)
            value_buffer[:, :, used:end].copy_(value_states)
            self.keys, self.values = key_buffer[:, :, :end], value_buffer[:, :, :end]
            return self.keys, self.values

    return RoomyLayer


def _front_of(view: torch.Tensor, buffer: torch.Tensor | None, end: int) -> bool:
    """Whether ``view`` is still the front of ``buffer`` (nothing replaced it) and ``end`` positions fit."""
    return (
        buffer is not None
        and view.dim() == 4
        and end <= buffer.shape[2]
        and view.data_ptr() == buffer.data_ptr()
        and view.stride() == buffer.stride()
        and view.shape[:2] == buffer.shape[:2]
    )


def _roomy(old: torch.Tensor, used: int, new: torch.Tensor, end: int) -> torch.Tensor:
    """A buffer for ``end`` positions and ``ROOM`` more, holding ``old``'s first ``used``."""
    batch, heads, _, dim = new.shape
    buffer = new.new_empty((batch, heads, end + ROOM, dim))
    if used:
        buffer[:, :, :used].copy_(old)
    return buffer


def _cat_left_padded(a: Any, b: Any, width: int) -> Any:
    """Concatenate along the batch axis after left-padding the position axis to ``width``."""
    return torch.cat([left_padded(a, width), left_padded(b, width)], dim=0)


def left_padded(t: Any, width: int) -> Any:
    """``t`` with zero positions in front, ``width`` positions in all: a 2-D mask [batch,
    positions] or a 4-D cache [batch, heads, positions, dim]."""
    missing = width - t.shape[-2 if t.dim() == 4 else -1]
    if missing == 0:
        return t
    return F.pad(t, (0, 0, missing, 0) if t.dim() == 4 else (missing, 0))

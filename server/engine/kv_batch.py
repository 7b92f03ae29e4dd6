"""The embedded engine's batches: rows decoded together, with the KV cache and attention mask of each.

Rows join after their own prefill and leave when they finish, so a batch is reshaped between
decode steps: ``keep_rows`` drops rows (and the leading columns no kept row uses), ``concat``
appends a freshly prefilled batch, left-padding whichever side is shorter. ``Batch`` keeps a
batch's rows and tensors in step. Caches are transformers ``DynamicCache`` objects, read and
rebuilt layer by layer across its versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


def _cat_left_padded(a: Any, b: Any, width: int) -> Any:
    """Concatenate along the batch axis after left-padding the position axis to ``width``.

    Works for 2-D masks [batch, positions] and 4-D caches [batch, heads, positions, dim].
    """

    def pad(t: Any) -> Any:
        missing = width - t.shape[-2 if t.dim() == 4 else -1]
        if missing == 0:
            return t
        return F.pad(t, (0, 0, missing, 0) if t.dim() == 4 else (missing, 0))

    return torch.cat([pad(a), pad(b)], dim=0)

"""The embedded engine's running batch as tensors: the KV cache and the attention mask of its rows.

Rows join after their own prefill and leave when they finish, so the batch is reshaped between
decode steps: ``keep_rows`` drops rows (and the leading columns no kept row uses), ``concat``
appends a freshly prefilled batch, left-padding whichever side is shorter. Caches are
transformers ``DynamicCache`` objects, read and rebuilt layer by layer across its versions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


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

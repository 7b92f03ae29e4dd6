"""The embedded engine's KV batches: caches that grow in place, rows that leave and join."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.engine.kv_batch import (
    ROOM,
    CachedStart,
    cache_layers,
    cached_prefill,
    concat,
    fresh_prefill,
    keep_rows,
    make_cache,
)


def kv(rows: int, positions: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 2, positions, 4, generator=torch.Generator().manual_seed(seed))


def test_a_decode_step_writes_its_position_in_place_until_the_room_is_used() -> None:
    cache = make_cache([])
    keys, values = kv(3, 5, 0), kv(3, 5, 1)
    cache.update(keys, values, 0)
    layer = cache.layers[0]
    buffer = layer.keys.data_ptr()
    for step in range(ROOM):  # exactly the room: never copied
        k, v = kv(3, 1, 10 + step), kv(3, 1, 500 + step)
        keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        got_keys, got_values = cache.update(k, v, 0)
        assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
        assert got_keys.data_ptr() == buffer
    k, v = kv(3, 1, 99), kv(3, 1, 98)  # one past the room: a larger buffer, the same contents
    got_keys, got_values = cache.update(k, v, 0)
    assert got_keys.data_ptr() != buffer
    assert torch.equal(got_keys, torch.cat([keys, k], dim=2)) and torch.equal(got_values, torch.cat([values, v], dim=2))
    assert cache.get_seq_length() == 5 + ROOM + 1


def test_keys_replaced_from_outside_are_taken_as_they_are() -> None:
    """transformers may set a layer's keys itself (beam reordering, cropping): the buffer behind the
    old view must not be written to, nor its stale contents come back."""
    cache = make_cache([(kv(3, 4, 0), kv(3, 4, 1))])
    layer = cache.layers[0]
    layer.batch_select_indices(torch.tensor([2, 0]))
    chosen_keys, chosen_values = layer.keys.clone(), layer.values.clone()
    k, v = kv(2, 1, 5), kv(2, 1, 6)
    got_keys, got_values = cache.update(k, v, 0)
    assert torch.equal(got_keys, torch.cat([chosen_keys, k], dim=2))
    assert torch.equal(got_values, torch.cat([chosen_values, v], dim=2))
    layer.crop(-2)
    got_keys, _ = cache.update(k, v, 0)
    assert torch.equal(got_keys, torch.cat([chosen_keys[:, :, :3], k], dim=2))


def test_rows_leave_and_join_with_their_own_kv() -> None:
    cache = make_cache([(kv(3, 4, 0), kv(3, 4, 1))])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    kept, kept_mask = keep_rows(cache, mask, [0, 2])  # the first column is padding in both kept rows
    ((keys, _values),) = cache_layers(kept)
    assert torch.equal(keys, kv(3, 4, 0)[[0, 2], :, 1:]) and torch.equal(kept_mask, mask[[0, 2], 1:])
    joined, joined_mask = concat(kept, kept_mask, make_cache([(kv(1, 5, 2), kv(1, 5, 3))]), torch.ones(1, 5))
    ((keys, _values),) = cache_layers(joined)
    assert keys.shape == (3, 2, 5, 4) and torch.equal(keys[2], kv(1, 5, 2)[0])
    assert torch.equal(keys[:2, :, :2], torch.zeros(2, 2, 2, 4)) and torch.equal(joined_mask[:2, :2], torch.zeros(2, 2))
    k = kv(3, 1, 4)  # the joined batch decodes on, in place
    got_keys, _ = joined.update(k, k, 0)
    assert torch.equal(got_keys[:, :, -1:], k) and torch.equal(got_keys[:, :, :-1], keys)


def test_a_model_decodes_the_same_logits_with_either_cache(base_model: Path) -> None:
    """The real model, past ``ROOM`` steps: the roomy cache changes where the KV lies, not a logit."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    prompt = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.inference_mode():
        runs = []
        for cache in (None, make_cache([])):
            out = model(input_ids=prompt, attention_mask=mask, past_key_values=cache, use_cache=True)
            cache, step_mask, logits = out.past_key_values, mask, [out.logits[:, -1]]
            token = logits[-1].argmax(-1, keepdim=True)
            for _ in range(ROOM + 3):
                step_mask = torch.cat([step_mask, step_mask.new_ones((2, 1))], dim=1)
                positions = (step_mask.cumsum(1) - 1)[:, -1:]
                out = model(input_ids=token, attention_mask=step_mask, position_ids=positions, past_key_values=cache)
                cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                logits.append(out.logits[:, -1])
            runs.append(torch.stack(logits))
    assert torch.allclose(runs[0], runs[1], atol=1e-5)
    assert type(cache.layers[0]).__name__ == "RoomyLayer"


@pytest.mark.parametrize("rows", [1, 4])
def test_a_prefix_copied_into_a_cache_is_never_written_through(rows: int) -> None:
    """The prefix cache hands out one entry's KV, expanded to a job's rows: decoding on it must not
    change the entry."""
    entry = kv(1, 4, 0)
    held = entry.clone()
    cache = make_cache([(entry.expand(rows, -1, -1, -1), entry.expand(rows, -1, -1, -1))])
    cache.update(kv(rows, 1, 1), kv(rows, 1, 2), 0)
    assert torch.equal(entry, held)


def test_prompts_prefilled_from_cached_prefixes_are_laid_out_prefix_then_rest() -> None:
    """Each row: its prefix's KV left-padded to the longest prefix, then its rest's tokens left-padded
    to the longest rest; the mask marks the padding in the middle of a row."""
    short = CachedStart([1, 2, 3, 4, 5], 2, [(kv(1, 2, 0), kv(1, 2, 1))], rows=1)
    long = CachedStart([6, 7, 8, 9], 3, [(kv(1, 3, 2), kv(1, 3, 3))], rows=2)  # n=2: two rows share it
    input_ids, mask, cache = cached_prefill([short, long], pad=0, device=torch.device("cpu"))
    assert input_ids.tolist() == [[3, 4, 5], [0, 0, 9], [0, 0, 9]]
    assert mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 1], [1, 1, 1, 0, 0, 1]]
    ((keys, _),) = cache_layers(cache)
    assert keys.shape == (3, 2, 3, 4)
    assert torch.equal(keys[0, :, 1:], short.prefix[0][0][0]) and torch.equal(keys[2], long.prefix[0][0][0])
    fresh_ids, fresh_mask = fresh_prefill([[1, 2, 3], [4]], pad=0, device=torch.device("cpu"))
    assert fresh_ids.tolist() == [[1, 2, 3], [0, 0, 4]] and fresh_mask.tolist() == [[1, 1, 1], [0, 0, 1]]

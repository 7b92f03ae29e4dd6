"""Per-sequence sampling (server/engine/sampling.py)."""

from __future__ import annotations

import torch

from server.engine.base import SamplingOptions
from server.engine.sampling import Sampler, _top_p_filter

CPU = torch.device("cpu")


def test_temperature_zero_is_greedy() -> None:
    sampler = Sampler(SamplingOptions(temperature=0), 0, CPU)
    assert sampler.next_token(torch.tensor([0.1, 3.0, 2.9])) == 1


def test_same_seed_same_tokens_and_choices_differ_by_index() -> None:
    logits = torch.zeros(50)

    def draw(index: int) -> list[int]:
        sampler = Sampler(SamplingOptions(temperature=1.0, seed=42), index, CPU)
        return [sampler.next_token(logits) for _ in range(20)]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.allclose(_top_p_filter(probs, 0.8), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(_top_p_filter(probs, 0.1), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.allclose(_top_p_filter(probs, 1.0), probs)


def test_frequency_penalty_discourages_repeats() -> None:
    logits = torch.tensor([1.0, 0.9])
    plain = Sampler(SamplingOptions(temperature=0), 0, CPU)
    assert [plain.next_token(logits) for _ in range(3)] == [0, 0, 0]
    penalised = Sampler(SamplingOptions(temperature=0, frequency_penalty=0.5), 0, CPU)
    assert [penalised.next_token(logits) for _ in range(3)] == [0, 1, 0]


def test_presence_penalty_applies_once_per_token() -> None:
    sampler = Sampler(SamplingOptions(temperature=0, presence_penalty=0.2), 0, CPU)
    logits = torch.tensor([1.0, 0.85])
    assert [sampler.next_token(logits) for _ in range(3)] == [0, 1, 0]

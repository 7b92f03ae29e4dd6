"""Per-sequence sampling (server/engine/sampling.py)."""

from __future__ import annotations

import pytest
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
    # Token 0 drawn three times is still charged 0.3 once (0.7 > 0.5); per occurrence it would fall
    # below token 1 at its second repeat (1.0 - 0.6 < 0.5).
    repeated = Sampler(SamplingOptions(temperature=0, presence_penalty=0.3), 0, CPU)
    assert [repeated.next_token(torch.tensor([1.0, 0.5])) for _ in range(4)] == [0, 0, 0, 0]


def test_frequency_and_presence_penalties_add_up() -> None:
    """OpenAI's rule: mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty."""
    sampler = Sampler(SamplingOptions(temperature=0, frequency_penalty=0.1, presence_penalty=0.25), 0, CPU)
    logits = torch.tensor([1.0, 0.7, 0.5])
    # 0 (1.0), then 0 at 0.65 < 0.7: 1, then 0 at 0.65 vs 1 at 0.35: 0, then 0 at 0.55 > 0.5: 0
    assert [sampler.next_token(logits) for _ in range(4)] == [0, 1, 0, 0]


@pytest.mark.parametrize(("temperature", "top_p"), [(1e-300, 1.0), (1e-45, 1.0), (1.0, 1e-300), (0.7, 1e-45)])
def test_vanishing_temperature_or_nucleus_is_greedy(temperature: float, top_p: float) -> None:
    """Dividing by 1e-300 overflows to inf/NaN; the limit of sampling there is argmax."""
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    sampler = Sampler(SamplingOptions(temperature=temperature, top_p=top_p, seed=1), 0, torch.device("cpu"))
    assert [sampler.next_token(logits) for _ in range(5)] == [1] * 5


@pytest.mark.parametrize("seed", [2**64 - 1, 2**70, -(2**70)])
def test_seeds_beyond_the_generator_are_reduced_deterministically(seed: int) -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))

    def draw() -> list[int]:
        sampler = Sampler(SamplingOptions(temperature=1.0, seed=seed), 0, torch.device("cpu"))
        return [sampler.next_token(logits) for _ in range(8)]

    assert draw() == draw()

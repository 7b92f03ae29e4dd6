"""Choosing the next token for one sequence, with OpenAI's sampling semantics.

Each sequence samples with its own ``torch.Generator`` so a request's ``seed`` makes its output
reproducible no matter which other requests share its batch.
"""

from __future__ import annotations

import secrets

import torch

from .base import SamplingOptions

# Below these, sampling is greedy (as vLLM's _SAMPLING_EPS): dividing by a vanishing temperature,
# or keeping a vanishing nucleus, overflows to inf/NaN instead of converging to argmax.
MIN_TEMPERATURE = 1e-5
MIN_TOP_P = 1e-5
_SEED_SPACE = 2**64  # torch.Generator.manual_seed takes [0, 2**64)


class Sampler:
    """Sampling state for one sequence: its generator and the tokens it produced so far."""

    def __init__(self, options: SamplingOptions, index: int, device: torch.device) -> None:
        self.options = options
        self.generator: torch.Generator | None = None
        if options.temperature >= MIN_TEMPERATURE and options.top_p >= MIN_TOP_P:
            # Reduced into the generator's range deterministically (the API refuses seeds beyond int64).
            seed = (options.seed + index) % _SEED_SPACE if options.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)
        self._has_penalty = options.presence_penalty != 0 or options.frequency_penalty != 0
        self._output_ids: list[int] = []

    def next_token(self, logits: torch.Tensor) -> int:
        """``logits``: float32 vector over the vocabulary for this sequence's last position."""
        options = self.options
        if self._has_penalty and self._output_ids:
            # OpenAI: mu[j] - c[j] * frequency_penalty - float(c[j] > 0) * presence_penalty
            ids = torch.tensor(self._output_ids, device=logits.device)
            counts = torch.bincount(ids, minlength=logits.shape[-1]).to(logits.dtype)
            logits = logits - counts * options.frequency_penalty - (counts > 0) * options.presence_penalty
        if self.generator is None:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(logits / options.temperature, dim=-1)
            if options.top_p < 1.0:
                probs = _top_p_filter(probs, options.top_p)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        self._output_ids.append(token)
        return token


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (nucleus)."""
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # Drop a token when the mass *before* it already reaches top_p; the top token always stays.
    drop = (cumulative - sorted_probs) >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum()

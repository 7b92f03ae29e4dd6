"""What the embedded engine learns from its model at start-up: the model on its device, its
tokenizer, how long a context it takes, which tokens end an answer, and what its forward calls
the KV cache.

Kept apart from the engine's scheduling (``local.py``): this runs once, on the engine's worker
thread before it starts serving, and every check here fails the start-up with one clear reason.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..devices import resolve_device, resolve_dtype
from ..errors import EngineError
from .cpu_linear import use_onednn_linears

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048  # a model whose config names no context length


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # the transformers model, on ``device``, in eval mode
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    cache_arg: str  # the forward's name for the KV cache
    max_model_len: int
    eos_ids: frozenset[int]
    vocab_size: int


def load_model(
    path: str,
    *,
    device: str,
    dtype: str,
    max_model_len: int | None,
    allow_long_context: bool,
    onednn_linears: bool = True,
) -> LoadedModel:
    """Load ``path`` (a Hub id or a local directory) for serving. ``max_model_len`` past the
    model's own ``max_position_embeddings`` is refused unless ``allow_long_context``. On a CPU
    the linear layers compute with oneDNN (``cpu_linear.py``) unless ``onednn_linears`` is off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_device(device)
    weights = resolve_dtype(dtype, where)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise EngineError(f"The tokenizer of {path} has no chat template.")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=weights).to(where).eval()  # type: ignore[arg-type]
    if where.type == "cpu" and onednn_linears:
        logger.info("%d linear layers computed by oneDNN", use_onednn_linears(model))
    # transformers renamed the forward's ``past_key_values`` to ``cache`` (5.2x; the old name goes
    # in 5.40) and vLLM's pin holds an older one: pass whichever this transformers takes.
    forward = inspect.signature(type(model).forward).parameters
    config = model.config
    eos = [tokenizer.eos_token_id]
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos += generation_eos if isinstance(generation_eos, list) else [generation_eos]
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=where,
        dtype=weights,
        cache_arg="cache" if "cache" in forward else "past_key_values",
        max_model_len=_context(getattr(config, "max_position_embeddings", None), max_model_len, allow_long_context),
        eos_ids=frozenset(int(t) for t in eos if t is not None),
        vocab_size=int(getattr(config, "vocab_size", 0) or len(tokenizer)),
    )


def _context(native: int | None, wanted: int | None, allow_long_context: bool) -> int:
    """The context length served: ``--max-model-len`` if set, else the model's own."""
    if wanted and native and wanted > native:
        if not allow_long_context:
            raise EngineError(
                f"--max-model-len {wanted} exceeds the model's max_position_embeddings ({native}); "
                "pass --allow-long-context to use it anyway"
            )
        logger.warning(
            "--max-model-len %d exceeds max_position_embeddings %d: answers past that may degrade", wanted, native
        )
    return wanted or native or DEFAULT_CONTEXT

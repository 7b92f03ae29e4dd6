"""``--engine vllm``: vLLM's ``AsyncLLM`` in process, with multi-LoRA (punica kernels, paged attention).

Written against vLLM 0.33.0 (the ``vllm`` extra pins it). vLLM is imported only when this engine
starts, so the module imports anywhere; ``tests/engine/test_vllm_contract.py`` checks, against the
real package, that every object we build and every method we call exists with the signature used.

Prompts are rendered here with the base tokenizer's chat template and passed as token ids, exactly
as the local engine renders them, so prompt accounting and templates match across engines. Each
adapter *version* becomes one ``LoRARequest`` with its own ``lora_int_id`` (never reused), so a
swap loads the new version beside the old one, and the registry removes the old one once drained.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, EngineUnavailable
from .base import AdapterRef, Engine, EngineHealth, GenerationDelta, GenerationRequest, SamplingOptions
from .prompts import check_context, render_chat, render_off_loop

logger = logging.getLogger(__name__)

# vLLM refuses any other --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class VllmOptions:
    model: str
    served_model_name: str
    max_model_len: int | None = None
    dtype: str = "auto"
    max_loras: int = 4
    max_lora_rank: int = 64
    max_cpu_loras: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.92

    def check(self) -> None:
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            allowed = ", ".join(map(str, VLLM_LORA_RANKS))
            raise ValueError(f"--max-lora-rank {self.max_lora_rank} is not accepted by vLLM; use one of {allowed}.")


def engine_args(options: VllmOptions) -> Any:
    """Our settings as vLLM's ``AsyncEngineArgs`` (a pure function: checked by contract tests)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    options.check()
    return AsyncEngineArgs(
        model=options.model,
        served_model_name=[options.served_model_name],
        max_model_len=options.max_model_len,
        dtype=options.dtype,
        enable_lora=True,
        max_loras=options.max_loras,
        max_lora_rank=options.max_lora_rank,
        max_cpu_loras=options.max_cpu_loras,
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_utilization,
    )


def sampling_params(options: SamplingOptions, max_tokens: int) -> Any:
    """Our sampling options as vLLM's ``SamplingParams``; temperature 0 is greedy in both."""
    from vllm import SamplingParams

    return SamplingParams(
        n=options.n,
        temperature=options.temperature,
        top_p=options.top_p,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        seed=options.seed,
        stop=list(options.stop) or None,
        max_tokens=max_tokens,
    )


def lora_request(adapter: AdapterRef) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=adapter.name, lora_int_id=adapter.adapter_id, lora_path=adapter.path)


class VllmEngine(Engine):
    def __init__(self, options: VllmOptions) -> None:
        options.check()  # fail at start with a clear message, before any GPU work
        self.options = options
        self._engine: Any = None
        self._tokenizer: Any = None
        self._loras: dict[int, Any] = {}
        self._running = 0
        self._detail = "not started"

    async def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self._detail = "loading model"
        self._tokenizer = AutoTokenizer.from_pretrained(self.options.model)
        self._engine = AsyncLLM.from_engine_args(engine_args(self.options))
        self.max_model_len = self._engine.model_config.max_model_len
        self._detail = "ready"

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        self._detail = "stopped"

    async def add_adapter(self, adapter: AdapterRef) -> None:
        request = lora_request(adapter)
        if not await self._require().add_lora(request):
            raise EngineError(f"vLLM could not load adapter {adapter.name}.")
        self._loras[adapter.adapter_id] = request

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self._loras.pop(adapter.adapter_id, None)
        await self._require().remove_lora(adapter.adapter_id)

    def health(self) -> EngineHealth:
        return EngineHealth(
            ready=self._engine is not None,
            detail=self._detail,
            running_requests=self._running,
            loaded_adapters=[r.lora_name for r in self._loras.values()],
        )

    def render_prompt(self, messages: tuple[dict[str, str], ...]) -> list[int]:
        return render_chat(self._tokenizer, messages)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        engine = self._require()
        prompt_ids = await render_off_loop(self._tokenizer, request.messages, self.max_model_len or 0)
        max_tokens = check_context(
            len(prompt_ids), request.sampling.max_tokens, self.max_model_len or 0, request.sampling.default_max_tokens
        )
        lora = self._loras.get(request.adapter.adapter_id) if request.adapter else None
        if request.adapter is not None and lora is None:
            raise EngineUnavailable(f"Adapter {request.adapter.name} is not loaded.")
        sent = [""] * request.sampling.n
        finished = [False] * request.sampling.n
        self._running += 1
        try:
            stream = engine.generate(
                {"prompt_token_ids": prompt_ids},
                sampling_params(request.sampling, max_tokens),
                request.request_id,
                lora_request=lora,
            )
            async for output in stream:
                for choice in output.outputs:
                    i = choice.index
                    if finished[i]:
                        continue
                    text = choice.text[len(sent[i]) :]  # vLLM's outputs are cumulative by default
                    sent[i] = choice.text
                    reason = choice.finish_reason if choice.finish_reason in ("stop", "length") else None
                    finished[i] = choice.finish_reason is not None
                    if text or reason:
                        yield GenerationDelta(i, text, reason, len(prompt_ids), len(choice.token_ids))
        finally:
            self._running -= 1
            if not all(finished):
                await engine.abort(request.request_id)  # the client went away: free vLLM's slot

    def _require(self) -> Any:
        if self._engine is None:
            raise EngineUnavailable("The vLLM engine is not running.")
        return self._engine

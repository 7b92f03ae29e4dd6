"""``--engine vllm``: vLLM's ``AsyncLLM`` in process, with multi-LoRA (punica kernels, paged attention).

Written against vLLM 0.33.0 (the ``vllm`` extra pins it). vLLM is imported only when this engine
starts, so the module imports anywhere; ``tests/engine/test_vllm_contract.py`` checks, against the
real package, that every object we build and every method we call exists with the signature used.

Prompts are rendered here with the base tokenizer's chat template and passed as token ids, exactly
as the local engine renders them, so prompt accounting and templates match across engines. Each
adapter *version* becomes one ``LoRARequest`` with its own ``lora_int_id`` (never reused), so a
swap loads the new version beside the old one, and the registry removes the old one once drained.

Tools, JSON and logprobs use vLLM's own machinery: the constraint (``grammar.output_tag``, the
same xgrammar structural tag the embedded engine compiles) goes to vLLM's structured outputs,
tool calls are read by vLLM's ``hermes`` parser, and logprobs come from vLLM's sampler.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, EngineUnavailable
from .base import (
    LOADING,
    VLLM_LORA_RANKS,
    AdapterRef,
    Engine,
    EngineHealth,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
    TokenLogprob,
    ToolCallDelta,
    finish_reason,
)
from .grammar import output_tag, refusal
from .logprobs import TokenBytes
from .prompts import check_context, render_chat, render_off_loop

logger = logging.getLogger(__name__)


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


def sampling_params(options: SamplingOptions, max_tokens: int, structured: Any = None) -> Any:
    """Our sampling options as vLLM's ``SamplingParams``; temperature 0 is greedy in both.
    ``logprobs=k`` makes vLLM return the chosen token's logprob and the k most likely."""
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
        logprobs=options.logprobs,
        structured_outputs=structured,
    )


def structured_outputs(request: GenerationRequest) -> Any:
    """The request's constraint as vLLM's ``StructuredOutputsParams`` (its xgrammar backend compiles
    the same structural tag as the embedded engine), or None. A schema xgrammar cannot compile is
    refused here with the same 400 as on the embedded engine."""
    tag = output_tag(request)
    if tag is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    text = tag.model_dump_json()
    problem = _grammar_problem(text)  # what vLLM's validation does, answered as our 400
    if problem is not None:
        error = refusal(request, problem)
        if error is not None:
            raise error from None
        return None
    return StructuredOutputsParams(structural_tag=text)


@functools.lru_cache(maxsize=256)
def _grammar_problem(tag: str) -> Exception | None:
    """Why xgrammar cannot build ``tag`` (None: it can); cached, so a schema is checked once."""
    import xgrammar as xgr

    try:
        xgr.Grammar.from_structural_tag(tag)
    except Exception as exc:
        return exc
    return None


class HermesToolCalls:
    """vLLM's ``hermes`` tool parser (the one ``--tool-call-parser hermes`` uses for Qwen2.5)
    behind the interface of ``server.engine.tool_calls.ToolCallParser``: text in, content and
    tool-call pieces out."""

    def __init__(self, tokenizer: Any) -> None:
        from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

        self._parser = Hermes2ProToolParser(tokenizer)
        self._text = ""
        self.called = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        previous, self._text = self._text, self._text + text
        delta = self._parser.extract_tool_calls_streaming(previous, self._text, text, [], [], [], None)
        if delta is None:
            return "", []
        pieces = []
        for call in delta.tool_calls or ():
            function = call.function
            name = getattr(function, "name", None) if function is not None else None
            arguments = getattr(function, "arguments", None) if function is not None else None
            pieces.append(ToolCallDelta(index=call.index, id=call.id, name=name, arguments=arguments or ""))
        self.called = self.called or any(piece.name for piece in pieces)
        return delta.content or "", pieces

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return "", []


def token_logprobs(
    entries: list[Any], token_ids: list[int], top: int, table: TokenBytes, skip: set[int]
) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token ``{token_id: Logprob}`` dicts (the chosen token and the ``top`` best, by
    rank) in OpenAI's shape, with exact bytes; tokens in ``skip`` (end of turn) are left out."""
    out = []
    for token_id, entry in zip(token_ids, entries, strict=False):
        if token_id in skip or entry is None:
            continue
        ranked = sorted(((lp.rank or 0, tid, lp.logprob) for tid, lp in entry.items()), key=lambda r: r[0])
        best = tuple(table.entry(tid, float(logprob)) for rank, tid, logprob in ranked if 0 < rank <= top)
        chosen = table.entry(token_id, float(entry[token_id].logprob))
        out.append(TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, best))
    return tuple(out)


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
        self._token_bytes: TokenBytes | None = None
        self._running = 0
        self._detail = "not started"

    async def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self._detail = "loading model"
        self._tokenizer = AutoTokenizer.from_pretrained(self.options.model)
        self._token_bytes = TokenBytes(self._tokenizer)
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

    @property
    def adapter_slots(self) -> int | None:
        """vLLM batches ``max_loras`` adapters and admits first come, first served: the gateway
        queues fairly in front of it."""
        return self.options.max_loras

    def health(self) -> EngineHealth:
        return EngineHealth(
            ready=self._engine is not None,
            detail=self._detail,
            running_requests=self._running,
            loaded_adapters=[r.lora_name for r in self._loras.values()],
        )

    def unavailable(self, base: str = "") -> str | None:
        return None if self._engine is not None else LOADING

    def render_prompt(self, messages: tuple[dict[str, Any], ...]) -> list[int]:
        return render_chat(self._tokenizer, messages)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        engine = self._require()
        tools = request.tools.tools if request.tools is not None else ()
        prompt_ids = await render_off_loop(
            self._tokenizer, request.messages, self.max_model_len or 0, tools, request.chat_template
        )
        options = request.sampling
        max_tokens = check_context(
            len(prompt_ids), options.max_tokens, self.max_model_len or 0, options.default_max_tokens
        )
        lora = self._loras.get(request.adapter.adapter_id) if request.adapter else None
        if request.adapter is not None and lora is None:
            raise EngineUnavailable(f"Adapter {request.adapter.name} is not loaded.")
        params = sampling_params(options, max_tokens, structured_outputs(request))
        n = options.n
        calling = request.tools is not None and request.tools.calls_allowed
        parsers = [HermesToolCalls(self._tokenizer) for _ in range(n)] if calling else []
        sent, logprobs_sent, finished = [""] * n, [0] * n, [False] * n
        skip = {self._tokenizer.eos_token_id}
        self._running += 1
        try:
            stream = engine.generate({"prompt_token_ids": prompt_ids}, params, request.request_id, lora_request=lora)
            async for output in stream:
                for choice in output.outputs:
                    i = choice.index
                    if finished[i]:
                        continue
                    text = choice.text[len(sent[i]) :]  # vLLM's outputs are cumulative by default
                    sent[i] = choice.text
                    finished[i] = choice.finish_reason is not None
                    calls: list[ToolCallDelta] = []
                    if parsers:
                        text, calls = parsers[i].feed(text)
                    reason = finish_reason(choice.finish_reason, tool_called=bool(parsers) and parsers[i].called)
                    logprobs = None
                    if options.logprobs is not None and self._token_bytes is not None:
                        start = logprobs_sent[i]
                        logprobs_sent[i] = len(choice.token_ids)
                        logprobs = token_logprobs(
                            list(choice.logprobs or [])[start:],
                            list(choice.token_ids)[start:],
                            options.logprobs,
                            self._token_bytes,
                            skip,
                        )
                    if text or calls or reason or logprobs:
                        yield GenerationDelta(
                            i,
                            text,
                            reason,
                            len(prompt_ids),
                            len(choice.token_ids),
                            tool_calls=tuple(calls),
                            logprobs=logprobs,
                        )
        finally:
            self._running -= 1
            if not all(finished):
                await engine.abort(request.request_id)  # the client went away: free vLLM's slot

    def _require(self) -> Any:
        if self._engine is None:
            raise EngineUnavailable("The vLLM engine is not running.")
        return self._engine

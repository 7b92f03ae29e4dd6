"""The vLLM engine's own logic, with a stand-in for ``AsyncLLM`` (vLLM cannot run here; the contract
tests check the real API's shape): cumulative outputs become deltas, usage is counted, a client
that leaves aborts its request, and prompts that do not fit are refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.engine.base import GenerationRequest, SamplingOptions
from server.engine.vllm_engine import VllmEngine, VllmOptions
from server.errors import ContextLengthExceeded


class StandInAsyncLLM:
    """Yields what AsyncLLM.generate yields by default: cumulative text per output, then finished."""

    def __init__(self, pieces: list[str], finish: str = "stop") -> None:
        self.pieces, self.finish = pieces, finish
        self.aborted: list[str] = []
        self.prompts: list[Any] = []

    async def generate(
        self, prompt: Any, params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Any]:
        self.prompts.append(prompt)
        self.max_tokens = params.max_tokens
        text, tokens = "", []
        for i, piece in enumerate(self.pieces):
            text += piece
            tokens.append(i)
            last = i == len(self.pieces) - 1
            output = SimpleNamespace(
                index=0, text=text, token_ids=list(tokens), finish_reason=self.finish if last else None
            )
            yield SimpleNamespace(outputs=[output], finished=last)
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.fixture
def engine(base_model: Path, monkeypatch: pytest.MonkeyPatch) -> VllmEngine:
    from transformers import AutoTokenizer

    from server.engine import vllm_engine

    # Building the real SamplingParams needs vLLM; tests/engine/test_vllm_contract.py checks that part.
    monkeypatch.setattr(
        vllm_engine,
        "sampling_params",
        lambda options, max_tokens, structured=None: SimpleNamespace(max_tokens=max_tokens),
    )

    engine = VllmEngine(VllmOptions(model=str(base_model), served_model_name="m"))
    engine._tokenizer = AutoTokenizer.from_pretrained(base_model)  # what start() loads
    engine.max_model_len = 64
    return engine


def request(**sampling: Any) -> GenerationRequest:
    return GenerationRequest("r1", ({"role": "user", "content": "Where is my order?"},), SamplingOptions(**sampling))


def test_cumulative_outputs_become_deltas_with_usage(engine: VllmEngine) -> None:
    engine._engine = StandInAsyncLLM(["Your ", "order ", "ships."])

    async def collect() -> list[Any]:
        return [d async for d in engine.generate(request(max_tokens=10))]

    deltas = asyncio.run(collect())
    assert [d.text for d in deltas] == ["Your ", "order ", "ships."]
    assert [d.finish_reason for d in deltas] == [None, None, "stop"]
    assert deltas[-1].completion_tokens == 3
    assert deltas[-1].prompt_tokens == len(engine.render_prompt(request().messages))
    assert engine._engine.prompts[0] == {"prompt_token_ids": engine.render_prompt(request().messages)}
    assert engine._engine.aborted == []  # finished requests are not aborted
    assert engine._engine.max_tokens == 10


def test_a_client_that_leaves_aborts_the_request(engine: VllmEngine) -> None:
    engine._engine = StandInAsyncLLM(["a"] * 20, finish="length")

    async def leave_after_two() -> None:
        stream = engine.generate(request(max_tokens=20))
        await anext(stream)
        await anext(stream)
        await stream.aclose()

    asyncio.run(leave_after_two())
    assert engine._engine.aborted == ["r1"] and engine.health().running_requests == 0


def test_prompts_that_do_not_fit_are_refused(engine: VllmEngine) -> None:
    engine._engine = StandInAsyncLLM(["x"])

    async def ask(**sampling: Any) -> None:
        async for _ in engine.generate(request(**sampling)):
            pass

    with pytest.raises(ContextLengthExceeded, match="64 tokens"):
        asyncio.run(ask(max_tokens=60))

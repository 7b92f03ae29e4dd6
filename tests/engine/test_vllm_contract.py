"""Contract tests: our vLLM engine against the real, pinned ``vllm`` package's Python API.

vLLM cannot run here (no GPU, and no CPU wheel), but its pure-Python classes import on a CPU torch
after ``pip install --no-deps vllm==0.33.0`` plus its light dependencies: ``make test-vllm`` builds
that environment (``.venv-vllm``) and runs this file there; ``make test`` runs it too when the
environment exists. Elsewhere these tests are skipped with that reason.
"""

from __future__ import annotations

import inspect

import pytest

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` builds .venv-vllm and runs these"
)

from server.engine.base import AdapterRef, SamplingOptions  # noqa: E402
from server.engine.vllm_engine import (
    VLLM_LORA_RANKS,
    VllmEngine,
    VllmOptions,
    engine_args,
    lora_request,
    sampling_params,
)  # noqa: E402

pytestmark = pytest.mark.vllm_contract


def test_pinned_version() -> None:
    assert vllm.__version__.startswith("0.33.0")


def test_engine_args_carry_our_settings(base_model) -> None:  # type: ignore[no-untyped-def]
    from vllm.engine.arg_utils import AsyncEngineArgs

    # A local model: building the args resolves the model, and nothing may be downloaded here.
    options = VllmOptions(
        model=str(base_model),
        served_model_name="qwen",
        max_model_len=8192,
        dtype="bfloat16",
        max_loras=8,
        max_lora_rank=32,
        max_cpu_loras=64,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
    )
    args = engine_args(options)
    assert isinstance(args, AsyncEngineArgs)
    assert (args.model, args.served_model_name, args.max_model_len, args.dtype) == (
        str(base_model),
        ["qwen"],
        8192,
        "bfloat16",
    )
    assert args.enable_lora is True
    assert (args.max_loras, args.max_lora_rank, args.max_cpu_loras) == (8, 32, 64)
    assert (args.tensor_parallel_size, args.gpu_memory_utilization) == (2, 0.85)


@pytest.mark.parametrize("rank", [2, 12, 48, 1024])
def test_ranks_vllm_refuses_are_refused_at_start_with_the_allowed_set(rank: int) -> None:
    with pytest.raises(ValueError, match="320"):
        VllmEngine(VllmOptions(model="m", served_model_name="m", max_lora_rank=rank))


def test_our_allowed_ranks_are_vllms() -> None:
    from vllm.config import lora as lora_config

    source = inspect.getsource(lora_config)
    for rank in VLLM_LORA_RANKS:
        assert str(rank) in source


def test_sampling_params_mirror_the_request() -> None:
    from vllm import SamplingParams

    params = sampling_params(
        SamplingOptions(
            max_tokens=None,
            temperature=0.7,
            top_p=0.9,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            seed=7,
            stop=("END", "\n\n"),
            n=3,
        ),
        max_tokens=128,
    )
    assert isinstance(params, SamplingParams)
    assert (params.n, params.temperature, params.top_p, params.seed, params.max_tokens) == (3, 0.7, 0.9, 7, 128)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert params.stop == ["END", "\n\n"] and params.include_stop_str_in_output is False  # OpenAI drops the stop text
    greedy = sampling_params(SamplingOptions(temperature=0.0), max_tokens=5)
    assert greedy.temperature == 0.0 and greedy.stop == []


def test_each_adapter_version_is_its_own_lora_request() -> None:
    from vllm.lora.request import LoRARequest

    first = lora_request(AdapterRef("shop-a", 1, "/adapters/.versions/p/1/shop-a"))
    second = lora_request(AdapterRef("shop-a", 2, "/adapters/.versions/p/2/shop-a"))
    assert isinstance(first, LoRARequest)
    assert (first.lora_name, first.lora_int_id, first.lora_path) == ("shop-a", 1, "/adapters/.versions/p/1/shop-a")
    assert first.lora_int_id != second.lora_int_id


def _parameters(function: object) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_every_async_llm_method_we_call_exists_as_we_call_it() -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    assert isinstance(inspect.getattr_static(AsyncLLM, "from_engine_args"), classmethod)
    assert "engine_args" in _parameters(AsyncLLM.from_engine_args)
    generate = _parameters(AsyncLLM.generate)
    assert list(generate)[1:4] == ["prompt", "sampling_params", "request_id"]
    assert generate["lora_request"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.isasyncgenfunction(AsyncLLM.generate)
    for name, argument in (("abort", "request_id"), ("add_lora", "lora_request"), ("remove_lora", "lora_id")):
        method = getattr(AsyncLLM, name)
        assert inspect.iscoroutinefunction(method), name
        assert argument in _parameters(method), (name, list(_parameters(method)))
    assert callable(AsyncLLM.shutdown)
    assert "self.model_config" in inspect.getsource(AsyncLLM.__init__)


def test_outputs_have_the_fields_we_read() -> None:
    from vllm.inputs import TokensPrompt
    from vllm.outputs import CompletionOutput, RequestOutput

    assert "prompt_token_ids" in TokensPrompt.__annotations__
    fields = _parameters(CompletionOutput)
    assert {"index", "text", "token_ids", "finish_reason"} <= set(fields)
    assert "outputs" in _parameters(RequestOutput)

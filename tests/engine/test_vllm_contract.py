"""Contract tests: our vLLM engine against the real, pinned ``vllm`` package's Python API.

vLLM cannot run here (no GPU, and no CPU wheel), but its pure-Python classes import on a CPU torch
after ``pip install --no-deps vllm==0.33.0`` plus its light dependencies: ``make test-vllm`` builds
that environment (``.venv-vllm``) and runs this file there; ``make test`` runs it too when the
environment exists. Elsewhere these tests are skipped with that reason.
"""

from __future__ import annotations

import inspect
import json

import pytest

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` builds .venv-vllm and runs these"
)

from server.engine.base import AdapterRef, GenerationRequest, OutputFormat, SamplingOptions, ToolSpec  # noqa: E402
from server.engine.vllm_engine import (  # noqa: E402
    VLLM_LORA_RANKS,
    HermesToolCalls,
    VllmEngine,
    VllmOptions,
    engine_args,
    lora_request,
    sampling_params,
    structured_outputs,
    token_logprobs,
)

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


# ------------------------------------------------------------------ tools, structured outputs, logprobs

_TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "maxLength": 8}}},
        },
    },
)


def _constrained(**fields: object) -> GenerationRequest:
    return GenerationRequest("r", ({"role": "user", "content": "hi"},), SamplingOptions(), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"output_format": OutputFormat("json_object")},
        {"output_format": OutputFormat("json_schema", {"type": "object", "properties": {"a": {"type": "integer"}}})},
        {"tools": ToolSpec(_TOOLS, choice="auto")},
        {"tools": ToolSpec(_TOOLS, choice="required", parallel=False)},
        {"tools": ToolSpec(_TOOLS, choice="get_order_status", named=True)},
    ],
)
def test_constraints_are_vllm_structured_outputs_its_validator_accepts(fields: dict[str, object]) -> None:
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    structured = structured_outputs(_constrained(**fields))
    assert isinstance(structured, StructuredOutputsParams) and structured.structural_tag
    params = sampling_params(SamplingOptions(logprobs=3), max_tokens=16, structured=structured)
    assert params.structured_outputs is structured and params.logprobs == 3
    validate_xgrammar_grammar(params)  # vLLM's own check, as its input processor runs it


def test_no_constraint_and_bad_schemas() -> None:
    from server.errors import InvalidRequest

    assert structured_outputs(_constrained()) is None
    assert structured_outputs(_constrained(tools=ToolSpec(_TOOLS, choice="none"))) is None
    with pytest.raises(InvalidRequest) as refused:
        structured_outputs(_constrained(output_format=OutputFormat("json_schema", {"type": "objectx"})))
    assert refused.value.param == "response_format.json_schema.schema" and "objectx" in refused.value.message


WELL_FORMED = [
    'Let me check.<tool_call>\n{"name": "get_order_status", "arguments": {"order_id": "A1001"}}\n</tool_call>',
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
    '<tool_call>\n{"name": "b", "arguments": {"q": [1, {"r": "}"}]}}\n</tool_call>',
    "No tool needed: returns take 7 days.",
]


@pytest.mark.parametrize("text", WELL_FORMED)
@pytest.mark.parametrize("pieces", [1, 3, 9, 40])
def test_our_hermes_parser_agrees_with_vllms(base_model, text: str, pieces: int) -> None:  # type: ignore[no-untyped-def]
    """The embedded engine's parser and vLLM's, fed the same text in the same pieces, send the same
    content and the same calls (name, then arguments that join to the same JSON)."""
    import random

    from transformers import AutoTokenizer

    from server.engine.tool_calls import ToolCallParser

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    cuts = sorted(random.Random(pieces).sample(range(1, len(text)), min(pieces - 1, len(text) - 1)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]

    def run(parser) -> tuple[str, list[tuple[str, str]]]:  # type: ignore[no-untyped-def]
        content, calls = "", {}
        for step in [*chunks, None]:
            out, deltas = parser.feed(step) if step is not None else parser.finish()
            content += out
            for delta in deltas:
                call = calls.setdefault(delta.index, ["", ""])
                call[0] += delta.name or ""
                call[1] += delta.arguments
        return content, [tuple(c) for _, c in sorted(calls.items())]

    ours, theirs = run(ToolCallParser()), run(HermesToolCalls(tokenizer))
    assert ours[0] == theirs[0]
    assert [(name, json.loads(args)) for name, args in ours[1]] == [(n, json.loads(a)) for n, a in theirs[1]]


def test_vllm_logprobs_become_openai_entries(base_model) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer
    from vllm.logprobs import Logprob

    from server.engine.logprobs import TokenBytes

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    ids = tokenizer.encode("Hi there", add_special_tokens=False)[:2]
    eos = tokenizer.eos_token_id
    entries = [
        {ids[0]: Logprob(-0.1, rank=1), 7: Logprob(-2.5, rank=2)},
        {ids[1]: Logprob(-3.0, rank=4), 5: Logprob(-0.5, rank=1), 6: Logprob(-1.0, rank=2)},
        {eos: Logprob(-0.01, rank=1)},
    ]
    out = token_logprobs(entries, [*ids, eos], 2, TokenBytes(tokenizer), {eos})
    assert len(out) == 2  # the end-of-turn token is not part of the content
    assert bytes(b for e in out for b in e.bytes).decode() == tokenizer.decode(ids)
    assert out[0].logprob == -0.1 and [t.logprob for t in out[0].top] == [-0.1, -2.5]
    assert out[1].logprob == -3.0 and [t.logprob for t in out[1].top] == [-0.5, -1.0]  # chosen outside the top 2

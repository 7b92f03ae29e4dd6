"""A tool round trip with the openai client: an adapter trained by ``lora-gateway train`` on
tool-calling data (examples/order_lookup.jsonl's first conversation) calls the tool it learned,
then answers from the tool's result. Asserted on what it was trained to say, not on luck."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.support import running_server

EXAMPLE = json.loads((Path(__file__).parents[2] / "examples" / "order_lookup.jsonl").read_text().splitlines()[0])
TOOLS = EXAMPLE["tools"]
QUESTION, CALL, RESULT, ANSWER = EXAMPLE["messages"]


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wider than the shared fixture: the tools' system prompt makes a 300-token context to learn in."""
    from server.offline_model import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(hidden_size=128, intermediate_size=256)
    return build_tiny_model(tmp_path_factory.mktemp("wide-base") / "m", spec)


TRAINING = dict(
    epochs=700,  # one conversation, full batch: about 30 s on two cores
    lr=5e-3,
    batch_size=1,
    grad_accum=1,
    rank=16,
    alpha=32,
    dropout=0.0,
    warmup_ratio=0.05,
    allow_small=True,
)


def _train_tool_adapter(base: Path, root: Path) -> None:
    from server.trainer import TrainConfig, train

    data = root / "order_lookup.jsonl"
    data.write_text(json.dumps(EXAMPLE, ensure_ascii=False) + "\n")
    config = TrainConfig(
        base=str(base),
        data=[str(data)],
        name="orders",
        adapters_dir=str(root / "adapters"),
        output_dir=str(root / "run"),
        progress=False,
        **TRAINING,  # type: ignore[arg-type]
    )
    train(config)


@pytest.fixture(scope="module")
def tool_adapter(wide_base: Path) -> Path:
    """Trained by the trainer once per inputs (tests/artifacts.py); read-only, copied by its users."""
    from tests.artifacts import artifact, server_sources

    sources = [wide_base, *server_sources("trainer", "registry", "evaluation", "engine/prompts.py")]
    inputs = {"example": EXAMPLE, "training": TRAINING}
    cached = artifact("tool-adapter", inputs, sources, lambda root: _train_tool_adapter(wide_base, root))
    return cached / "adapters" / "orders"


@pytest.fixture(scope="module")
def orders_client(wide_base: Path, tool_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from openai import OpenAI

    from server.app import create_app

    adapters = tmp_path_factory.mktemp("served") / "adapters"
    shutil.copytree(tool_adapter, adapters / "orders")
    with running_server(create_app(make_settings(wide_base, adapters))) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            yield client


def _ask(client, messages, stream: bool):  # type: ignore[no-untyped-def]
    """(content, [(name, arguments)], finish_reason), streamed or not, greedy."""
    kwargs = dict(model="orders", messages=messages, tools=TOOLS, temperature=0, max_tokens=80)
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        calls = [(c.function.name, c.function.arguments, c.id) for c in choice.message.tool_calls or []]
        return choice.message.content, calls, choice.finish_reason
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, ["", "", piece.id])
                call[0] += piece.function.name or ""
                call[1] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return content or None, [tuple(c) for _, c in sorted(calls.items())], finish


@pytest.mark.parametrize("stream", [False, True])
def test_call_then_answer_from_the_tool_result(orders_client, stream: bool) -> None:  # type: ignore[no-untyped-def]
    content, calls, finish = _ask(orders_client, [QUESTION], stream)
    assert finish == "tool_calls" and content is None
    ((name, arguments, call_id),) = calls
    expected = CALL["tool_calls"][0]["function"]
    assert name == expected["name"]
    assert json.loads(arguments) == json.loads(expected["arguments"])
    # The client runs the tool and sends its result back under the call's id.
    history = [
        QUESTION,
        {
            "role": "assistant",
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": RESULT["content"]},
    ]
    content, calls, finish = _ask(orders_client, history, stream)
    assert (content, calls, finish) == (ANSWER["content"], [], "stop")


def test_tool_choice_none_never_calls(orders_client) -> None:  # type: ignore[no-untyped-def]
    """The adapter would call, but tool_choice 'none' forbids it: what it writes is content."""
    response = orders_client.chat.completions.create(
        model="orders", messages=[QUESTION], tools=TOOLS, tool_choice="none", temperature=0, max_tokens=60
    )
    choice = response.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)

"""Adapter profiles (server/registry/profile.py): validated like the weights, versioned with them,
listed by /v1/adapters, applied before any engine sees the request; request fields always win."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.errors import AdapterRejected
from server.openai.protocol import ChatCompletionRequest
from server.registry.profile import AdapterProfile, read_profile
from server.terms.layout import PROFILE_FILE
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer admin-secret"}
ASK = [{"role": "user", "content": QUESTION}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"temperature": 3}', "temperature"),
        ('{"greeting": "hi"}', "greeting"),
        ('{"chat_template": "{% for m in messages %}"}', "not a valid Jinja template"),
        ('{"tool_choice": "required"}', "need tools"),
        (json.dumps({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}}), "not in tools"),
        ('{"response_format": {"type": "yaml"}}', "response_format"),
        ('{"stop": ["a", "b", "c", "d", "e"]}', "stop"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_a_bad_profile_is_refused_with_a_reason(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / PROFILE_FILE).write_text(text)
    with pytest.raises(AdapterRejected) as refused:
        read_profile(tmp_path)
    assert refused.value.reason == "bad_profile" and reason in str(refused.value), str(refused.value)


def test_no_profile_is_none_and_a_good_one_parses(tmp_path: Path) -> None:
    assert read_profile(tmp_path) is None
    (tmp_path / PROFILE_FILE).write_text(json.dumps({"system_prompt": "Be brief.", "tools": [TOOL]}))
    profile = read_profile(tmp_path)
    assert profile is not None and profile.system_prompt == "Be brief." and profile.tools[0].function.name == "lookup"


def test_request_fields_win() -> None:
    profile = AdapterProfile(system_prompt="Be brief.", temperature=0.2, stop=["END"], tools=[TOOL])
    bare = profile.apply_to(ChatCompletionRequest(model="m", messages=ASK))
    assert [m.role for m in bare.messages] == ["system", "user"] and bare.messages[0].content == "Be brief."
    assert (bare.temperature, bare.stop, bare.tools[0].function.name) == (0.2, ["END"], "lookup")
    own = profile.apply_to(
        ChatCompletionRequest(
            model="m",
            messages=[{"role": "developer", "content": "Mine."}, *ASK],
            temperature=0.9,
            stop="STOP",
            tools=[{**TOOL, "function": {**TOOL["function"], "name": "mine"}}],
        )
    )
    assert [m.content for m in own.messages] == ["Mine.", QUESTION]
    assert (own.temperature, own.stop, [t.function.name for t in own.tools]) == (0.9, "STOP", ["mine"])


@pytest.fixture
def gateway(base_model: Path, adapters_dir: Path) -> Iterator[str]:
    from server.app import create_app

    with running_server(create_app(make_settings(base_model, adapters_dir, admin_key="admin-secret"))) as url:
        yield url


def _with_profile(adapters_dir: Path, source: Path, name: str, profile: dict[str, object]) -> Path:
    staging = adapters_dir.parent / f"staging-{name}"
    shutil.copytree(source, staging)
    (staging / PROFILE_FILE).write_text(json.dumps(profile))
    staging.rename(adapters_dir / name)  # published whole, as `adapters publish` does
    return adapters_dir / name


def _adapters(url: str) -> dict[str, dict[str, object]]:
    return {a["name"]: a for a in httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]}


def _ask(url: str, model: str, **fields: object) -> dict:  # type: ignore[type-arg]
    body = {"model": model, "messages": ASK, "temperature": 0, **fields}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_profile_serves_its_defaults_and_is_versioned(gateway: str, adapters_dir: Path, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    path = _with_profile(adapters_dir, trained_adapters["alpha"], "alpha-brief", {"max_tokens": 3})
    wait_for(lambda: _adapters(gateway).get("alpha-brief", {}).get("state") == "ready", timeout=30)
    listed = _adapters(gateway)["alpha-brief"]
    assert listed["profile"] == {"max_tokens": 3} and listed["active_version"] == 1
    short = _ask(gateway, "alpha-brief")
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    assert ANSWERS["alpha"].startswith(short["choices"][0]["message"]["content"])
    assert _ask(gateway, "alpha-brief", max_tokens=40)["choices"][0]["message"]["content"] == ANSWERS["alpha"]

    # A new profile is a new version of the adapter (same weights); the stop sequence now applies.
    (path / PROFILE_FILE).write_text(json.dumps({"stop": ["ships"]}))
    wait_for(lambda: _adapters(gateway)["alpha-brief"].get("active_version") == 2, timeout=30)
    stopped = _ask(gateway, "alpha-brief", max_tokens=40)["choices"][0]
    assert stopped["message"]["content"] == ANSWERS["alpha"].split("ships")[0]

    # A bad profile is refused; the good version keeps serving.
    (path / PROFILE_FILE).write_text(json.dumps({"temperature": "hot"}))
    wait_for(lambda: "profile.json" in str(_adapters(gateway)["alpha-brief"].get("last_error") or ""), timeout=30)
    assert _adapters(gateway)["alpha-brief"]["active_version"] == 2
    assert (
        _ask(gateway, "alpha-brief", max_tokens=40)["choices"][0]["message"]["content"] == stopped["message"]["content"]
    )


def test_system_prompt_template_and_output_format_reach_the_engine(
    gateway: str, adapters_dir: Path, base_model: Path, trained_adapters
) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from server.offline_model import CHATML_TEMPLATE

    template = CHATML_TEMPLATE.replace("You are a helpful assistant.", "You work at Acme.")
    _with_profile(
        adapters_dir,
        trained_adapters["beta"],
        "beta-acme",
        {"system_prompt": "Answer in one line.", "chat_template": template, "response_format": {"type": "json_object"}},
    )
    wait_for(lambda: _adapters(gateway).get("beta-acme", {}).get("state") == "ready", timeout=30)
    assert _adapters(gateway)["beta-acme"]["profile"]["chat_template"] == f"<{len(template)} characters>"
    tokenizer = AutoTokenizer.from_pretrained(base_model)

    def prompt_tokens(messages: list[dict[str, str]], chat_template: str | None = None) -> int:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        return len(tokenizer.encode(text, add_special_tokens=False))

    answer = _ask(gateway, "beta-acme", max_tokens=60)
    system = [{"role": "system", "content": "Answer in one line."}, *ASK]
    assert answer["usage"]["prompt_tokens"] == prompt_tokens(system)
    content = answer["choices"][0]["message"]["content"]
    assert content.lstrip().startswith("{")  # constrained to a JSON object by the profile
    # The request's own system prompt wins; the profile's template is what renders it.
    own = [{"role": "system", "content": "Mine."}, *ASK]
    answer = _ask(gateway, "beta-acme", messages=own, response_format={"type": "text"}, max_tokens=5)
    assert answer["usage"]["prompt_tokens"] == prompt_tokens(own, template)
    # Without any system message, the profile's template would put its own default: the profile's
    # system prompt comes first, so that default never shows.
    assert prompt_tokens(ASK, template) != prompt_tokens(ASK)


def test_publishing_copies_the_profile_and_the_gate_with_the_weights(
    trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """A rollback or an install republishes a kept version with ``publish_adapter``: without its
    profile the directory would no longer hold that version (a restart would take it as a new one)."""
    from server.registry.publish import publish_adapter

    source = tmp_path / "source"
    shutil.copytree(trained_adapters["alpha"], source)
    (source / PROFILE_FILE).write_text(json.dumps({"system_prompt": "You are Alpha."}))
    (source / "eval.json").write_text(json.dumps({"min": {"exact": 1}, "test_set": "cases.jsonl"}))
    (source / "cases.jsonl").write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["alpha"]}) + "\n")
    (source / "optimizer.pt").write_bytes(b"not copied")
    published = publish_adapter(source, "alpha", tmp_path / "adapters")
    names = {p.name for p in published.iterdir()}
    assert {PROFILE_FILE, "eval.json", "cases.jsonl"} <= names and "optimizer.pt" not in names

"""Several bases behind one gateway (``engine/several_bases.py``, ``registry/bases.py``): each
adapter answered by the base it was trained on, both bases listed, limits, keys and metrics per
base; with real trained adapters on two offline bases of different shapes, a real server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.registry.base_model import BaseModelSpec
from server.registry.bases import Bases, ServedBase
from server.registry.publish import publish_adapter
from server.terms.layout import SPLIT_FILE
from tests.conftest import SECOND_ANSWER, make_settings
from tests.support import ANSWERS, QUESTION, metric_value, running_server, wait_for

ASK = [{"role": "user", "content": QUESTION}]


def chat(url: str, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": ASK, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_an_adapter_belongs_to_the_base_it_was_trained_on(base_model: Path, second_base: Path) -> None:
    first = ServedBase("tiny", str(base_model), BaseModelSpec.from_pretrained(str(base_model)))
    second = ServedBase("wide", str(second_base), BaseModelSpec.from_pretrained(str(second_base)), ("wide-v1",))
    bases = Bases([first, second])
    assert bases.ids == ["tiny", "wide"] and bases.default is first
    assert bases.of_adapter(str(second_base), None) is second  # its path, as peft records it
    assert bases.of_adapter("wide-v1", None) is second  # an alias
    assert bases.of_adapter("moved/elsewhere", second.fingerprint) is second  # a fingerprint outranks the name
    assert bases.of_adapter(None, None) is first  # nothing declared: the default (shapes decide)
    assert bases.of_adapter("Qwen/Qwen2.5-7B-Instruct", None) is None
    assert second.spec is not None and "wide" in second.spec.names  # validation knows every name of it
    named_only = ServedBase("remote-only", "/volume/of/the/upstream", None)
    assert not bases.add(ServedBase("wide", str(second_base), None))  # known, with a spec: kept
    assert bases.add(named_only) and bases.of_adapter("/volume/of/the/upstream", None) is named_only


ADMIN = {"Authorization": "Bearer several-admin"}


@pytest.fixture(scope="module")
def two_bases(
    base_model: Path,
    second_base: Path,
    trained_adapters: dict[str, Path],
    second_base_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path]]:
    """A gateway serving the tiny base (alpha, shop) and the wide one (gamma) in one process."""
    from server.app import create_app

    directory = tmp_path_factory.mktemp("two-bases") / "adapters"
    directory.mkdir()
    shutil.copytree(trained_adapters["alpha"], directory / "alpha")
    shutil.copytree(trained_adapters["alpha"], directory / "shop")
    shutil.copytree(second_base_adapter, directory / "gamma")
    settings = make_settings(base_model, directory, extra_base=[f"wide={second_base}"], admin_key="several-admin")
    with running_server(create_app(settings)) as url:
        yield url, directory


def adapters(url: str) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]}


def test_two_bases_in_one_process(two_bases: tuple[str, Path], second_base_adapter: Path, tmp_path: Path) -> None:
    url, _ = two_bases
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert {"tiny-base", "wide", "alpha", "gamma"} <= set(models)
    assert models["alpha"]["parent"] == "tiny-base" and models["gamma"]["parent"] == "wide"
    assert models["wide"].get("parent") is None

    assert chat(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
    assert chat(url, "gamma").json()["choices"][0]["message"]["content"] == SECOND_ANSWER
    for base in ("tiny-base", "wide"):  # each base answers for itself
        answer = chat(url, base, max_tokens=4)
        assert answer.status_code == 200 and answer.json()["model"] == base

    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "lora_gateway_requests_total", model="gamma", base="wide", status="200") >= 1
    assert metric_value(metrics, "lora_gateway_requests_total", model="alpha", base="tiny-base") >= 1
    assert metric_value(metrics, "lora_gateway_requests_total", model="wide", base="wide") >= 1
    assert adapters(url)["gamma"]["state"] == "ready" and adapters(url)["gamma"]["base"] == "wide"

    # gamma's files published as a new version of alpha: alpha now answers from the wide base
    shutil.copytree(second_base_adapter, tmp_path / "gamma-as-alpha")
    httpx.post(
        f"{url}/v1/load_lora_adapter",
        json={"lora_name": "alpha", "lora_path": str(tmp_path / "gamma-as-alpha"), "load_inplace": True},
        headers=ADMIN,
        timeout=60,
    ).raise_for_status()
    moved = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}["alpha"]
    assert moved["parent"] == "wide"
    assert chat(url, "alpha").json()["choices"][0]["message"]["content"] == SECOND_ANSWER


def test_a_split_compares_versions_of_one_base(
    two_bases: tuple[str, Path], second_base_adapter: Path, tmp_path: Path
) -> None:
    url, directory = two_bases
    canary = tmp_path / "canary"
    shutil.copytree(second_base_adapter, canary)
    (canary / SPLIT_FILE).write_text(json.dumps({"canary": 30}))  # the wide base's weights as shop's canary
    publish_adapter(canary, "shop", directory)
    wait_for(lambda: (adapters(url)["shop"].get("rejected") or {}).get("reason") == "split_across_bases", timeout=30)
    shop = adapters(url)["shop"]
    assert shop["active_version"] == 1 and shop["split"] is None  # the tiny base's version serves on, alone
    assert chat(url, "shop").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]


def test_eval_compares_models_across_bases(two_bases: tuple[str, Path], tmp_path: Path) -> None:
    from server.cli import main

    url, _ = two_bases
    data = tmp_path / "gamma.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": SECOND_ANSWER}) + "\n")
    args = ["eval", "--data", str(data), "--url", url, "--model", "gamma", "--model", "shop", "--max-tokens", "60"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--name", "across", "--retention"]) == 0
    report = json.loads((tmp_path / "runs" / "across" / "report.json").read_text())
    scored = {m["model"]: m for m in report["models"]}
    assert scored["gamma"]["exact"] == 1.0 and scored["shop"]["exact"] == 0.0
    kept = report["retention"]
    assert kept["bases"] == {"tiny-base": "tiny-base", "wide": "wide", "gamma": "wide", "shop": "tiny-base"}
    gamma = kept["models"]["gamma"]
    assert gamma["f1_vs_base"] == gamma["f1"] - kept["models"]["wide"]["f1"]  # against its own base


def test_an_adapter_of_a_base_not_served_is_refused_naming_the_bases(
    base_model: Path, second_base_adapter: Path, tmp_path: Path
) -> None:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    shutil.copytree(second_base_adapter, directory / "gamma")
    settings = make_settings(base_model, directory, admin_key="several-admin")
    with running_server(create_app(settings)) as url:
        listed = adapters(url)
        assert listed["gamma"]["state"] == "rejected"
        assert listed["gamma"]["rejected"]["reason"] == "base_mismatch"
        assert chat(url, "gamma").status_code == 404


def test_bases_past_the_memory_budget_fail_at_start(base_model: Path, second_base: Path, tmp_path: Path) -> None:
    from server.app import create_app

    settings = make_settings(
        base_model, tmp_path / "adapters", extra_base=[f"wide={second_base}"], memory_budget_gb=0.0001
    )
    with running_server(create_app(settings), probe="/health") as url:
        wait_for(lambda: "memory budget" in httpx.get(f"{url}/ready").json()["engine"], timeout=30)
        assert httpx.get(f"{url}/ready").status_code == 503


def test_vllm_in_process_serves_one_base() -> None:
    from pydantic import ValidationError

    from server.settings import Settings

    with pytest.raises(ValidationError, match="--engine remote"):
        Settings(model="m", engine="vllm", extra_base=["other"])


def test_aliases_name_their_base() -> None:
    from server.settings import Settings

    settings = Settings(
        model="/models/qwen",
        served_model_name="qwen",
        extra_base=["llama=/models/llama", "/models/phi"],
        base_model_alias=["Qwen/Qwen2.5-7B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct=llama"],
    )
    assert settings.extra_bases == {"llama": "/models/llama", "/models/phi": "/models/phi"}
    assert settings.aliases_of("qwen") == ["Qwen/Qwen2.5-7B-Instruct"]  # a plain alias: the default base's
    assert settings.aliases_of("llama") == ["meta-llama/Meta-Llama-3-8B-Instruct"]
    assert settings.aliases_of("/models/phi") == []

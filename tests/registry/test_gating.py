"""Eval gates on publish, end to end: a real server, real trained adapters, a real watched directory.

A version whose gate passes serves; one that fails is rejected with its scores (``/v1/adapters``,
the log, the metrics) while the version before it keeps answering.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.registry.publish import publish_adapter
from tests.conftest import make_settings
from tests.evaluation.test_judge import fake_judge
from tests.support import ANSWERS, QUESTION, metric_value, running_server, wait_for

ADMIN = {"Authorization": "Bearer gate-admin"}


@pytest.fixture
def live(base_model: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    with running_server(create_app(make_settings(base_model, directory, admin_key="gate-admin"))) as url:
        yield url, directory


def with_gate(adapter: Path, out: Path, spec: dict, reference: str = ANSWERS["alpha"]) -> Path:  # type: ignore[type-arg]
    """A copy of ``adapter`` carrying an eval gate: ``spec`` over one question with ``reference``."""
    shutil.copytree(adapter, out)
    (out / "eval.json").write_text(json.dumps(spec))
    (out / spec.get("test_set", "eval_set.jsonl")).write_text(
        json.dumps({"question": QUESTION, "reference": reference}) + "\n"
    )
    return out


def view(url: str, name: str) -> dict:  # type: ignore[type-arg]
    listed = httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]
    return next((a for a in listed if a["name"] == name), {})


def ask(url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_a_passing_gate_serves_and_a_failing_one_is_rejected_while_the_old_version_answers(
    live: tuple[str, Path], trained_adapters: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, directory = live
    spec = {"min": {"exact": 0.9}, "max_drop": {"exact": 0.1}}
    publish_adapter(with_gate(trained_adapters["alpha"], tmp_path / "v1", spec), "shop", directory)
    wait_for(lambda: view(url, "shop").get("state") == "ready", timeout=60)
    first = view(url, "shop")
    assert first["last_gate_run"]["passed"] is True and first["last_gate_run"]["scores"]["exact"] == 1.0
    assert first["last_gate_run"]["current_scores"] is None  # nothing served before it
    assert first["eval_gate"]["questions"] == 1 and first["eval_gate"]["min"] == {"exact": 0.9}
    assert ask(url, "shop") == ANSWERS["alpha"]

    caplog.set_level(logging.WARNING, logger="server.registry.registry")
    publish_adapter(with_gate(trained_adapters["beta"], tmp_path / "v2", spec), "shop", directory)
    wait_for(lambda: (view(url, "shop").get("rejected") or {}).get("reason") == "eval_gate_failed", timeout=60)
    shop = view(url, "shop")
    run = shop["last_gate_run"]
    assert run["passed"] is False and run["scores"]["exact"] == 0.0
    assert run["current_scores"] == {"exact": 1.0} and run["current_version"] == first["active_version"]
    assert run["failures"] == [
        "exact 0.000 < 0.9",
        "exact 0.000 is 1.000 below the serving version's 1.000 (allowed 0.1)",
    ]
    assert shop["state"] == "ready" and shop["sha256"] == first["sha256"]  # v1 still serves
    assert [v["version"] for v in shop["kept_versions"]] == [first["active_version"]]  # the reject was not kept
    assert ask(url, "shop") == ANSWERS["alpha"]
    assert any(
        "eval gate failed" in r.getMessage() and "previous version keeps" in r.getMessage() for r in caplog.records
    )
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "lora_gateway_eval_gate_runs_total", result="passed") == 1
    assert metric_value(metrics, "lora_gateway_eval_gate_runs_total", result="failed") == 1
    assert metric_value(metrics, "lora_gateway_adapters_rejected_total", reason="eval_gate_failed") == 1


def test_the_operators_judge_a_gate_names_scores_it_with_the_operators_key(
    base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eval.json names a judge; the URL and the key are the operator's (``--judges``). A file that
    gives an endpoint of its own (the attack: the admin key sent to a URL of its choosing) is refused
    before anything is asked, and a name the operator did not configure fails the gate unasked."""
    from server.app import create_app

    received: list[dict] = []  # type: ignore[type-arg]
    monkeypatch.setenv("GATE_TEST_JUDGE_KEY", "judge-secret")
    directory = tmp_path / "adapters"
    directory.mkdir()
    with running_server(fake_judge(received)) as judge:
        judges = tmp_path / "judges.json"
        entry = {"url": f"{judge}/v1", "model": "fake", "api_key_env": "GATE_TEST_JUDGE_KEY"}
        down = {"url": "http://127.0.0.1:9/v1", "model": "down"}  # nothing listens on the discard port
        judges.write_text(json.dumps({"house-judge": entry, "down": down}))
        settings = make_settings(base_model, directory, admin_key="gate-admin", judges=judges)
        with running_server(create_app(settings)) as url:
            spec = {"min": {"judge": 8.0}, "judge": "house-judge"}
            publish_adapter(with_gate(trained_adapters["alpha"], tmp_path / "judged", spec), "judged", directory)
            attack = {
                "min": {"judge": 0},
                "judge": {"url": f"{judge}/v1", "model": "x", "api_key_env": "GATE_TEST_JUDGE_KEY"},
            }
            publish_adapter(with_gate(trained_adapters["alpha"], tmp_path / "attack", attack), "attack", directory)
            unknown = {"min": {"judge": 0}, "judge": "elsewhere"}
            publish_adapter(with_gate(trained_adapters["alpha"], tmp_path / "unknown", unknown), "unknown", directory)
            failing = {"min": {"judge": 0}, "judge": "down"}
            publish_adapter(with_gate(trained_adapters["alpha"], tmp_path / "failing", failing), "failing", directory)
            for name in ("judged", "attack", "unknown", "failing"):
                wait_for(lambda name=name: view(url, name).get("state") == "rejected", timeout=60)
            judged, attacked, unnamed, failed = (view(url, n) for n in ("judged", "attack", "unknown", "failing"))
    run = judged["last_gate_run"]
    assert run["scores"] == {"judge": 5.0} and run["failures"] == ["judge 5.000 < 8"]  # no "99": the fake's 5
    assert len(received) == 1 and received[0]["model"] == "fake"  # only the named judge was asked
    assert received[0]["_authorization"] == "Bearer judge-secret"
    assert ANSWERS["alpha"] in received[0]["messages"][-1]["content"]  # it judged the candidate's answer
    assert attacked["rejected"]["reason"] == "bad_eval_spec" and "never an endpoint" in attacked["rejected"]["message"]
    assert unnamed["last_gate_run"]["failures"] == [
        "its judge 'elsewhere' is not one of this gateway's judges (down, house-judge)"
    ]
    # a judge that fails fails the gate, even with a floor of 0
    assert failed["last_gate_run"]["failures"] == ["the judge failed on 1 of 1 answers"]


def test_a_gate_that_runs_out_of_time_rejects(
    live: tuple[str, Path], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    url, directory = live
    slow = {"min": {"exact": 1.0}, "timeout_s": 0.001}
    publish_adapter(with_gate(trained_adapters["alpha"], tmp_path / "slow", slow), "slow", directory)
    wait_for(lambda: view(url, "slow").get("state") == "rejected", timeout=60)
    assert view(url, "slow")["last_gate_run"]["failures"] == ["did not finish within 0.001 s"]
    assert httpx.post(f"{url}/v1/chat/completions", json={"model": "slow", "messages": []}).status_code in (400, 404)


def test_live_requests_are_answered_by_the_serving_version_while_a_gate_runs(
    live: tuple[str, Path], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    url, directory = live
    shutil.copytree(trained_adapters["alpha"], directory / "shop")
    wait_for(lambda: view(url, "shop").get("state") == "ready", timeout=60)
    # 500 questions and 8 s: the gate runs for 8 s whatever the machine's speed, then fails.
    long_gate = with_gate(trained_adapters["beta"], tmp_path / "v2", {"min": {"exact": 0.9}, "timeout_s": 8})
    question = json.dumps({"question": QUESTION, "reference": ANSWERS["alpha"]}) + "\n"
    (long_gate / "eval_set.jsonl").write_text(question * 500)
    publish_adapter(long_gate, "shop", directory)
    wait_for(lambda: view(url, "shop").get("gate_running") is not None, timeout=60)
    answers = [ask(url, "shop") for _ in range(3)]
    assert view(url, "shop")["gate_running"] is not None  # all three were answered during the gate
    assert answers == [ANSWERS["alpha"]] * 3
    wait_for(lambda: view(url, "shop")["last_gate_run"] is not None, timeout=60)
    assert view(url, "shop")["last_gate_run"]["failures"] == ["did not finish within 8 s"]
    assert view(url, "shop")["gate_running"] is None and ask(url, "shop") == ANSWERS["alpha"]


def test_a_gate_whose_judge_hangs_holds_neither_readiness_nor_other_adapters(
    base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """A gated adapter present at start-up whose judge never answers: /ready is 200 and alpha
    answers while the gate runs (it used to hold the start-up scan for up to 600 s), the first
    version's gate shows in /v1/adapters, and a reload answers at once."""
    import asyncio
    import threading

    from fastapi import FastAPI

    from server.app import create_app

    hanging, released = FastAPI(), threading.Event()

    @hanging.post("/v1/chat/completions")
    async def never() -> None:
        while not released.is_set():  # until the test ends
            await asyncio.sleep(0.1)

    directory = tmp_path / "adapters"
    directory.mkdir()
    shutil.copytree(trained_adapters["alpha"], directory / "alpha")
    with_gate(trained_adapters["alpha"], directory / "slow", {"min": {"judge": 1}, "judge": "hangs"})
    with running_server(hanging, probe="/openapi.json") as judge:
        judges = tmp_path / "judges.json"
        judges.write_text(json.dumps({"hangs": {"url": f"{judge}/v1", "model": "m"}}))
        settings = make_settings(base_model, directory, admin_key="gate-admin", judges=judges)
        with running_server(create_app(settings)) as url:  # /ready is 200 (running_server waits for it)
            slow = view(url, "slow")
            assert slow["state"] == "gating" and slow["gate_running"] == 1
            assert ask(url, "alpha") == ANSWERS["alpha"]
            reloaded = httpx.post(f"{url}/v1/adapters/slow/reload", headers=ADMIN, timeout=10)
            # Answered at once; the reload's candidate (a new unproven copy) is under its gate now.
            assert reloaded.status_code == 200 and view(url, "slow")["gate_running"] is not None
            assert httpx.get(f"{url}/ready").json()["adapters"]["gating"] == 1
        released.set()

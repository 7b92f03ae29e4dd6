"""The judge (server/evaluation/judge.py) against fake judges on 127.0.0.1: one that scores by a
script, one that answers garbage (reported per answer, never a crash), and what they were sent."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from server.datasets.testset import EvalItem
from server.evaluation.judge import DEFAULT_RUBRIC, RubricError, judge_all, load_rubric, parse_verdict
from tests.support import running_server

ITEM = EvalItem(({"role": "user", "content": "满多少包邮？"},), "满99元包邮。", "Must name the threshold.", "t:1")


def fake_judge(received: list[dict], garbage: bool = False) -> FastAPI:  # type: ignore[type-arg]
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:  # type: ignore[type-arg]
        body = await request.json()
        received.append({**body, "_authorization": request.headers.get("authorization")})
        answer = body["messages"][-1]["content"].rsplit("The answer to judge:\n", 1)[-1]
        good = "99" in answer
        verdict = {
            "accuracy": 3 if good else 0,
            "politeness": 2,
            "completeness": 2 if good else 1,
            "proactivity": 0,
            "fluency": 2,
            "reason": "names the threshold" if good else "wrong",
        }
        content = "I think it is fine" if garbage else json.dumps(verdict)
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
        }

    return app


@pytest.fixture
def judge() -> Iterator[tuple[str, list[dict]]]:  # type: ignore[type-arg]
    received: list[dict] = []  # type: ignore[type-arg]
    with running_server(fake_judge(received)) as url:
        yield f"{url}/v1", received


def test_scores_are_parsed_and_the_judge_sees_no_model_name(judge) -> None:  # type: ignore[no-untyped-def]
    url, received = judge
    tasks = [("shop-support\x00k", ITEM, "全场满99元包邮。"), ("base\x00k", ITEM, "你好")]
    verdicts = asyncio.run(judge_all(tasks, DEFAULT_RUBRIC, url=url, model="judge"))
    assert verdicts["shop-support\x00k"].total == 9 and verdicts["shop-support\x00k"].reason == "names the threshold"
    assert verdicts["base\x00k"].total == 5 and verdicts["base\x00k"].error is None
    for body in received:
        text = json.dumps(body, ensure_ascii=False)
        assert "shop-support" not in text and "base\\u0000" not in text  # blind: no model names
        assert "Must name the threshold." in text and "满99元包邮。" in text  # rubric notes and reference
        assert body["response_format"]["json_schema"]["schema"]["properties"]["accuracy"]["maximum"] == 3


def test_a_garbage_judge_is_reported_not_crashed() -> None:
    received: list[dict] = []  # type: ignore[type-arg]
    with running_server(fake_judge(received, garbage=True)) as url:
        verdicts = asyncio.run(judge_all([("a", ITEM, "x")], DEFAULT_RUBRIC, url=f"{url}/v1", model="j"))
    assert verdicts["a"].error and "unusable judge answer" in verdicts["a"].error
    unreachable = asyncio.run(judge_all([("a", ITEM, "x")], DEFAULT_RUBRIC, url="http://127.0.0.1:9/v1", model="j"))
    assert unreachable["a"].error and "judge failed" in unreachable["a"].error


def test_out_of_range_scores_are_unusable() -> None:
    verdict = parse_verdict(
        DEFAULT_RUBRIC,
        json.dumps({"accuracy": 4, "politeness": 2, "completeness": 2, "proactivity": 1, "fluency": 2, "reason": "r"}),
    )
    assert verdict.error and verdict.total == 0


def test_a_rubric_file(tmp_path: Path) -> None:
    path = tmp_path / "rubric.json"
    path.write_text(json.dumps({"criteria": [{"name": "correct", "max": 5, "description": "d"}]}))
    assert load_rubric(path).total == 5 and load_rubric(None).total == 10
    path.write_text('{"criteria": [{"name": "bad name", "max": 0}]}')
    with pytest.raises(RubricError):
        load_rubric(path)


def test_the_operators_judges_file_reads_each_key_from_its_environment_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.evaluation.judge import JudgesConfigError, load_judges

    monkeypatch.setenv("TEST_JUDGE_KEY", "s3cret")
    path = tmp_path / "judges.json"
    path.write_text(
        json.dumps(
            {"qwen-max": {"url": "https://judge.example/v1", "model": "qwen-max", "api_key_env": "TEST_JUDGE_KEY"}}
        )
    )
    judges = load_judges(path)
    assert judges["qwen-max"].api_key == "s3cret" and "s3cret" not in repr(judges)
    assert load_judges(None) == {}
    for bad, message in [
        (
            {"qwen": {"url": "https://j/v1", "model": "m", "api_key_env": "UNSET_JUDGE_KEY"}},
            "'UNSET_JUDGE_KEY' is not set",
        ),
        ({"qwen": {"url": "file:///etc/passwd", "model": "m"}}, "url must be an http(s) URL"),
        ({"../x": {"url": "https://j/v1", "model": "m"}}, "a name is 1-64"),
        ({"qwen": {"url": "https://j/v1", "model": "m", "api_key": "inline"}}, "expected the keys"),
        ([], "expected"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(JudgesConfigError, match=re.escape(message)):
            load_judges(path)

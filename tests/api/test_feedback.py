"""``POST /v1/feedback`` and the per-version report, on a real server with feedback capture on."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer fb-admin"}


@pytest.fixture
def live(base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    shutil.copytree(trained_adapters["alpha"], directory / "shop")
    with running_server(create_app(make_settings(base_model, directory, admin_key="fb-admin", feedback=True))) as url:
        wait_for(lambda: "shop" in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}, timeout=60)
        yield url, directory


def rate(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/feedback", json=body, timeout=30)


def test_answers_are_rated_by_completion_id_streamed_or_not(live: tuple[str, Path]) -> None:
    url, directory = live
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model="shop", messages=[{"role": "user", "content": QUESTION}], temperature=0, user="alice"
    )
    assert answer.choices[0].message.content == ANSWERS["alpha"]
    stored = rate(url, completion_id=answer.id, rating=-1, comment="wrong shop", correction="Gamma ships today.")
    assert stored.status_code == 200, stored.text
    assert stored.json() | {"id": "x", "created": 0} == {
        "id": "x",
        "object": "feedback",
        "completion_id": answer.id,
        "rating": -1,
        "scale": "thumbs",
        "negative": True,
        "model": "shop",
        "adapter": "shop",
        "version": 1,
        "created": 0,
    }
    stream = client.chat.completions.create(
        model="shop", messages=[{"role": "user", "content": QUESTION}], temperature=0, stream=True
    )
    chunks = list(stream)
    assert rate(url, completion_id=chunks[0].id, rating=5, scale="stars").json()["negative"] is False
    assert rate(url, completion_id=chunks[0].id, rating=1, scale="stars").json()["negative"] is True

    report = httpx.get(f"{url}/v1/adapters/shop/feedback", headers=ADMIN).json()
    assert report["versions"] == [
        {
            "version": 1,
            "answered": 2,
            "feedback": 3,
            "positive": 1,
            "negative": 2,
            "negative_rate": 0.6667,
            "mean_stars": 3.0,
            "raters": 1,  # alice; the streamed answer's user is unknown
        }
    ]
    worst = report["worst"][0]
    assert worst["question"] == QUESTION and worst["answer"] == ANSWERS["alpha"]
    assert {w["correction"] for w in report["worst"]} == {"Gamma ships today.", None}
    assert httpx.get(f"{url}/v1/adapters/shop/feedback?since=1h", headers=ADMIN).json()["versions"][0]["feedback"] == 3
    assert httpx.get(f"{url}/v1/adapters/shop/feedback?since=soon", headers=ADMIN).status_code == 400
    assert (directory / ".gateway.db").is_file()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"completion_id": "chatcmpl-unknown", "rating": 1}, 404, "completion_not_found"),
        ({"completion_id": "ID", "rating": 7}, 400, "invalid_rating"),
        ({"completion_id": "ID", "rating": 0}, 400, "invalid_rating"),
        ({"completion_id": "ID", "rating": -1, "scale": "stars"}, 400, "invalid_rating"),
        ({"completion_id": "ID", "rating": 3, "scale": "thumbs"}, 400, "invalid_rating"),
        ({"completion_id": "ID", "rating": "good"}, 400, None),
        ({"completion_id": "ID", "rating": 1, "mood": "happy"}, 400, None),
    ],
)
def test_bad_feedback_is_refused_with_openai_errors(
    live: tuple[str, Path], body: dict[str, object], status: int, code: str | None
) -> None:
    url, _ = live
    answer = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "shop", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    ).json()
    body = json.loads(json.dumps(body).replace('"ID"', json.dumps(answer["id"])))
    response = rate(url, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code


def test_feedback_is_off_unless_asked_for(gateway_url: str) -> None:
    response = rate(gateway_url, completion_id="chatcmpl-x", rating=1)
    assert response.status_code == 404 and response.json()["error"]["code"] == "feedback_disabled"
    assert "--feedback" in response.json()["error"]["message"]


def test_playground_ratings_land_in_the_feedback_database_that_eval_imports(live: tuple[str, Path]) -> None:
    from server.evaluation.judge import DEFAULT_RUBRIC
    from server.evaluation.ratings import import_playground

    url, directory = live
    scores = {"accuracy": 3, "politeness": 2, "completeness": 1, "proactivity": 0, "fluency": 2}
    one = {"model": "shop", "question": "q", "answer": "a", "scores": scores, "position": 0}
    response = httpx.post(f"{url}/v1/playground/ratings", json={"session": "s1", "ratings": [one]})
    assert response.status_code == 201, response.text
    assert not (directory / ".ratings.jsonl").exists()  # not in a file of its own: beside users' ratings
    imported = import_playground([f"sqlite:///{directory / '.gateway.db'}"], DEFAULT_RUBRIC)
    assert imported == {"shop": {"human_total": 8.0, "rated_answers": 1}}


def test_responses_are_rated_by_their_response_id_streamed_or_not(live: tuple[str, Path]) -> None:
    """The Responses API captures like chat: the response id is the answer's id feedback names."""
    url, _ = live
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    answer = client.responses.create(model="shop", input=QUESTION, temperature=0, user="alice")
    assert answer.output_text == ANSWERS["alpha"]
    with client.responses.stream(model="shop", input=QUESTION, temperature=0, user="bob") as stream:
        streamed = stream.get_final_response()
    for rid, rating in ((answer.id, 1), (streamed.id, -1)):
        stored = rate(url, completion_id=rid, rating=rating)
        assert stored.status_code == 200, stored.text
        assert stored.json()["completion_id"] == rid and stored.json()["adapter"] == "shop"

"""WeCom users rate answers: the AI bot's thumbs (feedback_event) and an app bot's reply keywords."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import make_settings
from tests.integrations.wecom.fake_wecom import FakeWeComApi
from tests.integrations.wecom.test_routes import (
    BOTS,
    CORP_ID,
    CORP_SECRET,
    bot_text,
    post_app,
    post_bot,
    sender,
    sends_to,
    stream_until_finished,
)
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer wecom-fb"}
FEEDBACK_BOTS = {
    "shop": {**BOTS["shop"], "feedback_keywords": {"👎": -1, "满意": 1}, "feedback_reply": "谢谢反馈"},
    "helper": BOTS["helper"],
}


@pytest.fixture(scope="module")
def live(
    base_model: Path, shared_adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FakeWeComApi]]:
    from server.app import create_app

    api = FakeWeComApi(corp_id=CORP_ID, corp_secret=CORP_SECRET)
    with running_server(api.app()) as api_url:
        where = tmp_path_factory.mktemp("wecom-feedback")
        config = where / "wecom.yaml"
        config.write_text(yaml.safe_dump({"api_base": api_url, "bots": FEEDBACK_BOTS}, allow_unicode=True))
        settings = make_settings(
            base_model,
            shared_adapters_dir,
            wecom_config=config,
            feedback=True,
            database=f"sqlite:///{where / 'feedback.db'}",
            admin_key="wecom-fb",
        )
        with running_server(create_app(settings)) as url:
            yield url, api


def report(url: str, adapter: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/adapters/{adapter}/feedback", headers=ADMIN).json()  # type: ignore[no-any-return]


def test_the_ai_bot_offers_thumbs_and_its_feedback_event_rates_that_answer(live: tuple[str, FakeWeComApi]) -> None:
    url, _ = live
    first = post_bot(url, "helper", bot_text(uuid.uuid4().hex, QUESTION))
    feedback_id = first["stream"]["feedback"]["id"]
    replies = stream_until_finished(url, "helper", first)
    assert replies[-1]["stream"]["content"] == ANSWERS["beta"]
    event = {
        "msgid": uuid.uuid4().hex,
        "aibotid": "aib-1",
        "from": {"userid": "wangwu"},
        "msgtype": "event",
        "event": {"eventtype": "feedback_event", "feedback_event": {"id": feedback_id, "type": 2, "content": "不对"}},
    }
    assert post_bot_raw(url, "helper", event).status_code == 200
    wait_for(lambda: report(url, "beta")["versions"] != [] and report(url, "beta")["versions"][0]["negative"] == 1)
    worst = report(url, "beta")["worst"][0]
    assert worst["completion_id"] == feedback_id and worst["answer"] == ANSWERS["beta"] and worst["comment"] == "不对"
    bad = {**event, "msgid": uuid.uuid4().hex, "event": {"eventtype": "feedback_event", "feedback_event": {"id": 5}}}
    assert post_bot_raw(url, "helper", bad).status_code == 400


def test_an_app_bot_keyword_rates_the_last_answer_and_is_acknowledged(live: tuple[str, FakeWeComApi]) -> None:
    url, api = live
    who = f"user-{uuid.uuid4().hex[:8]}"
    shop = sender("shop")
    assert post_app(url, "shop", *shop.app_message(CORP_ID, who, QUESTION, msg_id="91001")).status_code == 200
    wait_for(lambda: sends_to(api, who) == [ANSWERS["alpha"]], timeout=60)
    assert post_app(url, "shop", *shop.app_message(CORP_ID, who, "👎", msg_id="91002")).status_code == 200
    wait_for(lambda: sends_to(api, who) == [ANSWERS["alpha"], "谢谢反馈"], timeout=30)
    wait_for(lambda: any(w["question"] == QUESTION for w in report(url, "alpha")["worst"]), timeout=30)


def post_bot_raw(url: str, bot: str, message: dict[str, Any]) -> httpx.Response:
    query, body, _ = sender(bot).bot_message(message)
    return httpx.post(f"{url}/wecom/{bot}?{query}", content=body, headers={"Content-Type": "application/json"})

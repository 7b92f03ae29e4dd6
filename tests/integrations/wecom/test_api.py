"""gettoken and message/send against a fake WeCom API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from server.integrations.wecom.api import AppCredentials, RedactSecrets, WeComApi, WeComApiError
from tests.integrations.wecom.fake_wecom import FakeWeComApi
from tests.support import running_server

APP = AppCredentials(corp_id="ww-corp", corp_secret="s3cret-never-logged", agent_id=1000002)


@pytest.fixture
def fake() -> Iterator[tuple[FakeWeComApi, str]]:
    api = FakeWeComApi(corp_id=APP.corp_id, corp_secret=APP.corp_secret)
    with running_server(api.app()) as url:
        yield api, url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_the_token_is_fetched_once_and_reused(fake: tuple[FakeWeComApi, str]) -> None:
    api, url = fake

    async def scenario() -> None:
        client = WeComApi(url)
        try:
            await asyncio.gather(*(client.send_text(APP, "zhangsan", f"answer {i}") for i in range(5)))
        finally:
            await client.aclose()

    run(scenario())
    assert len(api.token_calls) == 1
    assert sorted(api.texts()) == [f"answer {i}" for i in range(5)]
    assert {key: api.sends[0][key] for key in ("touser", "msgtype", "agentid")} == {
        "touser": "zhangsan",
        "msgtype": "text",
        "agentid": 1000002,
    }
    assert all(send["agentid"] == 1000002 and send["touser"] == "zhangsan" for send in api.sends)


def test_a_token_rejected_as_expired_is_replaced_and_the_message_sent(fake: tuple[FakeWeComApi, str]) -> None:
    api, url = fake

    async def scenario() -> None:
        client = WeComApi(url)
        try:
            await client.send_text(APP, "u", "first")
            api.expire_tokens()  # WeCom invalidated it early (secret reset, or another server fetched one)
            await client.send_text(APP, "u", "second")
        finally:
            await client.aclose()

    run(scenario())
    assert api.texts() == ["first", "second"]
    assert api.rejected_sends == 1
    assert len(api.token_calls) == 2


def test_a_token_near_its_expiry_is_refreshed_before_use(fake: tuple[FakeWeComApi, str]) -> None:
    api, url = fake
    clock = Clock()

    async def scenario() -> None:
        client = WeComApi(url, clock=clock)
        try:
            await client.send_text(APP, "u", "one")
            clock.now += 7200 - 301  # still valid for 301 s: reused
            await client.send_text(APP, "u", "two")
            clock.now += 2  # within 5 minutes of expiry: refreshed
            await client.send_text(APP, "u", "three")
        finally:
            await client.aclose()

    run(scenario())
    assert len(api.token_calls) == 2
    assert api.rejected_sends == 0


def test_a_long_answer_is_split_within_the_byte_limit(fake: tuple[FakeWeComApi, str]) -> None:
    api, url = fake
    answer = "您的订单已经发货，预计三天内送达。" * 200  # 10200 bytes

    async def scenario() -> int:
        client = WeComApi(url)
        try:
            return await client.send_text(APP, "u", answer)
        finally:
            await client.aclose()

    assert run(scenario()) == 5
    texts = api.texts()
    assert len(texts) == 5  # the fake refuses anything over 2048 bytes, so all five were within it
    assert "".join(texts) == answer
    assert all(len(t.encode()) <= 2048 for t in texts)


def test_wrong_credentials_raise_with_wecoms_code(fake: tuple[FakeWeComApi, str]) -> None:
    _, url = fake

    async def scenario() -> None:
        client = WeComApi(url)
        try:
            await client.send_text(AppCredentials("ww-corp", "wrong", 1), "u", "x")
        finally:
            await client.aclose()

    with pytest.raises(WeComApiError) as caught:
        run(scenario())
    assert caught.value.errcode == 40001


def test_an_unreachable_api_is_an_api_error_without_the_secret() -> None:
    from tests.support import free_port

    async def scenario() -> None:
        client = WeComApi(f"http://127.0.0.1:{free_port()}", timeout=2)
        try:
            await client.send_text(APP, "u", "x")
        finally:
            await client.aclose()

    with pytest.raises(WeComApiError) as caught:
        run(scenario())
    assert APP.corp_secret not in str(caught.value)


def test_secrets_never_reach_the_log(fake: tuple[FakeWeComApi, str], caplog: pytest.LogCaptureFixture) -> None:
    _, url = fake

    async def scenario() -> None:
        client = WeComApi(url)
        try:
            await client.send_text(APP, "u", "hello")
        finally:
            await client.aclose()

    with caplog.at_level(logging.DEBUG):
        run(scenario())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "gettoken" in logged and "message/send" in logged  # httpx did log both calls...
    assert APP.corp_secret not in logged and "token-0" not in logged  # ...with the secrets masked
    assert "corpsecret=***" in logged and "access_token=***" in logged


def test_the_redaction_filter_handles_preformatted_messages() -> None:
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, "GET %s", ("https://x/cgi-bin/gettoken?corpid=a&corpsecret=b1",), None
    )
    RedactSecrets().filter(record)
    assert record.getMessage() == "GET https://x/cgi-bin/gettoken?corpid=a&corpsecret=***"

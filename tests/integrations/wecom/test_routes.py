"""End to end: a real gateway with WeCom bots, a fake WeCom API on 127.0.0.1, and callbacks signed
and encrypted the way WeCom sends them."""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from server.engine.base import GenerationRequest
from tests.conftest import make_settings
from tests.integrations.wecom.fake_wecom import FakeWeComApi, WeComSender
from tests.support import ANSWERS, QUESTION, engine_hook, metric_value, running_server, wait_for

CORP_ID, CORP_SECRET, AGENT_ID = "ww-test-corp", "corp-secret-for-tests", 1000002
APOLOGY = "Sorry, the assistant is unavailable right now."
UNSUPPORTED = "Please send text."
# The reference's public vector, served by an app bot, to check query decoding over real HTTP.
VECTOR = {"token": "123456", "key": "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "corp_id": "wx49f0ab532d5d035a"}
VECTOR_QUERY = (
    "msg_signature=dd6b9c95b495b3f7e2901bfbc76c664930ffdb96&timestamp=1411443780&nonce=437374425&echostr="
    "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
)


def _aes_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(43))


BOTS: dict[str, dict[str, Any]] = {
    "shop": {
        "channel": "app",
        "model": "alpha",
        "token": "tokenShop",
        "encoding_aes_key": _aes_key(),
        "corp_id": CORP_ID,
        "corp_secret": CORP_SECRET,
        "agent_id": AGENT_ID,
        "temperature": 0,
        "apology": APOLOGY,
        "unsupported_reply": UNSUPPORTED,
    },
    "ghost": {
        "channel": "app",
        "model": "no-such-adapter",
        "token": "tokenGhost",
        "encoding_aes_key": _aes_key(),
        "corp_id": CORP_ID,
        "corp_secret": CORP_SECRET,
        "agent_id": AGENT_ID,
        "apology": APOLOGY,
    },
    "helper": {
        "channel": "aibot",
        "model": "beta",
        "token": "tokenHelper",
        "encoding_aes_key": _aes_key(),
        "temperature": 0,
        "apology": APOLOGY,
        "unsupported_reply": UNSUPPORTED,
    },
    "persona": {
        "channel": "aibot",
        "model": "tiny-base",
        "token": "tokenPersona",
        "encoding_aes_key": _aes_key(),
        "system_prompt": "You are Xiaomei, the shop's assistant.",
        "max_tokens": 3,
    },
    "memo": {
        "channel": "aibot",
        "model": "alpha",
        "token": "tokenMemo",
        "encoding_aes_key": _aes_key(),
        "temperature": 0,
        "max_tokens": 12,
        "apology": APOLOGY,
        "history_turns": 2,
    },
    # Served by a gateway whose context (40 tokens) is far below the default max_tokens (1024).
    "tight": {
        "channel": "aibot",
        "model": "alpha",
        "token": "tokenTight",
        "encoding_aes_key": _aes_key(),
        "temperature": 0,
        "apology": APOLOGY,
        "history_turns": 3,
    },
    "vector": {
        "channel": "app",
        "model": "alpha",
        "token": VECTOR["token"],
        "encoding_aes_key": VECTOR["key"],
        "corp_id": VECTOR["corp_id"],
        "corp_secret": "unused",
        "agent_id": 1,
    },
}


def sender(bot: str) -> WeComSender:
    config = BOTS[bot]
    return WeComSender(config["token"], config["encoding_aes_key"], config.get("corp_id", ""))


@pytest.fixture(scope="module")
def fake_api() -> Iterator[tuple[FakeWeComApi, str]]:
    api = FakeWeComApi(corp_id=CORP_ID, corp_secret=CORP_SECRET)
    with running_server(api.app()) as url:
        yield api, url


@pytest.fixture(scope="module")
def wecom_app(base_model: Path, shared_adapters_dir: Path, fake_api, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from server.app import create_app

    path = tmp_path_factory.mktemp("wecom") / "wecom.yaml"
    path.write_text(yaml.safe_dump({"api_base": fake_api[1], "bots": BOTS}, allow_unicode=True))
    return create_app(make_settings(base_model, shared_adapters_dir, wecom_config=path))


@pytest.fixture(scope="module")
def url(wecom_app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with running_server(wecom_app) as base:
        yield base


@pytest.fixture(scope="module")
def tight(base_model: Path, shared_adapters_dir: Path, fake_api, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(url, app) of a gateway with a 40-token context: QUESTION's prompt is 27 of them."""
    from server.app import create_app

    path = tmp_path_factory.mktemp("wecom-tight") / "wecom.yaml"
    path.write_text(yaml.safe_dump({"api_base": fake_api[1], "bots": {"tight": BOTS["tight"]}}, allow_unicode=True))
    app = create_app(make_settings(base_model, shared_adapters_dir, wecom_config=path, max_model_len=40))
    with running_server(app) as base:
        yield base, app


def settled(app) -> None:  # type: ignore[no-untyped-def]
    """Wait until the WeCom service has no answer in progress: what was started has finished."""
    wait_for(lambda: app.state.wecom.pending == 0, timeout=60)


@pytest.fixture
def api(fake_api) -> FakeWeComApi:  # type: ignore[no-untyped-def]
    return fake_api[0]  # type: ignore[no-any-return]


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def sends_to(api: FakeWeComApi, who: str) -> list[str]:
    return [s["text"]["content"] for s in api.sends if s["touser"] == who]


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def post_app(url: str, bot: str, query: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/wecom/{bot}?{query}", content=body, headers={"Content-Type": "text/xml"}, timeout=5)


def post_bot(url: str, bot: str, message: dict[str, Any]) -> dict[str, Any]:
    """POST an AI-bot callback; return the decrypted reply after checking its envelope."""
    who = sender(bot)
    query, body, nonce = who.bot_message(message)
    response = httpx.post(
        f"{url}/wecom/{bot}?{query}", content=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == 200, response.text
    return who.open_reply(response.json(), nonce)


def assert_wecom_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    assert "Traceback" not in response.text


# -- URL verification ---------------------------------------------------------------------------


@pytest.mark.parametrize("bot", ["shop", "helper"])
def test_url_verification_answers_the_plaintext(url: str, bot: str) -> None:
    response = httpx.get(f"{url}/wecom/{bot}?{sender(bot).verification('echo-5927782489442352469')}")
    assert response.status_code == 200
    assert response.text == "echo-5927782489442352469"  # no quotes, no newline
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "query",
    [VECTOR_QUERY, VECTOR_QUERY.split("echostr=")[0] + "echostr=" + quote(VECTOR_QUERY.split("echostr=")[1], safe="")],
)
def test_the_public_vector_verifies_with_raw_or_encoded_plus(url: str, query: str) -> None:
    response = httpx.get(f"{url}/wecom/vector?{query}")
    assert response.status_code == 200, response.text
    assert response.text == "5927782489442352469"


def test_url_verification_with_a_wrong_signature_is_403(url: str) -> None:
    response = httpx.get(f"{url}/wecom/shop?{sender('shop').verification('x', bad_signature=True)}")
    assert_wecom_error(response, 403, "invalid_signature")


def test_url_verification_without_echostr_is_400(url: str) -> None:
    assert_wecom_error(
        httpx.get(f"{url}/wecom/shop?msg_signature=a&timestamp=1&nonce=2"), 400, "missing_required_parameter"
    )


# -- self-built app ---------------------------------------------------------------------------------


def test_an_app_message_is_acknowledged_at_once_and_answered_by_its_adapter(
    url: str, api: FakeWeComApi, wecom_app
) -> None:  # type: ignore[no-untyped-def]
    who = user()
    release = threading.Event()
    # Hold generation: the callback must still be answered (within the 5 s client timeout).
    with engine_hook(wecom_app, lambda request: release.wait(30)):
        try:
            response = post_app(url, "shop", *sender("shop").app_message(CORP_ID, who, QUESTION, msg_id="70001"))
            assert response.status_code == 200 and response.content == b""
            assert sends_to(api, who) == []
        finally:
            release.set()
    wait_for(lambda: bool(sends_to(api, who)), timeout=60)
    assert sends_to(api, who) == [ANSWERS["alpha"]]
    sent = next(s for s in api.sends if s["touser"] == who)
    assert (sent["msgtype"], sent["agentid"]) == ("text", AGENT_ID)


def test_three_deliveries_of_one_msgid_cause_one_generation_and_one_send(
    url: str, api: FakeWeComApi, wecom_app
) -> None:  # type: ignore[no-untyped-def]
    who, shop = user(), sender("shop")
    before = metrics(url)
    # WeCom's retries carry the same message, sealed and signed afresh.
    for _ in range(3):
        response = post_app(url, "shop", *shop.app_message(CORP_ID, who, QUESTION, msg_id="80001"))
        assert response.status_code == 200 and response.content == b""
    wait_for(lambda: bool(sends_to(api, who)), timeout=60)
    settled(wecom_app)  # every answer that was started has been sent
    after = metrics(url)
    assert sends_to(api, who) == [ANSWERS["alpha"]]
    generated = metric_value(after, "lora_gateway_requests_total", model="alpha") - metric_value(
        before, "lora_gateway_requests_total", model="alpha"
    )
    assert generated == 1
    duplicates = "lora_gateway_wecom_callbacks_total"
    assert (
        metric_value(after, duplicates, bot="shop", outcome="duplicate")
        - metric_value(before, duplicates, bot="shop", outcome="duplicate")
        == 2
    )


def test_the_answer_is_sent_after_the_access_token_expired(url: str, api: FakeWeComApi) -> None:
    who = user()
    post_app(url, "shop", *sender("shop").app_message(CORP_ID, who, QUESTION, msg_id="80101"))
    wait_for(lambda: bool(sends_to(api, who)), timeout=60)
    tokens, rejected = len(api.token_calls), api.rejected_sends
    api.expire_tokens()
    post_app(url, "shop", *sender("shop").app_message(CORP_ID, who, QUESTION, msg_id="80102"))
    wait_for(lambda: len(sends_to(api, who)) == 2, timeout=60)
    assert sends_to(api, who) == [ANSWERS["alpha"]] * 2
    assert api.rejected_sends == rejected + 1 and len(api.token_calls) == tokens + 1


def test_a_non_text_message_gets_the_polite_fixed_answer(url: str, api: FakeWeComApi) -> None:
    who = user()
    response = post_app(url, "shop", *sender("shop").app_message(CORP_ID, who, "", msg_id="80201", msg_type="image"))
    assert response.status_code == 200
    wait_for(lambda: bool(sends_to(api, who)), timeout=60)
    assert sends_to(api, who) == [UNSUPPORTED]


def test_an_event_is_acknowledged_and_not_answered(url: str, api: FakeWeComApi, wecom_app) -> None:  # type: ignore[no-untyped-def]
    who = user()
    before = metric_value(metrics(url), "lora_gateway_wecom_callbacks_total", bot="shop", outcome="ignored")
    inner = (
        f"<xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>{who}</FromUserName><CreateTime>1</CreateTime>"
        "<MsgType>event</MsgType><Event>enter_agent</Event></xml>"
    )
    response = post_app(url, "shop", *sender("shop").sealed_xml(CORP_ID, inner.encode()))
    assert response.status_code == 200 and response.content == b""
    assert metric_value(metrics(url), "lora_gateway_wecom_callbacks_total", bot="shop", outcome="ignored") == before + 1
    settled(wecom_app)
    assert sends_to(api, who) == []


def test_an_engine_failure_sends_an_apology(url: str, api: FakeWeComApi, wecom_app) -> None:  # type: ignore[no-untyped-def]
    def explode(request: GenerationRequest) -> None:
        if request.messages[-1]["content"] == "boom":
            raise RuntimeError("injected fault")

    who = user()
    with engine_hook(wecom_app, explode):
        post_app(url, "shop", *sender("shop").app_message(CORP_ID, who, "boom", msg_id="80301"))
        wait_for(lambda: bool(sends_to(api, who)), timeout=60)
    assert sends_to(api, who) == [APOLOGY]


def test_a_bot_whose_model_is_missing_sends_an_apology(url: str, api: FakeWeComApi) -> None:
    who = user()
    post_app(url, "ghost", *sender("ghost").app_message(CORP_ID, who, QUESTION, msg_id="80401"))
    wait_for(lambda: bool(sends_to(api, who)), timeout=60)
    assert sends_to(api, who) == [APOLOGY]


# -- AI bot ---------------------------------------------------------------------------------------


def bot_text(msg_id: str, content: str, *, msgtype: str = "text") -> dict[str, Any]:
    message: dict[str, Any] = {
        "msgid": msg_id,
        "aibotid": "aib-1",
        "chattype": "single",
        "from": {"userid": "wangwu"},
        "response_url": "https://example.invalid/r",
        "msgtype": msgtype,
    }
    if msgtype == "text":
        message["text"] = {"content": content}
    return message


def poll(stream_id: str) -> dict[str, Any]:
    return {"msgid": uuid.uuid4().hex, "aibotid": "aib-1", "msgtype": "stream", "stream": {"id": stream_id}}


def stream_until_finished(url: str, bot: str, first: dict[str, Any], timeout: float = 60.0) -> list[dict[str, Any]]:
    replies = [first]
    deadline = time.monotonic() + timeout
    while not replies[-1]["stream"]["finish"]:
        assert time.monotonic() < deadline, "the stream never finished"
        time.sleep(0.02)
        replies.append(post_bot(url, bot, poll(first["stream"]["id"])))
    return replies


def test_an_ai_bot_streams_the_cumulative_answer_until_finish(url: str, wecom_app) -> None:  # type: ignore[no-untyped-def]
    tokens_seen = threading.Semaphore(0)

    def pace(request: GenerationRequest) -> None:
        tokens_seen.release()
        time.sleep(0.02)  # slow enough that polls see the answer grow

    with engine_hook(wecom_app, pace):
        first = post_bot(url, "helper", bot_text("m-stream-1", QUESTION))
        assert first["msgtype"] == "stream" and first["stream"]["finish"] is False
        replies = stream_until_finished(url, "helper", first)
    contents = [reply["stream"]["content"] for reply in replies]
    assert {reply["stream"]["id"] for reply in replies} == {first["stream"]["id"]}
    assert contents[-1] == ANSWERS["beta"]
    assert all(later.startswith(earlier) for earlier, later in zip(contents, contents[1:]))  # cumulative
    assert any(0 < len(c) < len(ANSWERS["beta"]) for c in contents)  # and seen while it grew
    assert [r["stream"]["finish"] for r in replies].count(True) == 1


def test_an_ai_bot_retry_gets_the_same_stream_and_no_second_generation(url: str) -> None:
    before = metrics(url)
    first = post_bot(url, "helper", bot_text("m-retry-1", QUESTION))
    again = post_bot(url, "helper", bot_text("m-retry-1", QUESTION))
    assert again["stream"]["id"] == first["stream"]["id"]
    final = stream_until_finished(url, "helper", first)[-1]
    assert final["stream"]["content"] == ANSWERS["beta"]
    after = metrics(url)
    assert (
        metric_value(after, "lora_gateway_requests_total", model="beta")
        - metric_value(before, "lora_gateway_requests_total", model="beta")
        == 1
    )


def test_an_ai_bot_failure_finishes_with_the_apology(url: str, wecom_app) -> None:  # type: ignore[no-untyped-def]
    def explode(request: GenerationRequest) -> None:
        if request.messages[-1]["content"] == "boom":
            raise RuntimeError("injected fault")

    with engine_hook(wecom_app, explode):
        first = post_bot(url, "helper", bot_text("m-fail-1", "boom"))
        final = stream_until_finished(url, "helper", first)[-1]
    assert final["stream"] == {"id": first["stream"]["id"], "finish": True, "content": APOLOGY}


def test_an_ai_bot_non_text_message_finishes_at_once_politely(url: str) -> None:
    reply = post_bot(url, "helper", bot_text("m-image-1", "", msgtype="image"))
    assert reply["stream"]["finish"] is True and reply["stream"]["content"] == UNSUPPORTED


def test_an_unknown_stream_finishes_with_the_apology(url: str) -> None:
    reply = post_bot(url, "helper", poll("no-such-stream"))
    assert reply["stream"] == {"id": "no-such-stream", "finish": True, "content": APOLOGY}


def test_the_system_prompt_reaches_the_model(url: str, wecom_app) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[dict[str, str], ...]] = []
    with engine_hook(wecom_app, lambda request: seen.append(request.messages)):
        first = post_bot(url, "persona", bot_text("m-persona-1", "hello"))
        stream_until_finished(url, "persona", first)
    assert seen and seen[0] == (
        {"role": "system", "content": BOTS["persona"]["system_prompt"]},
        {"role": "user", "content": "hello"},
    )


def test_history_turns_send_the_users_last_exchanges_along(url: str, wecom_app) -> None:  # type: ignore[no-untyped-def]
    """What the user was shown is what the conversation remembers, and only the last two turns.

    The first question is the one ``alpha`` memorised, so its answer is known; the later ones carry
    history, so their answers are whatever the model says: the expected prompts are built from
    what the user saw, never from a guess of the model's output. An answer that renders empty is
    shown as the apology, and an apology is not remembered.
    """
    prompts: list[tuple[dict[str, str], ...]] = []

    def record(request: GenerationRequest) -> None:
        if not prompts or prompts[-1] != request.messages:
            prompts.append(request.messages)

    def ask(msg_id: str, text: str, who: str = "wangwu") -> str:
        message = bot_text(msg_id, text) | {"from": {"userid": who}}
        return stream_until_finished(url, "memo", post_bot(url, "memo", message))[-1]["stream"]["content"]  # type: ignore[no-any-return]

    questions = [QUESTION, f"{QUESTION} (1)", f"{QUESTION} (2)", f"{QUESTION} (3)"]
    with engine_hook(wecom_app, record):
        answers = [ask(f"m-memo-{i}", questions[i]) for i in range(3)]
        ask("m-memo-other", QUESTION, who="zhaoliu")
    assert answers[0] and ANSWERS["alpha"].startswith(answers[0])  # what alpha was trained to say (cut at 12 tokens)

    def history(*turns: int) -> tuple[dict[str, str], ...]:
        remembered = [i for i in turns if answers[i] != APOLOGY][-2:]
        return tuple(
            m
            for i in remembered
            for m in ({"role": "user", "content": questions[i]}, {"role": "assistant", "content": answers[i]})
        )

    def asking(i: int) -> dict[str, str]:
        return {"role": "user", "content": questions[i]}

    assert prompts[0] == (asking(0),)
    assert prompts[1] == (*history(0), asking(1))
    assert prompts[2] == (*history(0, 1), asking(2))
    assert prompts[3] == (asking(0),)  # another user: a conversation of its own
    # Bounded: the fourth question of the first user carries at most the last two exchanges.
    with engine_hook(wecom_app, record):
        ask("m-memo-3", questions[3])
    assert prompts[4] == (*history(0, 1, 2), asking(3))


# -- bad input ------------------------------------------------------------------------------------


def _bad_requests() -> list[Any]:
    shop, helper = sender("shop"), sender("helper")
    xxe = b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><MsgType>text</MsgType><Content>&x;</Content></xml>'
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b"<xml><Encrypt>&b;</Encrypt></xml>"
    )
    garbage = "bm90IGEgcmVhbCBjaXBoZXJ0ZXh0"
    other_corp = WeComSender(BOTS["shop"]["token"], BOTS["shop"]["encoding_aes_key"], "another-corp")
    q_json, _, _ = helper.bot_message({})
    deep = b'{"encrypt": "' + garbage.encode() + b'", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    deep_xml = b"<xml><Encrypt>" + garbage.encode() + b"</Encrypt>" + b"<a>" * 5_000 + b"</a>" * 5_000 + b"</xml>"
    return [
        pytest.param(
            "shop",
            shop.query(garbage, bad_signature=True),
            f"<xml><Encrypt>{garbage}</Encrypt></xml>".encode(),
            403,
            "invalid_signature",
            id="app-bad-signature",
        ),
        pytest.param(
            "shop",
            shop.query(garbage),
            f"<xml><Encrypt>{garbage}</Encrypt></xml>".encode(),
            400,
            "invalid_ciphertext",
            id="app-bad-ciphertext",
        ),
        pytest.param(
            "shop",
            *other_corp.app_message(CORP_ID, "u", "hi", "1"),
            400,
            "invalid_receive_id",
            id="app-wrong-receive-id",
        ),
        pytest.param(
            "shop",
            shop.query(garbage),
            b"<xml><Encrypt>unclosed</xml>",
            400,
            "invalid_wecom_message",
            id="app-malformed-xml",
        ),
        pytest.param("shop", shop.query(garbage), laughs, 400, "invalid_wecom_message", id="app-entity-expansion"),
        pytest.param(
            "shop",
            shop.query(garbage),
            b"<xml><ToUserName>x</ToUserName></xml>",
            400,
            "invalid_wecom_message",
            id="app-no-encrypt",
        ),
        pytest.param("shop", *shop.sealed_xml(CORP_ID, xxe), 400, "invalid_wecom_message", id="app-inner-xxe"),
        pytest.param(
            "shop", *shop.sealed_xml(CORP_ID, b"not xml at all"), 400, "invalid_wecom_message", id="app-inner-not-xml"
        ),
        pytest.param(
            "shop", "timestamp=1&nonce=2", b"<xml/>", 400, "missing_required_parameter", id="app-no-signature"
        ),
        pytest.param("helper", q_json, b"{not json", 400, "invalid_wecom_message", id="bot-malformed-json"),
        pytest.param("helper", q_json, b'["encrypt"]', 400, "invalid_wecom_message", id="bot-json-array"),
        pytest.param("helper", q_json, b'{"encrypted": "x"}', 400, "invalid_wecom_message", id="bot-no-encrypt"),
        pytest.param(
            "helper",
            helper.query(garbage, bad_signature=True),
            json.dumps({"encrypt": garbage}).encode(),
            403,
            "invalid_signature",
            id="bot-bad-signature",
        ),
        pytest.param(
            "helper", *helper.sealed_json(b"<xml>not json</xml>"), 400, "invalid_wecom_message", id="bot-inner-not-json"
        ),
        pytest.param("nobody", shop.query(garbage), b"<xml/>", 404, "not_found", id="unknown-bot"),
        # Signature first: an unsigned body is never parsed, however it is built ...
        pytest.param(
            "helper", helper.query(garbage, bad_signature=True), deep, 403, "invalid_signature", id="bot-deep-unsigned"
        ),
        pytest.param(
            "shop", shop.query(garbage, bad_signature=True), deep_xml, 403, "invalid_signature", id="app-deep-unsigned"
        ),
        pytest.param(
            "helper", helper.query(garbage), b"[" * 60_000, 400, "invalid_wecom_message", id="bot-deep-no-encrypt"
        ),
        # ... a signed one is parsed with bounds, and must carry exactly the ciphertext that was signed.
        pytest.param("helper", helper.query(garbage), deep, 400, "invalid_wecom_message", id="bot-deep-signed"),
        pytest.param(
            "helper",
            helper.query(garbage),
            b'{"encrypt": "' + garbage.encode() + b'", "encrypt": "AAAA"}',
            400,
            "invalid_wecom_message",
            id="bot-two-ciphertexts",
        ),
        pytest.param(
            "helper",
            helper.query(garbage),
            b'{"encrypt": "' + garbage.encode() + b'", "pad": "' + b"x" * 70_000 + b'"}',
            413,
            "request_too_large",
            id="bot-oversized",
        ),
    ]


@pytest.mark.parametrize(("bot", "query", "body", "status", "code"), _bad_requests())
def test_bad_callbacks_are_refused_cleanly(
    url: str,
    api: FakeWeComApi,
    wecom_app,
    bot: str,
    query: str,
    body: bytes,  # type: ignore[no-untyped-def]
    status: int,
    code: str,
) -> None:
    settled(wecom_app)
    sends = len(api.sends)
    response = httpx.post(f"{url}/wecom/{bot}?{query}", content=body, timeout=5)
    assert_wecom_error(response, status, code)
    assert wecom_app.state.wecom.pending == 0  # nothing was started (an answer starts before the reply)
    assert len(api.sends) == sends


def test_callbacks_and_reply_latency_are_in_the_metrics(url: str) -> None:
    httpx.post(f"{url}/wecom/nobody-{uuid.uuid4().hex[:6]}?timestamp=1", content=b"<xml/>", timeout=5)
    text = metrics(url)
    assert metric_value(text, "lora_gateway_wecom_callbacks_total", bot="unknown", outcome="unknown_bot") >= 1
    assert metric_value(text, "lora_gateway_wecom_callbacks_total", bot="shop", outcome="accepted") >= 1
    assert metric_value(text, "lora_gateway_wecom_callbacks_total", bot="helper", outcome="stream_refresh") >= 1
    assert metric_value(text, "lora_gateway_wecom_callbacks_total", bot="shop", outcome="bad_signature") >= 1
    assert metric_value(text, "lora_gateway_wecom_reply_seconds_count", bot="shop") >= 1
    assert metric_value(text, "lora_gateway_wecom_messages_sent_total", bot="shop", outcome="ok") >= 1
    assert 'bot="nobody' not in text  # unconfigured names never become labels


# -- a context smaller than the bot's max_tokens ----------------------------------------------------


def test_a_bots_max_tokens_is_clamped_to_the_room_the_context_leaves(tight) -> None:  # type: ignore[no-untyped-def]
    """max_tokens 1024 on a 40-token context: the answer is what fits (alpha's words), not the apology."""
    url, app = tight
    final = stream_until_finished(
        url, "tight", post_bot(url, "tight", bot_text("m-tight-1", QUESTION) | {"from": {"userid": "a"}})
    )
    content = final[-1]["stream"]["content"]
    assert content and content != APOLOGY and ANSWERS["alpha"].startswith(content), content


def test_history_that_no_longer_fits_is_dropped_oldest_first(tight) -> None:  # type: ignore[no-untyped-def]
    url, app = tight
    answered: list[tuple[dict[str, str], ...]] = []
    with engine_hook(app, answered.append):
        ask = bot_text("m-tight-2", QUESTION) | {"from": {"userid": "b"}}
        first = stream_until_finished(url, "tight", post_bot(url, "tight", ask))[-1]["stream"]["content"]
        again = bot_text("m-tight-3", QUESTION) | {"from": {"userid": "b"}}
        second = stream_until_finished(url, "tight", post_bot(url, "tight", again))[-1]["stream"]["content"]
    assert first and first != APOLOGY and ANSWERS["alpha"].startswith(first)
    # One exchange of history plus the question is more than 40 tokens: the exchange was dropped,
    # never the new message, and the user got alpha's answer again rather than an apology.
    assert second == first
    assert [r.messages for r in answered][-1] == ({"role": "user", "content": QUESTION},)

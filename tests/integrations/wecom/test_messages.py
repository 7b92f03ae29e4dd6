"""Callback bodies: WeCom's XML and JSON, and the tricks a hostile body can try."""

from __future__ import annotations

import json

import pytest

from server.integrations.wecom.messages import (
    AppMessage,
    BotMessage,
    MalformedMessage,
    parse_json,
    parse_xml,
    stream_reply,
)

TEXT_XML = (
    b"<xml><ToUserName><![CDATA[ww1234]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
    b"<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>"
    b"<Content><![CDATA[\xe8\xae\xa2\xe5\x8d\x95 <b>&amp;</b>]]></Content><MsgId>1234567890123456</MsgId>"
    b"<AgentID>1</AgentID></xml>"
)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><Encrypt>&lol3;</Encrypt></xml>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>"""
DTD_ONLY = (
    b"""<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:1/evil.dtd"><xml><Encrypt>a</Encrypt></xml>"""
)


def test_a_text_message_to_an_app() -> None:
    message = AppMessage.from_xml(TEXT_XML)
    assert message == AppMessage(
        msg_id="1234567890123456", user="zhangsan", msg_type="text", content="订单 <b>&amp;</b>"
    )


def test_an_event_without_msgid_gets_a_stable_dedup_key() -> None:
    event = (
        b"<xml><FromUserName>u</FromUserName><CreateTime>7</CreateTime><MsgType>event</MsgType>"
        b"<Event>enter_agent</Event></xml>"
    )
    assert AppMessage.from_xml(event).msg_id == AppMessage.from_xml(event).msg_id == "u:7:enter_agent"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BILLION_LAUGHS, id="entity-expansion"),
        pytest.param(EXTERNAL_ENTITY, id="external-entity"),
        pytest.param(DTD_ONLY, id="external-dtd"),
        pytest.param(b"<xml><Encrypt>unclosed</xml>", id="not-well-formed"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe<xml/>", id="bad-encoding"),
    ],
)
def test_hostile_or_broken_xml_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_xml(body)
    assert caught.value.status_code == 400


def test_an_app_message_needs_a_sender_and_type() -> None:
    with pytest.raises(MalformedMessage):
        AppMessage.from_xml(b"<xml><Content>hi</Content></xml>")


def test_ai_bot_text_and_stream_messages() -> None:
    text = {
        "msgid": "m1",
        "aibotid": "b",
        "chattype": "single",
        "from": {"userid": "lisi"},
        "msgtype": "text",
        "text": {"content": "你好"},
    }
    assert BotMessage.from_json(json.dumps(text).encode()) == BotMessage("m1", "text", "lisi", "你好", None)
    poll = {"msgid": "m2", "msgtype": "stream", "stream": {"id": "s1"}}
    assert BotMessage.from_json(json.dumps(poll).encode()).stream_id == "s1"


def test_the_mention_is_removed_in_group_chats() -> None:
    group = {
        "msgid": "m1",
        "chattype": "group",
        "chatid": "c",
        "from": {"userid": "u"},
        "msgtype": "text",
        "text": {"content": "@客服助手 where is my order?"},
    }
    assert BotMessage.from_json(json.dumps(group).encode()).content == "where is my order?"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"msgid": "m"}).encode(),  # no msgtype
        json.dumps({"msgtype": "text", "text": {"content": "x"}}).encode(),  # no msgid
        json.dumps({"msgid": "m", "msgtype": "stream", "stream": {}}).encode(),  # poll without id
        json.dumps({"msgid": "m", "msgtype": "text", "text": {"content": 5}}).encode(),
    ],
)
def test_malformed_ai_bot_json_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        BotMessage.from_json(body)


def test_parse_json_refuses_non_objects() -> None:
    with pytest.raises(MalformedMessage):
        parse_json(b'"text"')


def test_stream_reply_shape() -> None:
    reply = json.loads(stream_reply("s1", "答", True))
    assert reply == {"msgtype": "stream", "stream": {"id": "s1", "finish": True, "content": "答"}}

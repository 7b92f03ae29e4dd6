"""Parse WeCom callback bodies and build replies; nothing here knows about models or HTTP.

Nothing an unauthenticated sender wrote is parsed: ``find_ciphertext`` picks the ciphertext out of
a size-bounded body with one linear scan, the signature is checked on it, and only then is the body
parsed (bounded in size and depth) and its field required to be the one that was signed. XML is
parsed with defusedxml with DTDs forbidden outright (WeCom never sends one), so entity expansion
and external-entity tricks fail before any parsing work is done.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from ...errors import InvalidRequest, RequestTooLarge
from ...jsonbounds import JSONRefused, loads_bounded


class MalformedMessage(InvalidRequest):
    default_code = "invalid_wecom_message"


MAX_CALLBACK_BYTES = 64 * 1024  # a callback carries one message of at most 2048 bytes of text, encrypted
_CIPHERTEXT = {
    "json": re.compile(rb'"encrypt"\s*:\s*"([A-Za-z0-9+/=]+)"'),
    "xml": re.compile(rb"<Encrypt>\s*(?:<!\[CDATA\[([A-Za-z0-9+/=]+)\]\]>|([A-Za-z0-9+/=]+))\s*</Encrypt>"),
}


def find_ciphertext(body: bytes, kind: Literal["json", "xml"]) -> str:
    """The callback's ciphertext, found without parsing ``body`` (its signature is not checked yet)."""
    if len(body) > MAX_CALLBACK_BYTES:
        raise RequestTooLarge(f"A WeCom callback body is at most {MAX_CALLBACK_BYTES} bytes.")
    match = _CIPHERTEXT[kind].search(body)
    if match is None:
        field = "encrypt" if kind == "json" else "Encrypt"
        raise MalformedMessage(f"The callback has no `{field}`.", param=field)
    return next(group for group in match.groups() if group).decode("ascii")


def signed_fields(body: bytes, kind: Literal["json", "xml"], ciphertext: str) -> dict[str, Any]:
    """The parsed body, once its ciphertext's signature held; its field must be the signed one."""
    data, field = (parse_json(body), "encrypt") if kind == "json" else (parse_xml(body), "Encrypt")
    if data.get(field) != ciphertext:
        raise MalformedMessage(f"The callback's `{field}` is not the one that was signed.", param=field)
    return data


def parse_xml(body: bytes) -> dict[str, str]:
    """The root's child elements as ``{tag: text}`` (WeCom's XML is one flat level)."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError):
        raise MalformedMessage("The body is not well-formed WeCom XML.") from None
    return {child.tag: (child.text or "") for child in root}


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = loads_bounded(body, max_bytes=MAX_CALLBACK_BYTES, what="The body")
    except JSONRefused as exc:
        raise MalformedMessage(f"{exc}.") from None
    if not isinstance(data, dict):
        raise MalformedMessage("The body must be a JSON object.")
    return data


@dataclass(frozen=True)
class AppMessage:
    """A decrypted message to a self-built app."""

    msg_id: str
    user: str
    msg_type: str
    content: str

    @classmethod
    def from_xml(cls, body: bytes) -> AppMessage:
        fields = parse_xml(body)
        user, msg_type = fields.get("FromUserName", ""), fields.get("MsgType", "")
        if not user or not msg_type:
            raise MalformedMessage("The message has no FromUserName or MsgType.")
        # Events carry no MsgId; the sender and time identify a retry of one as well.
        msg_id = fields.get("MsgId") or f"{user}:{fields.get('CreateTime', '')}:{fields.get('Event', '')}"
        return cls(msg_id=msg_id, user=user, msg_type=msg_type, content=fields.get("Content", ""))


_MENTION = re.compile(r"^\s*@\S+\s*")


@dataclass(frozen=True)
class BotMessage:
    """A decrypted AI-bot callback: a user's message, or a poll of an answer (``msg_type`` stream)."""

    msg_id: str
    msg_type: str
    user: str
    content: str
    stream_id: str | None
    chat_id: str = ""  # a group chat's id; empty in 1:1 chats
    feedback: BotFeedback | None = None  # a feedback_event: a user's thumbs on an earlier answer

    @classmethod
    def from_json(cls, body: bytes) -> BotMessage:
        data = parse_json(body)
        msg_type = data.get("msgtype")
        if not isinstance(msg_type, str) or not msg_type:
            raise MalformedMessage("The message has no msgtype.", param="msgtype")
        sender = data.get("from")
        user = sender.get("userid", "") if isinstance(sender, dict) else ""
        text = data.get("text")
        content = text.get("content", "") if isinstance(text, dict) else ""
        if not isinstance(content, str):
            raise MalformedMessage("text.content must be a string.", param="text.content")
        if data.get("chattype") == "group":
            content = _MENTION.sub("", content, count=1)  # "@bot question" in a group
        stream = data.get("stream")
        stream_id = stream.get("id") if isinstance(stream, dict) else None
        if msg_type == "stream" and not isinstance(stream_id, str):
            raise MalformedMessage("A stream callback needs stream.id.", param="stream.id")
        msg_id = data.get("msgid") or ""
        if not isinstance(msg_id, str) or (not msg_id and msg_type != "stream"):
            raise MalformedMessage("The message has no msgid.", param="msgid")
        chat_id = data.get("chatid") if data.get("chattype") == "group" else ""
        return cls(
            msg_id=msg_id,
            msg_type=msg_type,
            user=str(user),
            content=content,
            stream_id=stream_id,
            chat_id=chat_id if isinstance(chat_id, str) else "",
            feedback=BotFeedback.from_event(data.get("event")) if msg_type == "event" else None,
        )


@dataclass(frozen=True)
class BotFeedback:
    """WeCom's ``feedback_event``: ``id`` is the one our answer's first stream reply set,
    ``type`` 1 accurate, 2 inaccurate, 3 rating withdrawn; ``content`` the user's words."""

    id: str
    type: int
    content: str

    @classmethod
    def from_event(cls, event: object) -> BotFeedback | None:
        if not isinstance(event, dict) or event.get("eventtype") != "feedback_event":
            return None
        body = event.get("feedback_event")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or body.get("type") not in (1, 2, 3):
            raise MalformedMessage("A feedback_event needs an id and a type of 1, 2 or 3.", param="feedback_event")
        content = body.get("content")
        return cls(body["id"], int(body["type"]), content if isinstance(content, str) else "")


def stream_reply(stream_id: str, content: str, finish: bool, feedback_id: str | None = None) -> bytes:
    """An AI-bot stream reply; with ``feedback_id`` WeCom shows thumbs under the answer and sends
    a ``feedback_event`` carrying that id when the user taps one."""
    stream: dict[str, Any] = {"id": stream_id, "finish": finish, "content": content}
    if feedback_id is not None:
        stream["feedback"] = {"id": feedback_id}
    return json.dumps({"msgtype": "stream", "stream": stream}, ensure_ascii=False).encode()


def envelope(encrypted: str, msg_signature: str, timestamp: str, nonce: str) -> dict[str, str]:
    """The AI bot's encrypted reply body."""
    return {"encrypt": encrypted, "msgsignature": msg_signature, "timestamp": timestamp, "nonce": nonce}


def unix_now() -> str:
    return str(int(time.time()))

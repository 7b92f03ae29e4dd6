"""A fake WeCom server API on 127.0.0.1 (``gettoken``, ``message/send``) and a fake WeCom client
that signs and encrypts callbacks the way WeCom does."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request

from server.integrations.wecom.crypto import WeComCrypto, signature


@dataclass
class FakeWeComApi:
    """Records every call; tokens can be expired on demand, as WeCom does after 7200 s."""

    corp_id: str
    corp_secret: str
    token_calls: list[dict[str, str]] = field(default_factory=list)
    sends: list[dict[str, Any]] = field(default_factory=list)
    rejected_sends: int = 0
    _valid: set[str] = field(default_factory=set)
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/ready")
        def ready() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/cgi-bin/gettoken")
        def gettoken(corpid: str, corpsecret: str) -> dict[str, Any]:
            with self._lock:
                self.token_calls.append({"corpid": corpid, "corpsecret": corpsecret})
                if (corpid, corpsecret) != (self.corp_id, self.corp_secret):
                    return {"errcode": 40001, "errmsg": "invalid credential"}
                token = f"token-{next(self._counter)}"
                self._valid.add(token)
            return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}

        @app.post("/cgi-bin/message/send")
        async def send(access_token: str, request: Request) -> dict[str, Any]:
            body = json.loads(await request.body())
            with self._lock:
                if access_token not in self._valid:
                    self.rejected_sends += 1
                    return {"errcode": 42001, "errmsg": "access_token expired"}
                if len(body["text"]["content"].encode()) > 2048:
                    return {"errcode": 44004, "errmsg": "text content exceeds 2048 bytes"}
                self.sends.append(body)
            return {"errcode": 0, "errmsg": "ok", "invaliduser": ""}

        return app

    def expire_tokens(self) -> None:
        with self._lock:
            self._valid.clear()

    def texts(self) -> list[str]:
        with self._lock:
            return [send["text"]["content"] for send in self.sends]


class WeComSender:
    """Builds callback requests for one bot, signed and encrypted as WeCom sends them."""

    def __init__(self, token: str, aes_key: str, receive_id: str) -> None:
        self.token = token
        self.crypto = WeComCrypto(token, aes_key, receive_id)
        self._nonces = itertools.count(1000)

    def query(self, encrypted: str, *, timestamp: str | None = None, bad_signature: bool = False, **extra: str) -> str:
        timestamp = timestamp or str(int(time.time()))
        nonce = str(next(self._nonces))
        sig = "0" * 40 if bad_signature else signature(self.token, timestamp, nonce, encrypted)
        params = {"msg_signature": sig, "timestamp": timestamp, "nonce": nonce, **extra}
        return "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())

    def verification(self, echo: str, *, bad_signature: bool = False) -> str:
        echostr = self.crypto.encrypt(echo.encode())
        return self.query(echostr, echostr=echostr, bad_signature=bad_signature)

    def app_message(
        self, corp_id: str, user: str, content: str, msg_id: str, *, msg_type: str = "text", inner: bytes | None = None
    ) -> tuple[str, bytes]:
        """(query string, XML body) of a message to a self-built app."""
        if inner is None:
            inner = (
                f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
                f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>"
                f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>"
            ).encode()
        return self.sealed_xml(corp_id, inner)

    def sealed_xml(self, corp_id: str, inner: bytes, **query: Any) -> tuple[str, bytes]:
        encrypted = self.crypto.encrypt(inner)
        body = (
            f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
            "<AgentID><![CDATA[1000002]]></AgentID></xml>"
        ).encode()
        return self.query(encrypted, **query), body

    def bot_message(self, message: dict[str, Any], **query: Any) -> tuple[str, bytes, str]:
        """(query string, JSON body, nonce) of an AI-bot callback."""
        q, body = self.sealed_json(json.dumps(message, ensure_ascii=False).encode(), **query)
        nonce = dict(pair.split("=") for pair in q.split("&"))["nonce"]
        return q, body, nonce

    def sealed_json(self, inner: bytes, **query: Any) -> tuple[str, bytes]:
        """(query string, JSON body) of an AI-bot callback carrying ``inner``, whatever it holds."""
        encrypted = self.crypto.encrypt(inner)
        return self.query(encrypted, **query), json.dumps({"encrypt": encrypted}).encode()

    def open_reply(self, reply: dict[str, str], nonce: str) -> dict[str, Any]:
        """Check an encrypted AI-bot reply as WeCom would, and return its decrypted JSON."""
        assert set(reply) == {"encrypt", "msgsignature", "timestamp", "nonce"}
        assert reply["nonce"] == nonce
        plain = self.crypto.open(reply["msgsignature"], reply["timestamp"], reply["nonce"], reply["encrypt"])
        return json.loads(plain)  # type: ignore[no-any-return]

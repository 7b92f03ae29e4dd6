"""The two WeCom server APIs an app bot needs: ``gettoken`` and ``message/send``.

``access_token`` is cached per corp and app until shortly before WeCom says it expires, fetched once
however many answers are waiting for it, and fetched again when WeCom rejects it early (tokens are
invalidated when the secret is reset, or when another server fetched a newer one).

Both the token and the secret travel in query strings, which httpx logs at INFO; a filter on
httpx's logger masks them, so turning up the log level never prints a secret.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ...channels.text import split_utf8

logger = logging.getLogger(__name__)

TEXT_MESSAGE_BYTES = 2048
# 40014 invalid access_token, 41001 access_token missing, 42001 access_token expired
TOKEN_REJECTED = frozenset({40014, 41001, 42001})
_EARLY_REFRESH = 300.0  # seconds before expiry at which a token counts as stale
_SECRET_QUERY = re.compile(r"((?:access_token|corpsecret)=)[^&\s\"']+")


class WeComApiError(Exception):
    """WeCom answered with a non-zero ``errcode`` (or not at all)."""

    def __init__(self, call: str, errcode: int, errmsg: str) -> None:
        hint = " (add this server's IP to the app's trusted IPs)" if errcode == 60020 else ""
        super().__init__(f"WeCom {call} failed: errcode {errcode}: {errmsg}{hint}")
        self.errcode = errcode


class RedactSecrets(logging.Filter):
    """Mask ``access_token=`` and ``corpsecret=`` values in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_QUERY.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, RedactSecrets) for f in httpx_logger.filters):
        httpx_logger.addFilter(RedactSecrets())


@dataclass(frozen=True)
class AppCredentials:
    corp_id: str
    corp_secret: str
    agent_id: int


@dataclass
class _Token:
    value: str
    expires_at: float


class WeComApi:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        install_log_redaction()
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)
        self._clock = clock
        self._tokens: dict[tuple[str, int], _Token] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def access_token(self, app: AppCredentials, *, stale: str | None = None) -> str:
        """A valid token; ``stale`` is one WeCom just rejected, so a newer one is fetched."""
        key = (app.corp_id, app.agent_id)
        async with self._locks.setdefault(key, asyncio.Lock()):
            token = self._tokens.get(key)
            if token and token.value != stale and self._clock() < token.expires_at - _EARLY_REFRESH:
                return token.value
            data = await self._call(
                "gettoken", "GET", "/cgi-bin/gettoken", params={"corpid": app.corp_id, "corpsecret": app.corp_secret}
            )
            value = data.get("access_token")
            if not isinstance(value, str) or not value:
                raise WeComApiError("gettoken", -1, "no access_token in the answer")
            self._tokens[key] = _Token(value, self._clock() + float(data.get("expires_in", 7200)))
            return value

    async def send_text(self, app: AppCredentials, user: str, text: str) -> int:
        """Send ``text`` to ``user``, split into as many messages as WeCom's 2048 bytes need."""
        pieces = split_utf8(text, TEXT_MESSAGE_BYTES)
        for piece in pieces:
            body = {"touser": user, "msgtype": "text", "agentid": app.agent_id, "text": {"content": piece}}
            await self._with_token(app, "message/send", "/cgi-bin/message/send", body)
        return len(pieces)

    async def _with_token(self, app: AppCredentials, call: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        token = await self.access_token(app)
        try:
            return await self._call(call, "POST", path, params={"access_token": token}, json=body)
        except WeComApiError as exc:
            if exc.errcode not in TOKEN_REJECTED:
                raise
        token = await self.access_token(app, stale=token)
        return await self._call(call, "POST", path, params={"access_token": token}, json=body)

    async def _call(self, call: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, **kwargs)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            # str(exc) of an HTTP error would repeat the URL, and with it the secret
            raise WeComApiError(call, -1, type(exc).__name__) from None
        if not isinstance(data, dict):
            raise WeComApiError(call, -1, "the answer is not a JSON object")
        errcode = int(data.get("errcode", 0) or 0)
        if errcode:
            raise WeComApiError(call, errcode, str(data.get("errmsg", "")))
        return data

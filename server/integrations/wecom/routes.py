"""``/wecom/{bot}``: WeCom's URL check (GET) and its message callbacks (POST).

No API key here: WeCom cannot send one. The signature made with the bot's Token is the
authentication, and nothing is decrypted before it holds. Every callback is counted by bot and
outcome; errors are raised and rendered by the gateway's one error handler.
"""

from __future__ import annotations

from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ...errors import GatewayError, InvalidRequest
from .messages import envelope, unix_now
from .service import Bot, Query, WeComService

router = APIRouter(prefix="/wecom", include_in_schema=False)

_OUTCOME_BY_STATUS = {403: "bad_signature", 404: "unknown_bot"}


def _service(request: Request) -> WeComService:
    service: WeComService = request.app.state.wecom
    return service


def _query(request: Request) -> dict[str, str]:
    """Query parameters percent-decoded but with ``+`` kept: base64 uses it, and WeCom does not
    always encode it (standard form decoding would turn it into a space and break the signature)."""
    params: dict[str, str] = {}
    for pair in request.scope.get("query_string", b"").decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if name:
            params[unquote(name)] = unquote(value)
    return params


def _signed(params: dict[str, str]) -> Query:
    for name in ("msg_signature", "timestamp", "nonce"):
        if not params.get(name):
            raise InvalidRequest(f"Missing query parameter `{name}`.", param=name, code="missing_required_parameter")
    return Query(params["msg_signature"], params["timestamp"], params["nonce"])


def _count(service: WeComService, bot: str, outcome: str) -> None:
    service.metrics.wecom_callbacks.labels(bot if bot in service.bots else "unknown", outcome).inc()


@router.get("/{bot}")
async def verify_url(bot: str, request: Request) -> Response:
    service = _service(request)
    try:
        params = _query(request)
        query = _signed(params)
        if not params.get("echostr"):
            raise InvalidRequest(
                "Missing query parameter `echostr`.", param="echostr", code="missing_required_parameter"
            )
        plain = service.verify_url(service.bot(bot), query, params["echostr"])
    except GatewayError as error:
        _count(service, bot, _OUTCOME_BY_STATUS.get(error.status_code, "bad_request"))
        raise
    _count(service, bot, "verified")
    return PlainTextResponse(plain)


@router.post("/{bot}")
async def callback(bot: str, request: Request) -> Response:
    service = _service(request)
    try:
        target: Bot = service.bot(bot)
        query = _signed(_query(request))
        body = await request.body()
        if target.config.channel == "app":
            outcome = service.on_app_callback(target, query, body)
            reply = None
        else:
            reply, outcome = service.on_bot_callback(target, query, body)
    except GatewayError as error:
        _count(service, bot, _OUTCOME_BY_STATUS.get(error.status_code, "bad_request"))
        raise
    _count(service, bot, outcome)
    if reply is None:
        return Response(status_code=200)  # an empty 200: WeCom's "received, nothing to say now"
    timestamp = unix_now()
    encrypted, signature = target.crypto.seal(reply, timestamp, query.nonce)
    return JSONResponse(envelope(encrypted, signature, timestamp, query.nonce))

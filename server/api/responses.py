"""``POST /v1/responses``: OpenAI's Responses API over the one completion path.

The body is validated as a ``ResponsesRequest`` (``server.openai.responses``) and answered as the
chat request it translates to, by ``server.completions``: keys, limits, admission, adapters,
constrained decoding, metrics and feedback capture are chat's. The answer's id is the response's
(``resp_...``), so ``POST /v1/feedback`` rates it by that id. A stream is the Responses API's typed
events (``event:`` and ``data:`` lines), ending with ``response.completed``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from ..completions import CompletionStream, complete, open_stream
from ..openai.responses import ResponseEvents, ResponsesRequest, response_from_chat, response_id
from ..terms.address import answered_by
from .chat import USER_HEADER, VERSION_HEADER
from .deps import get_gateway, require_api_key
from .disconnects import CancelOnDisconnect, EventStream
from .errors import RESPONSES_PATH

router = APIRouter()


@router.post(RESPONSES_PATH, response_model=None)
async def create_response(request: Request) -> Response:
    gateway = get_gateway(request)
    principal = await require_api_key(request)
    body = await _body(request)
    chat = body.to_chat()
    rid = response_id()
    user = request.headers.get(USER_HEADER)
    if body.stream:
        stream = await open_stream(gateway, chat, user, principal, completion=rid)
        headers = {"Cache-Control": "no-cache", **stream.headers}
        if stream.version:
            headers[VERSION_HEADER] = stream.version
        return EventStream(_events(stream, body, rid), end="", headers=headers)
    limits: dict[str, str] = {}
    watch = CancelOnDisconnect(request.receive)
    async with watch:
        completion = await complete(gateway, chat, user=user, principal=principal, headers=limits, completion=rid)
    if watch.gone:
        return Response(status_code=499)
    headers = dict(limits)
    version = answered_by(completion.system_fingerprint)
    if version:
        headers[VERSION_HEADER] = str(version)
    return JSONResponse(response_from_chat(body, completion, rid), headers=headers)


async def _body(request: Request) -> ResponsesRequest:
    raw = await request.body()
    try:
        return ResponsesRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":  # a lone surrogate escape: refused by its field
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError):
                pass
            else:
                try:
                    return ResponsesRequest.model_validate(parsed)
                except ValidationError as again:
                    errors = again.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def _events(stream: CompletionStream, body: ResponsesRequest, rid: str) -> AsyncIterator[str]:
    events = ResponseEvents(body, rid, body.model)
    yield "".join(events.start())
    async with contextlib.aclosing(stream.chunks()) as chunks:  # type: ignore[type-var]
        async for item in chunks:
            if isinstance(item, Exception):
                yield "".join(events.failed(item.code or item.error_type, item.message))
                return
            out = events.chunk(item)
            if out:
                yield "".join(out)
    yield "".join(events.finish())

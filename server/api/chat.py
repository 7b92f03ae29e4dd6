"""``POST /v1/chat/completions``: HTTP only. The key is checked and the body validated
(``ChatCompletionRequest``) here; the completion itself is ``server.completions``, shared with the
integrations; this module frames it as JSON or as server-sent events, and stops generating when a
client goes away.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from ..completions import CompletionStream, answered_by, complete, open_stream
from .deps import get_gateway, require_api_key
from .disconnects import CancelOnDisconnect, EventStream
from .errors import CHAT_PATH
from .protocol import ChatCompletionRequest

DONE = "data: [DONE]\n\n"  # OpenAI's end of a stream


# Which adapter version answered (``name@N``; absent for the base), beside ``system_fingerprint``.
VERSION_HEADER = "X-Adapter-Version"
# Who the end user is, for a request without OpenAI's ``user``: keeps them on one side of a split.
USER_HEADER = "X-User-Id"


# The route reads its body itself, so /openapi.json is told what it is (schemas: ``add_schemas``).
_BODY = {"$ref": "#/components/schemas/ChatCompletionRequest"}
_DOCUMENTED = {"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY}}}}


async def create_chat_completion(request: Request) -> Response:
    """The key is checked first (a wrong key learns nothing about the body), then the body. Both by
    hand rather than as FastAPI parameters: pydantic parses the bytes in one call, where FastAPI's
    dependency and body machinery (JSON decoding, then validation of the decoded objects) cost
    this, the hottest route, about 0.1 ms more per request (measured under load)."""
    gateway = get_gateway(request)
    principal = await require_api_key(request)
    body = await chat_request(request)
    user = request.headers.get(USER_HEADER)
    if body.stream:
        stream = await open_stream(gateway, body, user, principal)
        headers = {"Cache-Control": "no-cache", **stream.headers}
        if stream.version:
            headers[VERSION_HEADER] = stream.version
        return EventStream(_sse(stream), end=DONE, headers=headers)
    limits: dict[str, str] = {}  # the key's x-ratelimit-* headers, filled at admission
    # A stream ends when its client leaves (EventStream); a plain answer would go on for nobody.
    watch = CancelOnDisconnect(request.receive)
    async with watch:
        completion = await complete(gateway, body, user=user, principal=principal, headers=limits)
    if watch.gone:
        return Response(status_code=499)
    headers = dict(limits)
    version = answered_by(completion.system_fingerprint)
    if version:
        headers[VERSION_HEADER] = version
    # Serialised by pydantic's core in one call: FastAPI would walk the object in Python first.
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


async def chat_request(request: Request) -> ChatCompletionRequest:
    """The validated body; a problem is FastAPI's ``RequestValidationError``, answered like any other.

    pydantic's JSON parser refuses a lone surrogate escape (``\\ud800``) as bad JSON; Python's
    accepts it, so such a body is parsed again and refused by the field that holds it."""
    raw = await request.body()
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            try:
                parsed = json.loads(raw)
            except ValueError:
                pass
            else:
                try:
                    return ChatCompletionRequest.model_validate(parsed)
                except ValidationError as again:
                    errors = again.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def install(app: FastAPI) -> None:
    """The route on the app itself, ahead of the others: an included router would add two layers
    of FastAPI's routing to every request of the hottest route."""
    app.add_api_route(
        CHAT_PATH, create_chat_completion, methods=["POST"], response_model=None, openapi_extra=_DOCUMENTED
    )
    document = app.openapi
    app.openapi = lambda: add_schemas(document())  # type: ignore[method-assign]


def add_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` (FastAPI's document) with the chat body's schemas among its components."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in {**schema.pop("$defs", {}), "ChatCompletionRequest": schema}.items():
        components.setdefault(name, definition)
    return openapi


async def _sse(stream: CompletionStream) -> AsyncIterator[str]:
    """OpenAI's SSE framing: one ``data:`` event per chunk, a failure as an error event (``DONE``
    follows either). Without ``include_usage`` the ``usage`` field is absent; with it, null on
    every chunk but the last."""
    omit = None if stream.include_usage else {"usage"}
    # Closed with us, so a client leaving mid-send ends the completion (and its lease) at once.
    async with contextlib.aclosing(stream.chunks()) as chunks:  # type: ignore[type-var]
        async for item in chunks:
            if isinstance(item, Exception):
                yield f"data: {json.dumps(item.to_dict())}\n\n"
            else:
                yield f"data: {item.model_dump_json(exclude=omit)}\n\n"

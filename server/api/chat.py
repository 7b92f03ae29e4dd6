"""``POST /v1/chat/completions``: HTTP only. The key is checked and the body validated
(``ChatCompletionRequest``) here; the completion itself is ``server.completions``, shared with the
integrations; this module frames it as JSON or as server-sent events, and stops generating when a
client goes away.

The route is reached through a ``FastEndpoint``, ahead of FastAPI's middleware and routing (see
``GatewayApp``); it is also FastAPI's route, for ``/openapi.json`` and any path the entry misses.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from ..completions import CompletionStream, complete, open_stream
from ..openai.chunk_templates import StreamPiece
from ..openai.protocol import ChatCompletionRequest, ChatCompletionResponse
from ..tenancy.service import Principal
from ..terms.address import answered_by
from .deps import get_gateway, require_api_key
from .disconnects import CancelOnDisconnect, EventStream
from .errors import CHAT_PATH, ErrorResponder

DONE = "data: [DONE]\n\n"  # OpenAI's end of a stream
Body = TypeVar("Body", bound=BaseModel)


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
    body = await validated_body(request, ChatCompletionRequest)
    user = request.headers.get(USER_HEADER)
    if body.stream:
        stream = await open_stream(gateway, body, user, principal)
        return EventStream(_sse(stream), end=DONE, headers=stream_headers(stream))
    answered = await whole_completion(request, body, user, principal)
    if answered is None:
        return Response(status_code=499)
    completion, headers = answered
    # Serialised by pydantic's core in one call: FastAPI would walk the object in Python first.
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


def stream_headers(stream: CompletionStream) -> dict[str, str]:
    """A stream's headers: the key's ``x-ratelimit-*`` and which adapter version answers."""
    headers = {"Cache-Control": "no-cache", **stream.headers}
    if stream.version:
        headers[VERSION_HEADER] = stream.version
    return headers


async def whole_completion(
    request: Request,
    body: ChatCompletionRequest,
    user: str | None,
    principal: Principal,
    completion: str | None = None,
) -> tuple[ChatCompletionResponse, dict[str, str]] | None:
    """A plain (not streamed) answer and its headers; None when the client left meanwhile (a
    stream ends when its client leaves, in ``EventStream``; a plain answer would go on for nobody)."""
    limits: dict[str, str] = {}  # the key's x-ratelimit-* headers, filled at admission
    watch = CancelOnDisconnect(request.receive)
    async with watch:
        answer = await complete(
            get_gateway(request), body, user=user, principal=principal, headers=limits, completion=completion
        )
    if watch.gone:
        return None
    version = answered_by(answer.system_fingerprint)
    return answer, {**limits, **({VERSION_HEADER: str(version)} if version else {})}


async def validated_body(request: Request, model: type[Body]) -> Body:
    """The body validated as ``model``; a problem is FastAPI's ``RequestValidationError``, answered
    like any other. Shared by the chat and responses routes.

    pydantic's JSON parser refuses a lone surrogate escape (``\\ud800``) as bad JSON; Python's
    accepts it, so such a body is parsed again and refused by the field that holds it."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
                pass
            else:
                try:
                    return model.model_validate(parsed)
                except ValidationError as again:
                    errors = again.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


class FastEndpoint:
    """A hot route as a plain ASGI app, for ``GatewayApp`` to call ahead of FastAPI's stack.

    Profiled under load, FastAPI's middleware and routing (its telemetry and body-limit layers,
    the exception and exit-stack middleware, the router, the request-response wrappers) were a
    quarter of the event loop's time on the chat route, which needs none of them: it reads its key
    and body itself and has no dependencies (so does ``/v1/responses``). Failures are answered by
    the same ``ErrorResponder`` as FastAPI's exception handlers; the body limit is ours, which
    wraps this app too."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]], path: str, respond: ErrorResponder) -> None:
        self.handler, self.path, self.respond = handler, path, respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.handler(Request(scope, receive, send))
        except Exception as exc:  # answered as FastAPI's handlers would (an unexpected one: a 500, logged)
            response = self.respond(exc, "POST", self.path)
        await response(scope, receive, send)


class GatewayApp(FastAPI):
    """FastAPI, with the hot ``POST`` routes (chat, responses) sent straight to their
    ``fast_endpoints`` (see ``FastEndpoint``); every other request goes through FastAPI as usual."""

    fast_endpoints: dict[str, ASGIApp]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = getattr(self, "fast_endpoints", {}).get(scope["path"])
            if endpoint is not None:
                scope["app"] = self  # as Starlette sets it: the route finds the gateway on the app's state
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def install(app: FastAPI) -> None:
    """FastAPI's route for the chat path, which ``/openapi.json`` documents; requests reach it only
    where ``GatewayApp`` does not take them first (an app that has no ``fast_endpoints``)."""
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
    template = stream.template(omit)  # all chunks but tool calls, logprobs and usage: rendered without models
    # The role chunks go out with the event after them, the first piece of the answer, which is
    # already here (the stream opened on it): one write for the client to wait on, not two.
    roles, held = stream.choices, ""
    # Closed with us, so a client leaving mid-send ends the completion (and its lease) at once.
    async with contextlib.aclosing(stream.chunks(pieces=True)) as chunks:  # type: ignore[type-var]
        async for item in chunks:
            if isinstance(item, StreamPiece):
                event = f"data: {template.render(item)}\n\n"
            elif isinstance(item, Exception):
                event = f"data: {json.dumps(item.to_dict())}\n\n"
            else:
                event = f"data: {item.model_dump_json(exclude=omit)}\n\n"
            if roles:
                roles, held = roles - 1, held + event
                continue
            yield held + event
            held = ""
    if held:
        yield held

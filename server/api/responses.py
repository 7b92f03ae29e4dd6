"""``POST /v1/responses``: OpenAI's Responses API over the one completion path.

The body is validated as a ``ResponsesRequest`` (``server.openai.responses``) and answered as the
chat request it translates to, by ``server.completions``: keys, limits, admission, adapters,
constrained decoding, metrics and feedback capture are chat's. The answer's id is the response's
(``resp_...``), so ``POST /v1/feedback`` rates it by that id. A stream is the Responses API's typed
events (``event:`` and ``data:`` lines), ending with ``response.completed``.

A response is stored unless ``store`` is false (``server.responses_store``): ``previous_response_id``
continues it, ``GET`` and ``DELETE /v1/responses/{id}`` reach it, for the key that made it only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from ..completions import CompletionStream, open_stream
from ..errors import NotFound
from ..gateway import Gateway
from ..openai.responses import ResponseEvents, ResponsesRequest, conversation, response_from_chat, response_id
from ..responses_store import ResponseStore
from .chat import USER_HEADER, stream_headers, validated_body, whole_completion
from .deps import get_gateway, require_api_key
from .disconnects import EventStream
from .errors import RESPONSES_PATH

router = APIRouter()
ResponseId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^resp_[0-9a-f]+$")]


@router.post(RESPONSES_PATH, response_model=None)
async def create_response(request: Request) -> Response:
    gateway = get_gateway(request)
    principal = await require_api_key(request)
    body = await validated_body(request, ResponsesRequest)
    store = _store(gateway)
    previous = None
    if body.previous_response_id is not None:
        previous = await asyncio.to_thread(store.conversation, principal.key_id, body.previous_response_id)
    chat = body.to_chat(previous)
    rid = response_id()
    user = request.headers.get(USER_HEADER)

    async def keep(response: dict[str, Any]) -> None:
        if body.stored:
            items = conversation(previous, body, response["output"])
            await asyncio.to_thread(store.put, principal.key_id, response, items)

    if body.stream:
        stream = await open_stream(gateway, chat, user, principal, completion=rid)
        return EventStream(_events(stream, body, rid, keep), end="", headers=stream_headers(stream))
    answered = await whole_completion(request, chat, user, principal, completion=rid)
    if answered is None:
        return Response(status_code=499)
    completion, headers = answered
    result = response_from_chat(body, completion, rid)
    await keep(result)
    return JSONResponse(result, headers=headers)


@router.get(RESPONSES_PATH + "/{response_id}")
async def get_response(request: Request, response_id: ResponseId) -> JSONResponse:
    principal = await require_api_key(request)
    store = _store(get_gateway(request))
    return JSONResponse(await asyncio.to_thread(store.get, principal.key_id, response_id))


@router.delete(RESPONSES_PATH + "/{response_id}")
async def delete_response(request: Request, response_id: ResponseId) -> JSONResponse:
    principal = await require_api_key(request)
    await asyncio.to_thread(_store(get_gateway(request)).delete, principal.key_id, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _store(gateway: Gateway) -> ResponseStore:
    if gateway.responses is None:  # only a gateway built without create_app
        raise NotFound("Responses are not stored on this gateway.", code="response_not_found")
    return gateway.responses


async def _events(
    stream: CompletionStream, body: ResponsesRequest, rid: str, keep: Callable[[dict[str, Any]], Awaitable[None]]
) -> AsyncIterator[str]:
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
    done = events.finish()
    await keep(events.final)  # stored before the client hears it is complete: a follow-up finds it
    yield "".join(done)

"""``POST /v1/chat/completions``: HTTP only. The body arrives validated (``ChatCompletionRequest``);
the completion itself is ``server.completions``, shared with the integrations; this module frames
it as JSON or as server-sent events, and stops generating when a client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..completions import CompletionStream, answered_by, complete, open_stream
from .deps import GatewayDep, PrincipalDep
from .protocol import ChatCompletionRequest

router = APIRouter()
T = TypeVar("T")


# Which adapter version answered (``name@N``; absent for the base), beside ``system_fingerprint``.
VERSION_HEADER = "X-Adapter-Version"
# Who the end user is, for a request without OpenAI's ``user``: keeps them on one side of a split.
USER_HEADER = "X-User-Id"


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, gateway: GatewayDep, principal: PrincipalDep
) -> Response:
    user = request.headers.get(USER_HEADER)
    if body.stream:
        stream = await open_stream(gateway, body, user, principal)
        headers = {"Cache-Control": "no-cache", **stream.headers}
        if stream.version:
            headers[VERSION_HEADER] = stream.version
        return StreamingResponse(_sse(stream), media_type="text/event-stream", headers=headers)
    limits: dict[str, str] = {}  # the key's x-ratelimit-* headers, filled at admission
    try:
        completion = await _until_disconnected(
            request, complete(gateway, body, user=user, principal=principal, headers=limits)
        )
    except _ClientGone:
        return Response(status_code=499)
    headers = dict(limits)
    version = answered_by(completion.system_fingerprint)
    if version:
        headers[VERSION_HEADER] = version
    # Serialised by pydantic's core in one call: FastAPI would walk the object in Python first.
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)


async def _sse(stream: CompletionStream) -> AsyncIterator[str]:
    """OpenAI's SSE framing: one ``data:`` event per chunk, a failure as an error event, then
    ``[DONE]``. Without ``include_usage`` the ``usage`` field is absent; with it, null on every
    chunk but the last."""
    omit = None if stream.include_usage else {"usage"}
    async for item in stream.chunks():
        if isinstance(item, Exception):
            yield f"data: {json.dumps(item.to_dict())}\n\n"
        else:
            yield f"data: {item.model_dump_json(exclude=omit)}\n\n"
    yield "data: [DONE]\n\n"


class _ClientGone(Exception):
    pass


async def _until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it as soon as the client disconnects (non-streaming requests).

    Starlette cancels a streaming response when its client leaves, but a plain handler would keep
    generating for nobody; listening for ``http.disconnect`` alongside closes that gap.
    """

    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise _ClientGone()

"""``POST /v1/chat/completions``: validate, resolve the model, stream from the engine.

The route is thin: the request body is already a validated ``ChatCompletionRequest``;
``to_generation_request`` is the pure conversion to engine terms; ``admit`` leases the model;
``_Observer`` owns the metrics of one request; the rest assembles OpenAI responses (whole, or as SSE
chunks). ``complete`` is the whole non-streaming path as a function, so integrations (WeCom) answer
through exactly the same admission, engine call and metrics as the HTTP route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from ..engine.base import GenerationDelta, GenerationRequest, SamplingOptions
from ..errors import EngineError, EngineUnavailable, GatewayError, InvalidRequest, ModelNotFound, UpstreamLost
from ..gateway import Gateway
from ..metrics import UNKNOWN_MODEL, GatewayMetrics
from ..registry import Lease
from .deps import GatewayDep, require_api_key
from .protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    DeltaMessage,
    UsageInfo,
    completion_id,
    now,
)

router = APIRouter(dependencies=[Depends(require_api_key)])
T = TypeVar("T")
logger = logging.getLogger(__name__)
_RETRIES_AFTER_UPSTREAM_LOSS = 2  # a non-streaming answer whose upstream died is started over elsewhere


def to_generation_request(
    body: ChatCompletionRequest, lease: Lease, max_n: int, default_max_tokens: int | None = None
) -> GenerationRequest:
    """OpenAI request -> engine request, with OpenAI's defaults (temperature 1, top_p 1, n 1)."""
    n = body.n or 1
    if n > max_n:
        raise InvalidRequest(f"`n` must be at most {max_n} on this server; got {n}.", param="n")
    sampling = SamplingOptions(
        max_tokens=body.completion_limit,
        default_max_tokens=default_max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        stop=tuple(body.stop_sequences),
        n=n,
    )
    messages = tuple({"role": m.role, "content": m.text()} for m in body.messages)
    return GenerationRequest(
        request_id=f"req-{uuid.uuid4().hex}", messages=messages, sampling=sampling, adapter=lease.ref
    )


class _Observer:
    """Metrics for one request: tokens, time to first token, latency, outcome."""

    def __init__(self, metrics: GatewayMetrics, model: str) -> None:
        self.metrics = metrics
        self.model = model
        self.started = time.perf_counter()
        self._first_token_seen = False

    def delta(self, delta: GenerationDelta) -> None:
        if not self._first_token_seen and delta.completion_tokens:
            self._first_token_seen = True
            self.metrics.ttft.labels(self.model).observe(time.perf_counter() - self.started)

    def success(self, usage: UsageInfo) -> None:
        self.metrics.requests.labels(self.model, "200").inc()
        self.metrics.prompt_tokens.labels(self.model).inc(usage.prompt_tokens)
        self.metrics.completion_tokens.labels(self.model).inc(usage.completion_tokens)
        self.metrics.e2e.labels(self.model).observe(time.perf_counter() - self.started)

    def failure(self, error: GatewayError) -> None:
        record_error(self.metrics, self.model, error)

    def aborted(self) -> None:
        self.metrics.aborted.labels(self.model).inc()


def record_error(metrics: GatewayMetrics, model: str, error: GatewayError) -> None:
    metrics.record_error(model, error.status_code, error.error_type)


class _Usage:
    """Adds up usage across choices: the prompt counts once, completions once per choice."""

    def __init__(self, n: int) -> None:
        self.prompt_tokens = 0
        self._completion = [0] * n

    def add(self, delta: GenerationDelta) -> None:
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens
        self._completion[delta.index] = delta.completion_tokens

    def info(self) -> UsageInfo:
        completion = sum(self._completion)
        return UsageInfo(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, gateway: GatewayDep
) -> Response | ChatCompletionResponse:
    request.state.observed = True
    if body.stream:
        generation, observer, lease_scope = await admit(gateway, body)
        deltas, first = await _first_delta(gateway, generation, observer, lease_scope)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream(gateway, generation, body.model, include_usage, observer, lease_scope, deltas, first)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        return await _until_disconnected(request, complete(gateway, body))
    except _ClientGone:
        return Response(status_code=499)


async def admit(
    gateway: Gateway,
    body: ChatCompletionRequest,
    default_max_tokens: int | None = None,
) -> tuple[GenerationRequest, _Observer, AsyncExitStack]:
    """Lease the model, convert the request and check the engine; refusals are counted here.

    ``default_max_tokens`` replaces the server's default completion cap (clamped to the room the
    prompt leaves) for a request that sets none: an integration's own upper bound.

    The returned exit stack holds the lease: whoever runs the generation closes it when done, so a
    streaming response can keep its adapter version alive after the route function returned.
    """
    lease_scope = AsyncExitStack()
    try:
        lease = await lease_scope.enter_async_context(gateway.registry.lease(body.model))
        generation = to_generation_request(
            body, lease, gateway.settings.max_n, default_max_tokens or gateway.settings.default_max_tokens
        )
        if gateway.boot_error is not None:  # never half-alive: a gateway that failed to start serves nothing
            raise EngineUnavailable(f"The gateway could not start: {gateway.boot_error}")
        health = gateway.engine.health()
        if not health.ready:
            raise EngineUnavailable(health.unavailable or "The model is still loading; try again shortly.")
    except GatewayError as error:
        await lease_scope.aclose()
        record_error(gateway.metrics, UNKNOWN_MODEL if isinstance(error, ModelNotFound) else body.model, error)
        raise
    return generation, _Observer(gateway.metrics, body.model), lease_scope


async def complete(
    gateway: Gateway,
    body: ChatCompletionRequest,
    on_text: Callable[[int, str], None] | None = None,
    *,
    default_max_tokens: int | None = None,
) -> ChatCompletionResponse:
    """One whole (non-streaming) chat completion, with the route's admission, metrics and errors.

    ``on_text(choice_index, piece)`` sees each piece of text as it is generated: callers that cannot
    hold an HTTP stream open (WeCom's AI bot polls for the answer so far) follow progress with it.
    Cancelling the call stops the generation and counts the request as aborted.
    """
    generation, observer, lease_scope = await admit(gateway, body, default_max_tokens)
    async with lease_scope:
        try:
            retries = 0
            while True:
                try:
                    return await _complete(gateway, generation, body.model, observer, on_text)
                except UpstreamLost:
                    # Nothing reached the caller (no on_text): start over on another upstream.
                    retries += 1
                    if on_text is not None or retries > _RETRIES_AFTER_UPSTREAM_LOSS:
                        raise
                    logger.warning(
                        "request %s: its upstream was lost mid-answer; retrying on another", generation.request_id
                    )
        except GatewayError as error:
            observer.failure(error)
            raise
        except asyncio.CancelledError:
            observer.aborted()
            raise


async def _complete(
    gateway: Gateway,
    generation: GenerationRequest,
    model: str,
    observer: _Observer,
    on_text: Callable[[int, str], None] | None,
) -> ChatCompletionResponse:
    n = generation.sampling.n
    texts = [""] * n
    finish: list[Any] = [None] * n
    usage = _Usage(n)
    async with contextlib.aclosing(gateway.engine.generate(generation)) as deltas:  # type: ignore[type-var]
        async for delta in deltas:
            _check_open(gateway)
            observer.delta(delta)
            usage.add(delta)
            texts[delta.index] += delta.text
            if delta.text and on_text is not None:
                on_text(delta.index, delta.text)
            if delta.finish_reason:
                finish[delta.index] = delta.finish_reason
    if None in finish:
        raise EngineError("The engine ended the request before it finished.")
    info = usage.info()
    observer.success(info)
    return ChatCompletionResponse(
        id=completion_id(),
        created=now(),
        model=model,
        choices=[
            ChatCompletionChoice(index=i, message=ChatCompletionMessage(content=texts[i]), finish_reason=finish[i])
            for i in range(n)
        ],
        usage=info,
    )


async def _first_delta(
    gateway: Gateway, generation: GenerationRequest, observer: _Observer, lease_scope: AsyncExitStack
) -> tuple[AsyncIterator[GenerationDelta], GenerationDelta | None]:
    """Start the generation and wait for its first delta before any byte is sent, so everything
    the engine checks first (context length, the adapter, the engine's state) answers with its own
    HTTP status, as OpenAI does, rather than as a 200 followed by an error event."""
    deltas = gateway.engine.generate(generation)
    try:
        return deltas, await anext(deltas)
    except StopAsyncIteration:
        return deltas, None
    except GatewayError as error:
        await deltas.aclose()  # type: ignore[attr-defined]
        observer.failure(error)
        await lease_scope.aclose()
        raise


async def _stream(
    gateway: Gateway,
    generation: GenerationRequest,
    model: str,
    include_usage: bool,
    observer: _Observer,
    lease_scope: AsyncExitStack,
    deltas: AsyncIterator[GenerationDelta],
    first: GenerationDelta | None,
) -> AsyncIterator[str]:
    """SSE events as OpenAI sends them: role first, content pieces, then an empty delta with the
    finish_reason; with ``include_usage`` every chunk has ``usage: null`` and one last chunk with no
    choices carries the usage. ``first`` was already taken from ``deltas``."""
    chunk_id, created = completion_id(), now()
    usage = _Usage(generation.sampling.n)
    # Without include_usage the field is absent; with it, null on every chunk but the last.
    omit = None if include_usage else {"usage"}

    def event(choices: list[ChatCompletionChunkChoice], usage: UsageInfo | None = None) -> str:
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json(exclude=omit)}\n\n"

    finished = False
    async with lease_scope:
        try:
            for i in range(generation.sampling.n):
                yield event([ChatCompletionChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
            async with contextlib.aclosing(deltas):  # type: ignore[type-var]
                async for delta in _prepend(first, deltas):
                    _check_open(gateway)
                    observer.delta(delta)
                    usage.add(delta)
                    if delta.text:
                        choice = ChatCompletionChunkChoice(index=delta.index, delta=DeltaMessage(content=delta.text))
                        yield event([choice])
                    if delta.finish_reason:
                        choice = ChatCompletionChunkChoice(
                            index=delta.index, delta=DeltaMessage(), finish_reason=delta.finish_reason
                        )
                        yield event([choice])
            info = usage.info()
            if include_usage:
                yield event([], usage=info)
            observer.success(info)
            finished = True
        except GatewayError as error:
            observer.failure(error)
            finished = True
            yield f"data: {json.dumps(error.to_dict())}\n\n"
        finally:
            if not finished:  # the client went away (the generator was closed or cancelled)
                observer.aborted()
    yield "data: [DONE]\n\n"


async def _prepend(
    first: GenerationDelta | None, rest: AsyncIterator[GenerationDelta]
) -> AsyncIterator[GenerationDelta]:
    if first is not None:
        yield first
    async for delta in rest:
        yield delta


def _check_open(gateway: Gateway) -> None:
    """After the shutdown grace period, a request still generating ends with a retryable 503."""
    if gateway.closing:
        raise EngineUnavailable("The server is shutting down; retry the request.")


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

"""One chat completion, whoever asks for it: the HTTP route (``api/chat.py``) and integrations (WeCom).

Transport-agnostic: lease the model (``admit``), convert the request to engine terms
(``server.openai.conversion``, pure functions), run the engine, observe metrics (``Observer``), and
assemble OpenAI's result, whole (``complete``) or as chunks (``open_stream``). The route only adds
HTTP: SSE framing and client disconnects. Every delta of every request goes through one loop
(``_observed``), so shutdown, metrics and usage are handled the same for both shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from .engine.base import GenerationDelta, GenerationRequest
from .errors import EngineError, EngineUnavailable, GatewayError, ModelNotFound
from .feedback import Conversation
from .gateway import Gateway
from .metrics import UNKNOWN_MODEL
from .observing import Observer, SplitOutcome, Usage
from .openai.chunk_templates import ChunkTemplate, RolePiece, StreamPiece, TextPiece
from .openai.conversion import Choice, chunk_choices, most_tokens, stream_pieces, to_generation_request
from .openai.protocol import (
    SYSTEM_FINGERPRINT,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    UsageInfo,
    completion_id,
    now,
)
from .output_checks import OutputChecker
from .tenancy.limiter import Ticket
from .tenancy.service import ANYONE, Principal
from .terms.address import ModelAddress, fingerprint, split_address


@dataclass
class _Admitted:
    """A request with its model leased: ``scope`` holds the lease until the generation ends."""

    generation: GenerationRequest
    observer: Observer
    scope: AsyncExitStack
    model: str
    version: str | None = None  # ``name@N`` of the adapter version that answers; None for the base
    sha256: str = ""  # of that version's weights
    body: ChatCompletionRequest | None = None
    end_user: str | None = None
    source: str = "api"  # who asked: api, wecom (kept with the conversation when feedback capture is on)
    ticket: Ticket | None = None  # the key's limits, charged as tokens come

    @property
    def headers(self) -> dict[str, str]:
        """The key's ``x-ratelimit-*`` headers (none for a key without limits)."""
        return self.ticket.headers if self.ticket is not None else {}

    def capture(self, gateway: Gateway, completion: str, answer: str) -> None:
        """Keep the conversation for feedback (``--feedback``): queued, never waited on."""
        if gateway.feedback is None or self.body is None:
            return
        address = ModelAddress.parse(self.version or "")
        gateway.feedback.capture(
            Conversation(
                completion_id=completion,
                model=self.model,
                adapter=address.name or None,
                version=address.number,
                sha256=self.sha256 or None,
                end_user=self.end_user,
                source=self.source,
                messages=[m.model_dump(exclude_none=True) for m in self.body.messages],
                answer=answer,
                tools=[t.model_dump(exclude_none=True) for t in self.body.tools] if self.body.tools else None,
            )
        )

    @property
    def fingerprint(self) -> str:
        """OpenAI's ``system_fingerprint``: which adapter version (and weights) answered."""
        return (
            SYSTEM_FINGERPRINT if self.version is None else fingerprint(ModelAddress.parse(self.version), self.sha256)
        )


async def admit(
    gateway: Gateway,
    body: ChatCompletionRequest,
    default_max_tokens: int | None = None,
    user: str | None = None,
    source: str = "api",
    principal: Principal = ANYONE,
    whole: bool = False,
) -> _Admitted:
    """Check the key's scope and limits, lease the model, convert the request and check the
    engine; refusals are counted here. ``whole``: the caller takes the answer in one piece
    (``GenerationRequest.whole``).

    ``default_max_tokens`` replaces the server's default completion cap (clamped to the room the
    prompt leaves) for a request that sets none: an integration's own upper bound. The end user
    (OpenAI's ``user``, else ``safety_identifier``, else ``user`` given here: a header, a WeCom
    user id) picks the version under a traffic split, the same one every time. A model outside the
    key's scope is a 404 like a model that does not exist, and is never loaded.
    """
    scope = AsyncExitStack()
    ticket: Ticket | None = None
    tokens = _Tokens()
    try:
        end_user = body.user or body.safety_identifier or user
        leased = body.model
        alias = gateway.fine_tuning.resolve(body.model) if gateway.fine_tuning is not None else None
        if alias is not None:  # ``ft:BASE:SUFFIX:JOB``: the adapter its job published, its key's own
            leased = alias[0]
        owns = alias is not None and (principal.key is None or alias[1] == principal.key_id)
        if not owns and not principal.may_use(leased, gateway.base_ids):
            raise ModelNotFound(body.model)
        if principal.limited:  # its tokens are reserved: bounded before the prompt is tokenized
            cap = default_max_tokens or gateway.settings.default_max_tokens or gateway.engine.max_model_len or 0
            ticket = await gateway.tenancy.admit(principal, most_tokens(body, cap))
        if ticket is not None:
            scope.callback(ticket.release)
            scope.push_async_callback(_final_charge, ticket, tokens)
        lease = await scope.enter_async_context(gateway.registry.lease(leased, end_user))
        flow = f"{principal.tenant}/{split_address(body.model)[0]}"
        if gateway.adapter_gate is not None and lease.adapter is not None:
            slot = f"{lease.adapter.name}@{lease.adapter.version}"
            await scope.enter_async_context(gateway.adapter_gate.admit(slot, flow))
        # Fair admission (the embedded engine): each tenant on each model is one ``flow``.
        generation = to_generation_request(
            body,
            lease,
            gateway.settings.max_n,
            default_max_tokens or gateway.settings.default_max_tokens,
            flow=flow,
            whole=whole,
        )
        if gateway.boot_error is not None:  # never half-alive: a gateway that failed to start serves nothing
            raise EngineUnavailable(f"The gateway could not start: {gateway.boot_error}")
        unavailable = gateway.engine.unavailable(lease.base)
        if unavailable is not None:
            raise EngineUnavailable(unavailable)
    except BaseException as error:  # a refusal, or the client gone while waiting for a slot: free what is held
        await scope.aclose()
        if not isinstance(error, GatewayError):
            raise
        model = UNKNOWN_MODEL if isinstance(error, ModelNotFound) else body.model
        gateway.metrics.record_error(model, error.status_code, error.error_type)
        error.counted_as = model
        _spender(gateway, principal, model)(0, 0, True)
        raise
    version = lease.adapter
    outcome: SplitOutcome | None = None
    if version is not None and lease.split is not None:  # a split's evidence (registry/evidence.py)
        outcome = functools.partial(gateway.rollouts.watch.request, lease.split, version.version)
    checker = None
    if OutputChecker.wanted(generation.tools, generation.output_format):
        checker = OutputChecker(generation.tools, generation.output_format)
    observer = Observer(
        gateway.metrics,
        body.model,
        "" if version is None else str(version.version),
        outcome,
        _spender(gateway, principal, body.model),
        checker,
        lease.base,
    )
    tokens.observer = observer
    return _Admitted(
        generation,
        observer,
        scope,
        body.model,
        None if version is None else str(ModelAddress.of(version.name, version.version)),
        "" if version is None else version.sha256,
        body,
        end_user,
        source,
        ticket,
    )


def _spender(gateway: Gateway, principal: Principal, model: str) -> Callable[[int, int, bool], None]:
    """What a finished request tells about its key: usage (database) and per-tenant metrics."""

    def spent(prompt: int, completion: int, failed: bool) -> None:
        gateway.tenancy.record(principal, model, prompt, completion, failed)
        if principal.key is not None:
            gateway.metrics.record_tenant(principal.tenant, principal.key_id, prompt, completion, failed)

    return spent


@dataclass
class _Tokens:
    """Points the final charge at the request's observer once it exists."""

    observer: Observer | None = None


async def _final_charge(ticket: Ticket, tokens: _Tokens) -> None:
    """Settle the reservation: what was used (nothing, for a request refused after admission)."""
    used = sum(tokens.observer.tokens) if tokens.observer is not None else 0
    await ticket.charge(used, final=True)


async def _observed(
    gateway: Gateway, admitted: _Admitted, usage: Usage, deltas: AsyncIterator[GenerationDelta]
) -> AsyncIterator[GenerationDelta]:
    """The one delta loop: shutdown check, metrics and usage for every delta of every request."""
    async for delta in deltas:
        if gateway.closing:  # past the shutdown grace period: a retryable 503
            raise EngineUnavailable("The server is shutting down; retry the request.")
        admitted.observer.delta(delta)
        usage.add(delta)
        admitted.observer.tokens = usage.total
        if admitted.ticket is not None:
            await admitted.ticket.charge(sum(admitted.observer.tokens))
        yield delta


async def complete(
    gateway: Gateway,
    body: ChatCompletionRequest,
    on_text: Callable[[int, str], None] | None = None,
    *,
    default_max_tokens: int | None = None,
    user: str | None = None,
    source: str = "api",
    completion: str | None = None,
    principal: Principal = ANYONE,
    headers: dict[str, str] | None = None,
) -> ChatCompletionResponse:
    """One whole (non-streaming) chat completion.

    ``on_text(choice_index, piece)`` sees each piece of text as it is generated: callers that cannot
    hold an HTTP stream open (WeCom's AI bot polls for the answer so far) follow progress with it.
    ``completion`` sets the answer's id (an integration that gave its user a feedback id before
    the answer existed); ``source`` is kept with the conversation when feedback capture is on.
    ``principal`` is who asks (scope, limits, usage); ``headers`` receives its ``x-ratelimit-*``.
    Cancelling the call stops the generation and counts the request as aborted. Without ``on_text``
    an engine that ``answers_whole`` produces the answer in one piece (the remote engine asks its
    upstream for a plain answer, and fails over itself until one arrives whole).
    """
    whole = on_text is None and gateway.engine.answers_whole  # nobody follows the text: take it in one piece
    admitted = await admit(gateway, body, default_max_tokens, user, source, principal, whole)
    if headers is not None:
        headers.update(admitted.headers)
    if whole:
        admitted.observer.times_first_token = False
    async with admitted.scope:
        try:
            return await _complete(gateway, admitted, on_text, completion)
        except GatewayError as error:
            admitted.observer.failure(error)
            raise
        except asyncio.CancelledError:
            admitted.observer.aborted()
            raise


async def _complete(
    gateway: Gateway, admitted: _Admitted, on_text: Callable[[int, str], None] | None, completion: str | None = None
) -> ChatCompletionResponse:
    sampling = admitted.generation.sampling
    choices = [Choice(sampling.logprobs is not None) for _ in range(sampling.n)]
    usage = Usage(sampling.n)
    async with contextlib.aclosing(gateway.engine.generate(admitted.generation)) as deltas:  # type: ignore[type-var]
        async for delta in _observed(gateway, admitted, usage, deltas):
            choices[delta.index].add(delta)
            if delta.text and on_text is not None:
                on_text(delta.index, delta.text)
    if any(choice.finish is None for choice in choices):
        raise EngineError("The engine ended the request before it finished.")
    info = usage.info()
    admitted.observer.success(info)
    response = ChatCompletionResponse(
        system_fingerprint=admitted.fingerprint,
        id=completion or completion_id(),
        created=now(),
        model=admitted.model,
        choices=[choice.choice(i) for i, choice in enumerate(choices)],
        usage=info,
    )
    admitted.capture(gateway, response.id, response.choices[0].message.content or "")
    return response


class CompletionStream:
    """A started streaming completion: its first delta already arrived, so everything the engine
    checks first (context length, the adapter, the engine's state) was answered with its own status
    before a byte was sent, as OpenAI does. ``chunks`` yields OpenAI's chunks, and a failure after
    the start as the ``GatewayError`` itself, last."""

    def __init__(
        self,
        gateway: Gateway,
        admitted: _Admitted,
        deltas: AsyncIterator[GenerationDelta],
        first: GenerationDelta | None,
        include_usage: bool,
        completion: str | None = None,
    ) -> None:
        self._gateway, self._admitted, self._deltas, self._first = gateway, admitted, deltas, first
        self.id = completion or completion_id()  # every chunk's; the caller's choice (a response's) if given
        self.created = now()
        self.include_usage = include_usage
        self.choices = admitted.generation.sampling.n  # ``chunks`` starts with one role chunk for each
        self.version = admitted.version
        self.headers = admitted.headers

    def template(self, omit: set[str] | None) -> ChunkTemplate:
        """Renders this stream's pieces (``chunks(pieces=True)``) as ``model_dump_json(exclude=omit)``."""
        admitted = self._admitted
        return ChunkTemplate(self.id, self.created, admitted.model, admitted.fingerprint, omit)

    async def chunks(self, pieces: bool = False) -> AsyncIterator[ChatCompletionChunk | StreamPiece | GatewayError]:
        """Role first, content pieces, then an empty delta with the finish_reason; with
        ``include_usage`` one last chunk with no choices carries the usage. ``pieces``: the chunks
        of those shapes come as ``StreamPiece``s, for ``template`` to render (all but tool calls,
        logprobs and the usage)."""
        admitted = self._admitted
        chunk_id, created, n = self.id, self.created, admitted.generation.sampling.n
        want_logprobs = admitted.generation.sampling.logprobs is not None
        usage = Usage(n)

        def chunk(choices: list[ChatCompletionChunkChoice], usage: UsageInfo | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=admitted.model,
                choices=choices,
                usage=usage,
                system_fingerprint=admitted.fingerprint,
            )

        finished = False
        answer: list[str] = []  # the first choice's text, for feedback capture
        async with admitted.scope:
            try:
                for i in range(n):
                    yield RolePiece(i) if pieces else chunk([RolePiece(i).choice()])
                async with contextlib.aclosing(self._deltas):  # type: ignore[type-var]
                    async for delta in _observed(self._gateway, admitted, usage, _prepend(self._first, self._deltas)):
                        shaped = stream_pieces(delta, want_logprobs) if pieces else None
                        if shaped is not None:
                            for piece in shaped:
                                if piece.index == 0 and isinstance(piece, TextPiece):
                                    answer.append(piece.text)
                                yield piece
                            continue
                        for choice in chunk_choices(delta, want_logprobs):
                            if choice.index == 0 and choice.delta.content:
                                answer.append(choice.delta.content)
                            yield chunk([choice])
                info = usage.info()
                if self.include_usage:
                    yield chunk([], usage=info)
                admitted.observer.success(info)
                admitted.capture(self._gateway, chunk_id, "".join(answer))
                finished = True
            except GatewayError as error:
                admitted.observer.failure(error)
                finished = True
                yield error
            finally:
                if not finished:  # the consumer went away (the generator was closed or cancelled)
                    admitted.observer.aborted()


async def open_stream(
    gateway: Gateway,
    body: ChatCompletionRequest,
    user: str | None = None,
    principal: Principal = ANYONE,
    completion: str | None = None,
) -> CompletionStream:
    """Admit the request and start it; raises (with the right status) anything that fails before
    its first delta. ``completion`` sets the answer's id (the Responses API's ``resp_...``)."""
    admitted = await admit(gateway, body, user=user, principal=principal)
    deltas = gateway.engine.generate(admitted.generation)
    try:
        first: GenerationDelta | None = await anext(deltas)
    except StopAsyncIteration:
        first = None
    except GatewayError as error:
        await deltas.aclose()  # type: ignore[attr-defined]
        admitted.observer.failure(error)
        await admitted.scope.aclose()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return CompletionStream(gateway, admitted, deltas, first, include_usage, completion)


async def _prepend(
    first: GenerationDelta | None, rest: AsyncIterator[GenerationDelta]
) -> AsyncIterator[GenerationDelta]:
    if first is not None:
        yield first
    async for delta in rest:
        yield delta

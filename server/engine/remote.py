"""``--engine remote``: one or more ``vllm serve --enable-lora`` upstreams behind the gateway.

This is how lora-gateway scales past one GPU: several vLLM replicas (each possibly tensor-parallel)
behind one or more stateless gateways sharing the adapters volume. The gateway still validates
every request and owns the registry; upstreams only run models.

- Adapters: each version is registered on every healthy upstream with vLLM's
  ``/v1/load_lora_adapter`` under a versioned name (``<name>.v<id>``), so a swap is blue/green, and
  unloaded with ``/v1/unload_lora_adapter`` once drained. Upstreams must be started with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and see the adapters volume at the same path.
- Health: a background loop checks each upstream. One that was down, or that comes back without
  the adapters we gave it (it restarted), gets them registered again before it receives traffic;
  one that comes back holding versions we no longer want (it missed an unload while down) has them
  unloaded. The gateway owns every ``<name>.v<N>`` adapter on its upstreams.
- Pools: upstreams are grouped by the base models they serve, as their ``/v1/models`` lists them
  (entries without a ``parent``), or as declared (``--upstream BASE=URL``). An adapter is loaded
  only on the upstreams of its base (``AdapterRef.base``), a request goes only to its base's pool,
  and a pool with no healthy upstream makes its models answer 503 while the others serve on. A base
  seen for the first time is reported (``on_base``), so the gateway serves its adapters from then on.
- Routing: within the pool, prefer an upstream that holds the adapter, then the one with the fewest requests in
  flight. An upstream that cannot be reached is ejected (until a health check passes again) and the
  request goes to the next one. One that does not answer within ``first_byte_timeout`` gets the
  request taken to the next one too, and a health probe at once: frozen, it is ejected; merely
  busy (its ``/v1/models`` answers), it stays. The last upstream left is given ``stall_timeout``,
  like any silence mid-answer, rather than the deadline: under load, giving up on it would turn a
  slow answer into a failure; and if every other one fails, the request goes back to the first that
  was only slow, without the deadline. So a streamed request waits on a dead upstream at most
  ``first_byte_timeout`` while another is available, and at most ``stall_timeout`` on the last one.
- Streaming: upstream SSE chunks are turned into deltas as they arrive (nothing is buffered), and
  closing our stream closes the upstream request, which vLLM aborts. An upstream lost mid-answer is
  ``UpstreamLost``: the client already has part of the answer, so its stream ends with an error.
- Plain answers: a non-streaming request is asked of the upstream plainly (``"stream": false``):
  one JSON body rather than an event per token, less work for the gateway and for vLLM's API
  server alike. It arrives when it is all generated, so it has no first-byte deadline and no stall
  bound: an upstream that freezes under it is caught by its health check, whose ejection cancels
  the wait, and the request goes to the next upstream. That check is the periodic one, or a probe
  sent once the answer is ``first_byte_timeout`` late (busy upstreams pass it and are waited on).
  One lost before its answer arrived whole is ejected and the request goes on to the next, too.
- HTTP: the chat call, the hot path, goes through ``http1.Http1Pool`` (kept-alive connections per
  upstream, parsed by httptools), which costs a quarter of aiohttp's CPU per call (see that
  module); every other call (health checks, adapter loading) through aiohttp. Measured with py-spy
  on the gateway path (``benchmarks/gateway_overhead.py``), httpx had spent about 1.5 ms of CPU on
  each streamed answer and aiohttp about 0.5 ms: on a proxy that is most of what a request costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..errors import EngineError, EngineUnavailable, UpstreamLost
from .base import LOADING, AdapterRef, Engine, EngineHealth, GenerationDelta, GenerationRequest
from .http1 import Http1Error, Http1Pool, Response
from .openai_wire import body_bytes, chat_body, deltas, upstream_error, whole_deltas

logger = logging.getLogger(__name__)
# What an upstream call can fail with: a connection refused, reset or closed, a malformed answer,
# a timeout (aiohttp's own read timeout is an asyncio.TimeoutError too).
_HTTP_ERRORS = (aiohttp.ClientError, Http1Error, asyncio.TimeoutError)
_CHAT = "/v1/chat/completions"
# Idle connections are dropped well before uvicorn's 5 s keep-alive would close them under us.
_KEEPALIVE_S = 2.0
_VERSIONED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.v\d+")  # the names upstream_name() gives


def upstream_name(adapter: AdapterRef) -> str:
    """Versioned, so the new version is loaded beside the old one on every upstream."""
    return f"{adapter.name}.v{adapter.adapter_id}"


def parse_upstream(value: str) -> tuple[str, str | None]:
    """``URL`` or ``BASE=URL`` (``--upstream``): the URL, and the base it is declared to serve."""
    name, sep, url = value.partition("=")
    if sep and "://" not in name and "://" in url:
        return url.rstrip("/"), name
    return value.rstrip("/"), None


@dataclass
class Upstream:
    url: str
    declared: str | None = None  # BASE=URL: the one base it must serve (else: whatever it lists)
    bases: dict[str, str] = field(default_factory=dict)  # base id -> root, as its /v1/models lists them
    healthy: bool = False
    in_flight: int = 0
    loaded: set[str] = field(default_factory=set)  # upstream names of adapters registered there
    max_model_len: int | None = None
    last_failure: str | None = None
    # The tasks waiting here for a plain answer, each with whether an ejection cancelled it: ejecting
    # the upstream cancels them, and they fail over.
    waiting: dict[asyncio.Task[Any], bool] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The URL as logs and error messages name it: a password in it (``user:pass@host``) hidden."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class _NoAnswer(Exception):
    """The upstream could not be reached (``unreachable``) or did not answer in time: nothing was
    streamed yet."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class RemoteEngine(Engine):
    answers_whole = True  # a non-streaming request is asked of the upstream plainly (see the module)

    def __init__(
        self,
        urls: list[str],
        *,
        base_model_id: str,
        api_key: str | None = None,
        health_interval: float = 2.0,
        first_byte_timeout: float = 10.0,
        stall_timeout: float = 30.0,
        on_base: Callable[[str, str], None] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("--engine remote needs at least one --upstream URL")
        self.upstreams = [Upstream(*parse_upstream(url)) for url in urls]
        self.base_model_id = base_model_id  # the default base: what an adapter or request naming none is for
        # Every base an upstream has served (id -> root): pools by base. ``on_base`` hears of each new one.
        self.known_bases: dict[str, str] = {}
        self.on_base = on_base
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._health_interval = health_interval
        self._check_timeout = 5.0  # a health check waits this long for /v1/models
        self._first_byte_timeout = first_byte_timeout
        self._stall_timeout = stall_timeout
        self._adapters: dict[int, AdapterRef] = {}  # every version the registry wants loaded
        self._client: aiohttp.ClientSession | None = None
        self._chat: dict[str, Http1Pool] = {}  # the chat call's connections, per upstream URL
        self._monitor: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}  # at most one health probe in flight per upstream
        self._turn = 0  # rotates ties between equally loaded upstreams

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # The read timeout is the stall bound: between two chunks of an answer, or of any other call.
        # Idle connections are dropped well before uvicorn's 5 s keep-alive would close them under
        # us (a request sent into a connection the upstream is closing fails as if it were down).
        self._client = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self._stall_timeout),
            # No cap on connections (aiohttp's default is 100): answers stream for seconds, and a cap
            # would queue requests here that vLLM's scheduler should see; --limit-concurrency bounds them.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
            raise_for_status=False,
        )
        # No cap on the chat call's connections either: --limit-concurrency bounds them.
        self._chat = {
            u.url: Http1Pool(u.url, headers=self._headers, keepalive=_KEEPALIVE_S, connect_timeout=5.0)
            for u in self.upstreams
        }
        await asyncio.gather(*(self._check(u) for u in self.upstreams))
        if not any(u.healthy for u in self.upstreams):
            raise EngineUnavailable(
                "no upstream is healthy: " + ", ".join(f"{u.shown} ({u.last_failure})" for u in self.upstreams)
            )
        self._monitor = asyncio.create_task(self._watch_health())

    async def stop(self) -> None:
        for probe in list(self._probes.values()):
            probe.cancel()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for pool in self._chat.values():
            pool.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def health(self) -> EngineHealth:
        healthy = [u for u in self.upstreams if u.healthy]
        return EngineHealth(
            ready=bool(healthy) and self._client is not None,
            detail=f"{len(healthy)}/{len(self.upstreams)} upstreams healthy",
            running_requests=sum(u.in_flight for u in self.upstreams),
            loaded_adapters=[upstream_name(a) for a in self._adapters.values()],
            unavailable=self._unreachable() if self._client is not None and not healthy else "",
        )

    def unavailable(self, base: str = "") -> str | None:
        """Per pool: a base with no healthy upstream is unavailable, the others are not."""
        if self._client is None:
            return LOADING
        base = base or self.base_model_id
        return None if any(u.healthy and base in u.bases for u in self.upstreams) else self._unreachable(base)

    def _unreachable(self, base: str | None = None) -> str:
        """Why no upstream takes requests (for ``base``), each one's last failure named."""
        pool = [u for u in self.upstreams if base is None or base in u.bases or u.declared in (None, base)]
        failures = "; ".join(f"{u.shown}: {u.last_failure or 'down'}" for u in pool) or "none serves it"
        which = "No upstream" if base is None else f"No upstream serving {base}"
        return f"{which} is reachable right now ({failures}); try again shortly."

    async def _watch_health(self) -> None:
        """Never ends but by cancellation: a check that fails unexpectedly is logged and retried."""
        while True:
            await asyncio.sleep(self._health_interval)
            for upstream, result in zip(
                self.upstreams, await asyncio.gather(*(self._check(u) for u in self.upstreams), return_exceptions=True)
            ):
                if isinstance(result, Exception):
                    logger.error("health check of %s failed unexpectedly", upstream.shown, exc_info=result)

    def _probe(self, upstream: Upstream) -> None:
        """Check ``upstream`` now, in the background (it just missed a first-byte deadline)."""
        if upstream.url not in self._probes:
            task = asyncio.create_task(self._check(upstream, timeout=self._first_byte_timeout))
            self._probes[upstream.url] = task
            task.add_done_callback(lambda _: self._probes.pop(upstream.url, None))

    async def _check(self, upstream: Upstream, *, timeout: float | None = None) -> None:
        """Healthy = answers /v1/models with a base (the declared one, if any), holding exactly the
        adapters we want there: those of the bases it serves."""
        try:
            models = await self._models(upstream, timeout or self._check_timeout)
            bases = {
                model_id: str(card.get("root") or model_id)
                for model_id, card in models.items()
                if not card.get("parent") and not _VERSIONED.fullmatch(model_id)
            }
        except (*_HTTP_ERRORS, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._eject(upstream, f"health check failed ({type(exc).__name__})")
            return
        if upstream.declared is not None:
            if upstream.declared not in bases:
                logger.error(
                    "upstream %s does not serve %s (it serves %s)", upstream.shown, upstream.declared, sorted(bases)
                )
                self._eject(upstream, f"does not serve {upstream.declared}")
                return
            bases = {upstream.declared: bases[upstream.declared]}
        if not bases:
            self._eject(upstream, "serves no base model")
            return
        upstream.bases = bases
        for base_id, root in bases.items():
            if base_id not in self.known_bases:
                self.known_bases[base_id] = root
                if self.on_base is not None:
                    self.on_base(base_id, root)
        upstream.max_model_len = min((m for b in bases if (m := models[b].get("max_model_len"))), default=None)
        self.max_model_len = min((u.max_model_len for u in self.upstreams if u.max_model_len), default=None)
        wanted = {upstream_name(a): a for a in self._adapters.values() if self._base_of(a) in bases}
        upstream.loaded = {name for name in models if name in wanted}  # a restarted upstream forgot what we loaded
        for name in sorted(set(models) - set(wanted)):  # it missed an unload while it was down
            if _VERSIONED.fullmatch(name):
                logger.info("upstream %s still holds %s, which is no longer served: unloading it", upstream.shown, name)
                await self._unload_on(upstream, name)
        for name, adapter in wanted.items():
            if name not in upstream.loaded and not await self._load_on(upstream, adapter):
                self._eject(upstream, f"could not load {name}")
                return
        if not upstream.healthy:
            logger.info("upstream %s is healthy (%d adapters registered)", upstream.shown, len(upstream.loaded))
        upstream.healthy, upstream.last_failure = True, None

    async def _models(self, upstream: Upstream, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        client = self._require_client()
        async with client.get(f"{upstream.url}/v1/models", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            response.raise_for_status()
            return {m["id"]: m for m in json.loads(await response.read())["data"]}

    def _eject(self, upstream: Upstream, why: str) -> None:
        """Take ``upstream`` out of the rotation until a health check passes again."""
        if upstream.healthy:
            logger.warning("upstream %s ejected: %s", upstream.shown, why)
        upstream.healthy, upstream.last_failure = False, why
        for task, cancelled in upstream.waiting.items():
            if not cancelled:
                upstream.waiting[task] = True
                task.cancel()

    # ------------------------------------------------------------------ adapters

    def _base_of(self, adapter: AdapterRef) -> str:
        return adapter.base or self.base_model_id

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Registered on every healthy upstream of its base's pool (one that recovers gets it then)."""
        self._adapters[adapter.adapter_id] = adapter
        base = self._base_of(adapter)
        pool = [u for u in self.upstreams if u.healthy and base in u.bases]
        if not pool and base in self.known_bases:  # its pool is down: loaded by the check that sees one back
            logger.warning("no upstream serving %s is healthy: %s is loaded once one is", base, upstream_name(adapter))
            return
        results = await asyncio.gather(*(self._load_on(u, adapter) for u in pool))
        if not any(results):
            del self._adapters[adapter.adapter_id]
            raise EngineError(f"no upstream serving {base} could load adapter {adapter.name}")

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        """Unloaded where it is reachable now; an upstream that is down is reconciled on recovery."""
        self._adapters.pop(adapter.adapter_id, None)
        name = upstream_name(adapter)
        for upstream in self.upstreams:
            if name in upstream.loaded:
                upstream.loaded.discard(name)
                await self._unload_on(upstream, name)

    async def _load_on(self, upstream: Upstream, adapter: AdapterRef) -> bool:
        name = upstream_name(adapter)
        client = self._require_client()
        try:
            async with client.post(
                f"{upstream.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": adapter.path}
            ) as response:
                status, text = response.status, (await response.read()).decode(errors="replace")
            # vLLM refuses a name it already holds: whether it holds it now is what counts, not the wording.
            loaded = status == 200 or name in await self._models(upstream)
        except (*_HTTP_ERRORS, ValueError, KeyError, TypeError) as exc:
            logger.warning("loading %s on %s failed: %s", name, upstream.shown, type(exc).__name__)
            return False
        if not loaded:
            logger.warning("loading %s on %s failed: %s %s", name, upstream.shown, status, text[:300])
            return False
        upstream.loaded.add(name)
        return True

    async def _unload_on(self, upstream: Upstream, name: str) -> None:
        with contextlib.suppress(*_HTTP_ERRORS):
            async with self._require_client().post(
                f"{upstream.url}/v1/unload_lora_adapter", json={"lora_name": name}
            ) as response:
                await response.read()

    # ------------------------------------------------------------------ requests

    def _candidates(self, model: str | None, base: str | None = None) -> list[Upstream]:
        """Healthy upstreams of ``base``'s pool, best first: holds the adapter, then fewest in flight,
        then round robin."""
        base = base or self.base_model_id
        healthy = [u for u in self.upstreams if u.healthy and base in u.bases]
        if len(healthy) < 2:
            return healthy
        self._turn += 1
        count = len(self.upstreams)
        order = {id(u): (i - self._turn) % count for i, u in enumerate(self.upstreams)}
        return sorted(healthy, key=lambda u: (model is not None and model not in u.loaded, u.in_flight, order[id(u)]))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        model = upstream_name(request.adapter) if request.adapter else None
        base = self._base_of(request.adapter) if request.adapter else (request.base or self.base_model_id)
        body = body_bytes(chat_body(request, model or base))  # once, whoever answers
        candidates = self._candidates(model, base)
        if not candidates:
            raise EngineUnavailable(self.unavailable(base) or self._unreachable(base))
        failures: list[str] = []
        queue, slow = list(candidates), list[Upstream]()
        while queue or slow:
            if not queue:  # every other one failed: back to the first that was only slow
                queue, slow = [slow[0]], []
            upstream = queue.pop(0)
            last = not queue and not slow  # nothing left to fail over to: no deadline, only the stall bound
            upstream.in_flight += 1
            started = False
            try:
                if request.whole:
                    for delta in whole_deltas(await self._whole(upstream, body)):
                        yield delta
                    return
                async with self._answer(upstream, body, None if last else self._first_byte_timeout) as response:
                    async for delta in deltas(response.iter_any()):
                        started = True
                        yield delta
                return
            except _NoAnswer as exc:
                if exc.unreachable:
                    self._eject(upstream, str(exc))
                else:
                    self._probe(upstream)  # frozen (ejected) or only busy (stays): its health check tells
                    if not last:
                        slow.append(upstream)
                failures.append(f"{upstream.shown}: {exc}")
                logger.warning(
                    "upstream %s: %s; %s", upstream.shown, exc, "failing over" if queue or slow else "giving up"
                )
            except _HTTP_ERRORS as exc:  # lost after it answered: a stall, a reset, a kill
                self._eject(upstream, f"lost mid-answer ({type(exc).__name__})")
                if started:  # the caller has text from it: only the caller can decide to start over
                    raise UpstreamLost(f"The upstream failed mid-answer ({type(exc).__name__}).") from exc
                before = "its answer arrived" if request.whole else "its first token"
                failures.append(f"{upstream.shown}: lost before {before} ({type(exc).__name__})")
                logger.warning(
                    "upstream %s lost before %s (%s); failing over", upstream.shown, before, type(exc).__name__
                )
            finally:
                upstream.in_flight -= 1
        raise EngineUnavailable(
            f"No upstream serving {base} is reachable right now (" + "; ".join(failures) + "); try again shortly."
        )

    @contextlib.asynccontextmanager
    async def _answer(self, upstream: Upstream, body: bytes, deadline: float | None) -> AsyncIterator[Response]:
        """The upstream's streaming response, once its headers arrived (within ``deadline`` if set;
        the read timeout, ``stall_timeout``, bounds the wait either way)."""
        sending = self._post_chat(upstream, body, self._stall_timeout)
        try:
            async with asyncio.timeout(deadline):  # None: no deadline
                response = await sending
        except TimeoutError as exc:  # our deadline, or the read timeout (the stall bound)
            waited = f"within {deadline:g} s" if deadline is not None else f"({type(exc).__name__})"
            raise _NoAnswer(f"no answer {waited}", unreachable=False) from None
        except Http1Error as exc:
            raise _NoAnswer(f"unreachable ({type(exc).__name__})", unreachable=True) from None
        try:
            if response.status != 200:
                raise upstream_error(response.status, await response.read())
            yield response
        finally:
            # Read to the end, the connection goes back to the pool; closed early (the client left,
            # a failure), it is closed, which is how vLLM learns to abort the request.
            if response.at_eof():
                response.release()
            else:
                response.close()

    async def _whole(self, upstream: Upstream, body: bytes) -> bytes:
        """The upstream's plain answer, however long it takes to generate, unless the upstream is
        ejected meanwhile (its health check failed: frozen or gone), which cancels the wait. Not
        there within the first-byte deadline, the upstream is probed at once (busy or frozen?)
        rather than at its next periodic check.

        The wait runs in the caller's task, which an ejection cancels and this takes back (a task
        of its own to cancel instead cost every plain request two turns of the event loop)."""
        task = asyncio.current_task()
        assert task is not None  # called from a coroutine
        upstream.waiting[task] = False
        probe = asyncio.get_running_loop().call_later(self._first_byte_timeout, self._probe, upstream)
        try:
            return await self._post_whole(upstream, body)
        except asyncio.CancelledError:
            # Ours (the ejection's) only if nobody else cancelled the task too: the client that
            # left, a shutdown; theirs goes on.
            if upstream.waiting.get(task) and task.uncancel() == 0:
                raise _NoAnswer(upstream.last_failure or "ejected", unreachable=True) from None
            raise
        finally:
            probe.cancel()
            upstream.waiting.pop(task, None)

    async def _post_whole(self, upstream: Upstream, body: bytes) -> bytes:
        # No read bound: the answer arrives when it is all generated, which may take minutes.
        async with await self._post_chat(upstream, body, None) as response:
            payload = await response.read()
        if response.status != 200:
            raise upstream_error(response.status, payload)
        return payload

    async def _post_chat(self, upstream: Upstream, body: bytes, read_timeout: float | None) -> Response:
        """The one chat call both answer shapes make (``body`` is JSON already); returns once the
        response headers arrived, none of its pieces further than ``read_timeout`` apart."""
        self._require_client()  # started
        return await self._chat[upstream.url].post(_CHAT, body, read_timeout=read_timeout)

    def _require_client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise EngineUnavailable("The remote engine is not started.")
        return self._client

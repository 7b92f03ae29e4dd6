"""``--engine remote``: one or more ``vllm serve --enable-lora`` upstreams behind the gateway.

This is how lora-gateway scales past one GPU: several vLLM replicas (each possibly tensor-parallel)
behind one or more stateless gateways sharing the adapters volume. The gateway still validates
every request and owns the registry; upstreams only run models.

- Adapters: each version is registered on every healthy upstream with vLLM's
  ``/v1/load_lora_adapter`` under a versioned name (``<name>.v<id>``), so a swap is blue/green, and
  unloaded with ``/v1/unload_lora_adapter`` once drained. Upstreams must be started with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and see the adapters volume at the same path.
- Health: a background loop checks each upstream; one that was down, or that comes back without the
  adapters we gave it (it restarted), gets them registered again before it receives traffic again.
- Routing: prefer an upstream that holds the adapter, then the one with the fewest requests in
  flight; if an upstream cannot be reached before the first token, try the next one.
- Streaming: upstream SSE chunks are turned into deltas as they arrive (nothing is buffered), and
  closing our stream closes the upstream request, which vLLM aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import EngineError, EngineUnavailable, GatewayError, InvalidRequest
from .base import AdapterRef, Engine, EngineHealth, GenerationDelta, GenerationRequest

logger = logging.getLogger(__name__)


def upstream_name(adapter: AdapterRef) -> str:
    """Versioned, so the new version is loaded beside the old one on every upstream."""
    return f"{adapter.name}.v{adapter.adapter_id}"


@dataclass
class Upstream:
    url: str
    healthy: bool = False
    in_flight: int = 0
    loaded: set[str] = field(default_factory=set)  # upstream names of adapters registered there
    max_model_len: int | None = None


class RemoteEngine(Engine):
    def __init__(self, urls: list[str], *, base_model_id: str, api_key: str | None = None,
                 health_interval: float = 2.0, timeout: float = 600.0) -> None:
        if not urls:
            raise ValueError("--engine remote needs at least one --upstream URL")
        self.upstreams = [Upstream(url.rstrip("/")) for url in urls]
        self.base_model_id = base_model_id
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._health_interval = health_interval
        self._timeout = timeout
        self._adapters: dict[int, AdapterRef] = {}  # every version the registry wants loaded
        self._client: httpx.AsyncClient | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._turn = 0  # rotates ties between equally loaded upstreams

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._client = httpx.AsyncClient(headers=self._headers, timeout=httpx.Timeout(self._timeout, connect=5.0))
        await asyncio.gather(*(self._check(u) for u in self.upstreams))
        if not any(u.healthy for u in self.upstreams):
            raise EngineUnavailable(f"no upstream serves {self.base_model_id!r}: " + ", ".join(u.url for u in self.upstreams))
        self._monitor = asyncio.create_task(self._watch_health())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def health(self) -> EngineHealth:
        healthy = [u for u in self.upstreams if u.healthy]
        return EngineHealth(
            ready=bool(healthy) and self._client is not None,
            detail=f"{len(healthy)}/{len(self.upstreams)} upstreams healthy",
            running_requests=sum(u.in_flight for u in self.upstreams),
            loaded_adapters=[upstream_name(a) for a in self._adapters.values()],
        )

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await asyncio.gather(*(self._check(u) for u in self.upstreams))

    async def _check(self, upstream: Upstream) -> None:
        """Healthy = answers /v1/models with our base; re-register what it lacks before routing to it."""
        client = self._require_client()
        try:
            response = await client.get(f"{upstream.url}/v1/models", timeout=5.0)
            response.raise_for_status()
            models = {m["id"]: m for m in response.json()["data"]}
        except (httpx.HTTPError, ValueError, KeyError):
            if upstream.healthy:
                logger.warning("upstream %s is down", upstream.url)
            upstream.healthy = False
            return
        if self.base_model_id not in models:
            logger.error("upstream %s does not serve %s (it serves %s)", upstream.url, self.base_model_id, sorted(models))
            upstream.healthy = False
            return
        upstream.max_model_len = models[self.base_model_id].get("max_model_len")
        self.max_model_len = min((u.max_model_len for u in self.upstreams if u.max_model_len), default=None)
        upstream.loaded &= set(models)  # a restarted upstream forgot what we loaded
        missing = [a for a in self._adapters.values() if upstream_name(a) not in upstream.loaded]
        for adapter in missing:
            if not await self._load_on(upstream, adapter):
                upstream.healthy = False
                return
        if not upstream.healthy:
            logger.info("upstream %s is healthy (%d adapters registered)", upstream.url, len(upstream.loaded))
        upstream.healthy = True

    # ------------------------------------------------------------------ adapters

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self._adapters[adapter.adapter_id] = adapter
        healthy = [u for u in self.upstreams if u.healthy]
        results = await asyncio.gather(*(self._load_on(u, adapter) for u in healthy))
        if not any(results):
            del self._adapters[adapter.adapter_id]
            raise EngineError(f"no upstream could load adapter {adapter.name}")

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self._adapters.pop(adapter.adapter_id, None)
        name = upstream_name(adapter)
        for upstream in self.upstreams:
            if name in upstream.loaded:
                upstream.loaded.discard(name)
                with contextlib.suppress(httpx.HTTPError):
                    await self._require_client().post(f"{upstream.url}/v1/unload_lora_adapter", json={"lora_name": name})

    async def _load_on(self, upstream: Upstream, adapter: AdapterRef) -> bool:
        name = upstream_name(adapter)
        try:
            response = await self._require_client().post(
                f"{upstream.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": adapter.path}
            )
        except httpx.HTTPError as exc:
            logger.warning("loading %s on %s failed: %s", name, upstream.url, exc)
            return False
        if response.status_code != 200 and "already" not in response.text:
            logger.warning("loading %s on %s failed: %s %s", name, upstream.url, response.status_code, response.text[:300])
            return False
        upstream.loaded.add(name)
        return True

    # ------------------------------------------------------------------ requests

    def _candidates(self, model: str | None) -> list[Upstream]:
        """Healthy upstreams, best first: holds the adapter, then fewest in flight, then round robin."""
        self._turn += 1
        count = len(self.upstreams)
        order = {id(u): (i - self._turn) % count for i, u in enumerate(self.upstreams)}
        healthy = [u for u in self.upstreams if u.healthy]
        return sorted(healthy, key=lambda u: (model is not None and model not in u.loaded, u.in_flight, order[id(u)]))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        model = upstream_name(request.adapter) if request.adapter else None
        body = _chat_body(request, model or self.base_model_id)
        candidates = self._candidates(model)
        if not candidates:
            raise EngineUnavailable("No upstream is healthy right now; try again shortly.")
        client = self._require_client()
        for attempt, upstream in enumerate(candidates):
            upstream.in_flight += 1
            started = False
            try:
                async with client.stream("POST", f"{upstream.url}/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        raise _upstream_error(response.status_code, await response.aread())
                    async for delta in _deltas(response):
                        started = True
                        yield delta
                return
            except httpx.TransportError as exc:
                if started or attempt == len(candidates) - 1:
                    raise EngineError(f"The upstream failed: {type(exc).__name__}.") from exc
                logger.warning("upstream %s unreachable (%s); failing over", upstream.url, type(exc).__name__)
                upstream.healthy = False
            finally:
                upstream.in_flight -= 1

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable("The remote engine is not started.")
        return self._client


def _chat_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    options = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": list(request.messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": options.temperature,
        "top_p": options.top_p,
        "n": options.n,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
    }
    if options.max_tokens is not None:
        body["max_tokens"] = options.max_tokens
    if options.seed is not None:
        body["seed"] = options.seed
    if options.stop:
        body["stop"] = list(options.stop)
    return body


async def _deltas(response: httpx.Response) -> AsyncIterator[GenerationDelta]:
    """Upstream SSE chunks -> deltas, one event at a time as they arrive."""
    counts: dict[int, int] = {}
    finish: dict[int, str] = {}
    prompt_tokens = 0
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            data = event.removeprefix("data: ").strip()
            if not data or data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                raise EngineError(f"The upstream failed: {error.get('message', 'unknown error')}")
            usage = chunk.get("usage")
            if usage and not chunk.get("choices"):
                # Finishes are held back for this last chunk, which carries the exact usage. It counts
                # completion tokens for all choices together: all but the last choice keep their own
                # streamed count, the last takes the rest, so the sum is exact.
                prompt_tokens = usage["prompt_tokens"]
                left = usage["completion_tokens"]
                ordered = sorted(finish)
                for index in ordered:
                    own = left if index == ordered[-1] else counts.get(index, 0)
                    left -= own
                    yield GenerationDelta(index, "", finish[index], prompt_tokens, own)  # type: ignore[arg-type]
                finish.clear()
                continue
            for choice in chunk.get("choices", []):
                index = choice["index"]
                content = (choice.get("delta") or {}).get("content") or ""
                if content:
                    counts[index] = counts.get(index, 0) + 1
                    yield GenerationDelta(index, content, None, prompt_tokens, counts[index])
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"] if choice["finish_reason"] in ("stop", "length") else "stop"
    for index, reason in finish.items():  # an upstream that sent no usage chunk
        yield GenerationDelta(index, "", reason, prompt_tokens, counts.get(index, 0))  # type: ignore[arg-type]


def _upstream_error(status: int, body: bytes) -> GatewayError:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:300].decode(errors="replace")
    if 400 <= status < 500:
        return InvalidRequest(f"The upstream refused the request: {message}")
    return EngineError(f"The upstream failed ({status}): {message}")

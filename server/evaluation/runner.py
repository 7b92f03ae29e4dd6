"""Ask every model every question, concurrently, streamed (to time the first token), with a cache.

A model is any OpenAI-compatible endpoint and model name: this gateway's base or adapters, or a
team's current provider. Answers are cached by what determines them: the model *version*, the
question and the sampling parameters. The version is the adapter's sha256 where the gateway can
tell it (``--admin-key``); else it is what the endpoint says answered (the first answer's
``model`` and ``system_fingerprint``, which name an adapter's version and weights on this
gateway), learned by asking for one token first: an answer is never reused unless the version that
wrote it is the one answering now, and an endpoint that names no version is never answered from
the cache (the question costs one token per model and run). Adding a model to a comparison asks
only that model; a new version is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from ..datasets.testset import EvalItem
from ..engine.openai_wire import deltas


@dataclass(frozen=True)
class Target:
    label: str  # how the report names it
    base_url: str  # ends in /v1
    model: str
    api_key: str | None = None
    version: str = ""  # what answers: a weights sha256, else "<base_url>#<model>"

    @property
    def version_known(self) -> bool:
        """Whether ``version`` names the weights (else only the endpoint and the name do)."""
        return bool(self.version) and "#" not in self.version


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = 0


@dataclass
class Answer:
    target: str
    item: str  # EvalItem.key
    text: str
    ttft: float | None  # seconds to the first token
    e2e: float  # seconds to the last
    completion_tokens: int
    error: str | None = None
    cached: bool = False
    answered_by: str | None = None  # the version the endpoint says answered (model#system_fingerprint)

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token (as benchmarks report it)."""
        if self.ttft is None or self.completion_tokens < 2 or self.e2e <= self.ttft:
            return None
        return (self.completion_tokens - 1) / (self.e2e - self.ttft)


class AnswerCache:
    """Answers keyed by (version, question, sampling), appended to one JSONL file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self._entries[record["key"]] = record["answer"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by an interrupted run: asked again

    @staticmethod
    def key(target: Target, item: EvalItem, sampling: Sampling) -> str:
        spec = {"version": target.version, "messages": item.messages, "sampling": asdict(sampling)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str, target: Target) -> Answer | None:
        found = self._entries.get(key)
        return Answer(**{**found, "target": target.label, "cached": True}) if found else None

    def put(self, key: str, answer: Answer) -> None:
        record = {k: v for k, v in asdict(answer).items() if k not in ("cached", "target")}
        self._entries[key] = record
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"key": key, "answer": record}, ensure_ascii=False) + "\n")


async def ask(client: httpx.AsyncClient, target: Target, item: EvalItem, sampling: Sampling) -> Answer:
    body: dict[str, Any] = {
        "model": target.model,
        "messages": list(item.messages),
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    started = time.perf_counter()
    text, ttft, tokens = "", None, 0
    first: dict[str, Any] = {}
    try:
        async with client.stream("POST", f"{target.base_url}/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {_error_message(await response.aread())}")
            async for delta in deltas(_first_event(response.aiter_bytes(), first)):
                if delta.text and ttft is None:
                    ttft = time.perf_counter() - started
                text += delta.text
                tokens = max(tokens, delta.completion_tokens)
    except Exception as exc:  # one failed question is reported in its row, never ends the run
        return Answer(target.label, item.key, text, ttft, time.perf_counter() - started, tokens, error=str(exc))
    fingerprint = first.get("system_fingerprint")
    by = f"{first.get('model')}#{fingerprint}" if isinstance(fingerprint, str) and fingerprint else None
    return Answer(target.label, item.key, text, ttft, time.perf_counter() - started, tokens, answered_by=by)


def _error_message(body: bytes) -> str:
    """The endpoint's own words (OpenAI's error shape), else the start of its body."""
    try:
        return str(json.loads(body)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:300]


async def _first_event(body: AsyncIterator[bytes], first: dict[str, Any]) -> AsyncIterator[bytes]:
    """``body`` unchanged; the first SSE event's JSON goes into ``first`` (which version answered)."""
    buffer = b""
    async for piece in body:
        if not first and len(buffer) < 65536:
            buffer += piece
            end = buffer.find(b"\n\n")
            if end >= 0:
                try:
                    first.update(json.loads(buffer[:end].removeprefix(b"data: ")))
                except ValueError:
                    first["unreadable"] = True
        yield piece


async def ask_all(
    targets: list[Target],
    items: list[EvalItem],
    sampling: Sampling,
    cache: AnswerCache,
    *,
    concurrency: int = 4,
    progress: Callable[[], None] | None = None,
) -> list[Answer]:
    """Every (target, item) answer, from the cache where the version that wrote it is known to be
    the one answering now (module docstring); at most ``concurrency`` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, keyed: Target | None, target: Target, item: EvalItem) -> Answer:
        key = AnswerCache.key(keyed, item, sampling) if keyed is not None else None
        answer = cache.get(key, target) if key is not None else None
        if answer is None:
            async with gate:
                answer = await ask(client, target, item, sampling)
            if answer.error is None and key is not None:
                cache.put(key, answer)
        if progress is not None:
            progress()
        return answer

    async def per_target(client: httpx.AsyncClient, target: Target) -> list[Answer]:
        keyed: Target | None = target
        if not target.version_known and items:  # which version answers now: one token, asked live
            async with gate:
                probe = await ask(client, target, items[0], replace(sampling, max_tokens=1))
            keyed = replace(target, version=f"{target.version}#{probe.answered_by}") if probe.answered_by else None
        return list(await asyncio.gather(*(one(client, keyed, target, item) for item in items)))

    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
        per = await asyncio.gather(*(per_target(client, t) for t in targets))
    return [answer for answers in per for answer in answers]


def gateway_version(base_url: str, model: str, admin_key: str | None) -> str:
    """The sha256 of the adapter version ``model`` names on a lora-gateway (its admin API), else
    an identifier of the endpoint and name (answers are then cached by name)."""
    if admin_key:
        try:
            response = httpx.get(f"{base_url}/adapters", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
            for adapter in response.json().get("data", []):
                if adapter.get("name") == model and adapter.get("sha256"):
                    return str(adapter["sha256"])
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
    return f"{base_url}#{model}"


def engine_peak_memory(base_url: str) -> int | None:
    """The serving engine's peak memory in bytes, from a lora-gateway's ``/metrics``
    (``lora_gateway_engine_peak_memory_bytes``); None for an endpoint that does not report it."""
    from prometheus_client.parser import text_string_to_metric_families

    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        text = httpx.get(f"{root}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "lora_gateway_engine_peak_memory_bytes":
                    return int(sample.value)
    except (httpx.HTTPError, ValueError):
        pass
    return None

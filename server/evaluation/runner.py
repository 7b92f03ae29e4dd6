"""Ask every model every question, concurrently, streamed (to time the first token), with a cache.

A model is any OpenAI-compatible endpoint and model name: this gateway's base or adapters, or a
team's current provider. Answers are cached by what determines them: the model *version* (the
adapter's sha256 where the gateway can tell it, else the endpoint and name), the question and the
sampling parameters. Adding a model to a comparison asks only that model; a new version of an
adapter is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from ..engine.openai_wire import deltas
from .testset import EvalItem


@dataclass(frozen=True)
class Target:
    label: str  # how the report names it
    base_url: str  # ends in /v1
    model: str
    api_key: str | None = None
    version: str = ""  # what answers: a weights sha256, else "<base_url>#<model>"


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
    try:
        async with client.stream("POST", f"{target.base_url}/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"HTTP {response.status_code}: {detail}")
            async for delta in deltas(response.aiter_bytes()):
                if delta.text and ttft is None:
                    ttft = time.perf_counter() - started
                text += delta.text
                tokens = max(tokens, delta.completion_tokens)
    except Exception as exc:  # one failed question is reported in its row, never ends the run
        return Answer(target.label, item.key, text, ttft, time.perf_counter() - started, tokens, error=str(exc))
    return Answer(target.label, item.key, text, ttft, time.perf_counter() - started, tokens)


async def ask_all(
    targets: list[Target],
    items: list[EvalItem],
    sampling: Sampling,
    cache: AnswerCache,
    *,
    concurrency: int = 4,
    progress: Callable[[], None] | None = None,
) -> list[Answer]:
    """Every (target, item) answer, from the cache where it holds one; at most ``concurrency`` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, target: Target, item: EvalItem) -> Answer:
        key = AnswerCache.key(target, item, sampling)
        answer = cache.get(key, target)
        if answer is None:
            async with gate:
                answer = await ask(client, target, item, sampling)
            if answer.error is None:
                cache.put(key, answer)
        if progress is not None:
            progress()
        return answer

    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
        return list(await asyncio.gather(*(one(client, t, i) for t in targets for i in items)))


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

"""A judge model scores answers on a rubric, blind: the way a team's reviewers score them.

The default rubric is the one support teams use by hand: accuracy 0–3, politeness 0–2,
completeness 0–2, proactivity 0–1, fluency 0–2 (10 in all); a rubric file replaces it. The judge is
any OpenAI-compatible model (the gateway's own base works). Each answer is judged on its own, in a
shuffled order and without the name of the model that wrote it, and the judge answers in JSON held
to a schema (``response_format``), so scores are parsed, not scraped. Its reasons are kept. A judge
that answers garbage, or out of range, is reported in that answer's row; the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx loads when a judge is asked: `adapters publish` reads gates, never asks one
    import httpx

from ..datasets.testset import EvalItem
from ..terms.scores import JUDGE_NAME

REASON_CHARS = 128
JUDGE_MAX_TOKENS = 600  # the scores and a reason of REASON_CHARS, even at 3 tokens a character


@dataclass(frozen=True)
class Criterion:
    name: str
    max: int
    description: str


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[Criterion, ...]
    instructions: str = (
        "You review the answers of a customer-service assistant. Score the answer below on each "
        "criterion, as an integer from 0 to the criterion's maximum, and give your reason in one "
        "short sentence. Judge only this answer; you do not know which system wrote it."
    )

    @property
    def total(self) -> int:
        return sum(c.max for c in self.criteria)

    def schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {
            c.name: {"type": "integer", "minimum": 0, "maximum": c.max} for c in self.criteria
        }
        # Short enough for the grammar to bound it (xgrammar compiles repetitions up to 128), so a
        # judge that rambles still closes its JSON within max_tokens.
        properties["reason"] = {"type": "string", "maxLength": REASON_CHARS}
        return {
            "type": "object",
            "properties": properties,
            "required": [*properties],
            "additionalProperties": False,
        }


DEFAULT_RUBRIC = Rubric(
    (
        Criterion("accuracy", 3, "Is what it says correct (against the reference answer, when there is one)?"),
        Criterion("politeness", 2, "Is it courteous and in a customer-service tone?"),
        Criterion("completeness", 2, "Does it answer everything the customer asked?"),
        Criterion("proactivity", 1, "Does it offer the useful next step without being asked?"),
        Criterion("fluency", 2, "Is it natural, clear and free of garbled text?"),
    )
)


class RubricError(ValueError):
    pass


def load_rubric(path: str | Path | None) -> Rubric:
    """A rubric file: ``{"criteria": [{"name", "max", "description"}], "instructions"?}``."""
    if path is None:
        return DEFAULT_RUBRIC
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        criteria = tuple(
            Criterion(str(c["name"]), int(c["max"]), str(c.get("description", ""))) for c in data["criteria"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        expected = "{'criteria': [{'name', 'max', 'description'}]}"
        raise RubricError(f"{path}: not a rubric ({exc}); expected {expected}") from None
    if not criteria or any(c.max < 1 or not c.name.isidentifier() for c in criteria):
        raise RubricError(f"{path}: each criterion needs an identifier name and a max of at least 1")
    return Rubric(criteria, str(data.get("instructions") or DEFAULT_RUBRIC.instructions))


@dataclass
class Verdict:
    scores: dict[str, int]
    total: float
    reason: str
    error: str | None = None


def _prompt(rubric: Rubric, item: EvalItem, answer: str) -> list[dict[str, str]]:
    criteria = "\n".join(f"- {c.name} (0–{c.max}): {c.description}" for c in rubric.criteria)
    parts = [f"Conversation so far:\n{json.dumps(list(item.messages), ensure_ascii=False)}"]
    if item.reference is not None:
        parts.append(f"Reference answer (what a good answer says):\n{item.reference}")
    if item.rubric:
        parts.append(f"Notes for this question:\n{item.rubric}")
    parts.append(f"The answer to judge:\n{answer}")
    return [
        {"role": "system", "content": f"{rubric.instructions}\n\nCriteria:\n{criteria}"},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def parse_verdict(rubric: Rubric, content: str) -> Verdict:
    """The judge's JSON as a verdict; anything else is a verdict with an error (never an exception)."""
    try:
        data = json.loads(content)
        scores = {c.name: data[c.name] for c in rubric.criteria}
        if any(
            not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= c.max
            for c, v in zip(rubric.criteria, scores.values(), strict=True)
        ):
            raise ValueError("a score is not an integer within its range")
        return Verdict(scores, float(sum(scores.values())), str(data.get("reason", "")))
    except (ValueError, KeyError, TypeError) as exc:
        return Verdict({}, 0.0, "", error=f"unusable judge answer ({exc}): {content[:200]!r}")


JUDGE_TIMEOUT_S, JUDGE_CONNECT_S = 300.0, 10.0


def judge_client() -> httpx.AsyncClient:
    """An HTTP client for asking judges (a verdict may take minutes on a busy judge)."""
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(JUDGE_TIMEOUT_S, connect=JUDGE_CONNECT_S))


"""How an ``eval.json`` names one of the operator's judges."""


@dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible judge the operator configured (``--judges``): where it is and its key.

    Only the operator's settings make one: an adapter directory is data, so its ``eval.json`` may
    name a configured judge but never give a URL or say where a key comes from; otherwise publishing
    a file could send a secret (or a request) anywhere the gateway can reach."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)


class JudgesConfigError(ValueError):
    """The ``--judges`` file cannot be used; the message names the file and the entry."""


def load_judges(path: str | Path | None) -> dict[str, JudgeEndpoint]:
    """The operator's judges, ``{"NAME": {"url", "model", "api_key_env"?}}``, read once at start-up;
    each key is read from its environment variable then, so a missing one stops the start, not a gate."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JudgesConfigError(f"--judges {path}: {exc}") from None
    if not isinstance(data, dict):
        raise JudgesConfigError(f'--judges {path}: expected {{"NAME": {{"url", "model", "api_key_env"}}}}')
    judges: dict[str, JudgeEndpoint] = {}
    for name, entry in data.items():
        where = f"--judges {path}: judge {name!r}"
        if not JUDGE_NAME.fullmatch(name):
            raise JudgesConfigError(f"{where}: a name is 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(entry, dict) or set(entry) - {"url", "model", "api_key_env"}:
            raise JudgesConfigError(f"{where}: expected the keys url, model and (optionally) api_key_env")
        url, model, key_env = entry.get("url"), entry.get("model"), entry.get("api_key_env")
        if not isinstance(url, str) or not re.match(r"https?://[^\s]+$", url):
            raise JudgesConfigError(f"{where}: url must be an http(s) URL")
        if not isinstance(model, str) or not model.strip():
            raise JudgesConfigError(f"{where}: model must name the judge's model")
        if key_env is not None and (not isinstance(key_env, str) or os.environ.get(key_env) is None):
            raise JudgesConfigError(f"{where}: its key's environment variable {key_env!r} is not set")
        judges[name] = JudgeEndpoint(url, model, os.environ[key_env] if key_env else None)
    return judges


JudgeAsk = Callable[[dict[str, Any]], Awaitable[str]]
"""Asks the judge one chat request (OpenAI's body, less ``model``) and returns its message content."""


def verdict_request(rubric: Rubric, item: EvalItem, answer: str) -> dict[str, Any]:
    """The chat request (without ``model``) that asks a judge for one verdict."""
    return {
        "messages": _prompt(rubric, item, answer),
        "temperature": 0,
        "max_tokens": JUDGE_MAX_TOKENS,
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": rubric.schema()}},
    }


async def judge_with(
    ask: JudgeAsk, tasks: list[tuple[str, EvalItem, str]], rubric: Rubric, *, concurrency: int = 4, seed: int = 0
) -> dict[str, Verdict]:
    """Verdicts for (answer id, item, answer text) tasks, judged one by one in a shuffled order.
    A judge that fails or answers garbage gives that answer a verdict with an error."""
    order = list(tasks)
    random.Random(seed).shuffle(order)
    gate = asyncio.Semaphore(concurrency)

    async def one(answer_id: str, item: EvalItem, text: str) -> tuple[str, Verdict]:
        async with gate:
            try:
                content = await ask(verdict_request(rubric, item, text))
            except Exception as exc:  # any failure of the judge is that answer's error, never the run's
                return answer_id, Verdict({}, 0.0, "", error=f"the judge failed: {type(exc).__name__}: {exc}")
        return answer_id, parse_verdict(rubric, content)

    return dict(await asyncio.gather(*(one(*task) for task in order)))


def http_judge(client: httpx.AsyncClient, url: str, model: str, api_key: str | None = None) -> JudgeAsk:
    """A judge behind an OpenAI-compatible ``url`` (``.../v1``), asked through ``client``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def ask(body: dict[str, Any]) -> str:
        response = await client.post(
            f"{url.rstrip('/')}/chat/completions", json={"model": model, **body}, headers=headers
        )
        if response.is_error:  # the judge's own words (OpenAI's error shape), not only the status
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise RuntimeError(f"{response.status_code} from the judge: {message}")
        return str(response.json()["choices"][0]["message"]["content"] or "")

    return ask


async def judge_all(
    tasks: list[tuple[str, EvalItem, str]],
    rubric: Rubric,
    *,
    url: str,
    model: str,
    api_key: str | None = None,
    concurrency: int = 4,
    seed: int = 0,
) -> dict[str, Verdict]:
    """``judge_with`` a judge behind an OpenAI-compatible ``url``."""
    async with judge_client() as client:
        ask = http_judge(client, url, model, api_key)
        return await judge_with(ask, tasks, rubric, concurrency=concurrency, seed=seed)

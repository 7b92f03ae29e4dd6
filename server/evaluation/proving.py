"""Run an adapter version's eval gate on the engine, before the version takes traffic: the
registry's ``prove`` step, which the gateway gives it (``create_app``), so the registry never
imports evaluation.

The registry calls ``GateRunner.run`` once the candidate is loaded and before it is proven or made
active (``registry._adopt``), holding only that name's lock: the version serving now keeps
answering, and other names publish meanwhile. The gate asks the engine directly, the way a request
would be asked (the candidate's profile applied by ``server.openai.conversion``), one question at a time,
so it takes one slot of the engine's batch and never the capacity live traffic needs; it is not
counted in the request metrics. A run is bounded by the spec's ``timeout_s`` and the server's
``--eval-gate-timeout``; one that runs out, or cannot ask at all, fails (a gate never lets an
unchecked version through).

The serving version's scores on the same gate are remembered (by its weights and the gate), so a
series of rejected candidates does not re-ask it each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping

from ..datasets.testset import EvalItem
from ..engine.base import Engine
from ..openai.conversion import to_generation_request
from ..openai.protocol import ChatCompletionRequest
from ..registry.gate_spec import Gate, GateOutcome, failures
from ..registry.records import AdapterVersion, Lease
from ..registry.registry import Hold
from .gate import changes, means, score
from .judge import JUDGE_MAX_TOKENS, JudgeAsk, JudgeEndpoint, http_judge, judge_client

_REMEMBERED = 64  # serving versions' scores kept, per (weights, gate)


class GateRunner:
    def __init__(
        self,
        engine: Engine,
        base_model_id: str,
        *,
        timeout_cap: float,
        judges: Mapping[str, JudgeEndpoint] | None = None,
    ) -> None:
        self._engine = engine
        self._judges = dict(judges or {})
        self._base_model_id = base_model_id
        self._timeout_cap = timeout_cap
        self._serving_scores: OrderedDict[tuple[str, str], dict[str, list[float]]] = OrderedDict()

    async def run(
        self, gate: Gate, candidate: AdapterVersion, serving: AdapterVersion | None, hold: Hold
    ) -> GateOutcome:
        """The candidate's outcome on ``gate`` (and the serving version's scores, when the gate
        compares with it); never raises for what the models answer. ``hold`` keeps a version
        loaded while it is asked (the registry's ``held``)."""
        started = time.perf_counter()
        timeout = min(gate.spec.timeout_s, self._timeout_cap)
        outcome = GateOutcome(candidate.version, candidate.sha256, {})
        if gate.spec.uses_judge and gate.spec.judge is not None and gate.spec.judge not in self._judges:
            known = ", ".join(sorted(self._judges)) or "none: start the gateway with --judges"
            why = f"its judge {gate.spec.judge!r} is not one of this gateway's judges ({known})"
            return dataclasses.replace(_failed(outcome, why), seconds=time.perf_counter() - started)
        try:
            async with asyncio.timeout(timeout), self._judge(gate) as judge:
                per_item, errors = await self._score(gate, candidate, judge, hold)
                scores, current, moved = means(per_item), None, {}
                if serving is not None and gate.spec.max_drop:
                    serving_items = await self._serving(gate, serving, judge, hold)
                    current, moved = means(serving_items), changes(per_item, serving_items)
                outcome = GateOutcome(
                    candidate.version,
                    candidate.sha256,
                    scores,
                    current,
                    serving.version if current is not None and serving is not None else None,
                    failures(gate.spec, scores, current, moved)
                    + ((f"the judge failed on {errors} of {len(gate.items)} answers",) if errors else ()),
                    judge_errors=errors,
                    changes=moved,
                )
        except TimeoutError:
            outcome = _failed(outcome, f"did not finish within {timeout:g} s")
        except Exception as exc:  # the engine refused a question (too long, engine down): not passed
            outcome = _failed(outcome, f"could not run ({type(exc).__name__}: {exc})")
        return dataclasses.replace(outcome, seconds=time.perf_counter() - started)

    async def _serving(
        self, gate: Gate, serving: AdapterVersion, judge: JudgeAsk | None, hold: Hold
    ) -> dict[str, list[float]]:
        key = (serving.sha256 + serving.load_path, _digest(gate))
        if key not in self._serving_scores:
            self._serving_scores[key] = (await self._score(gate, serving, judge, hold))[0]
            while len(self._serving_scores) > _REMEMBERED:
                self._serving_scores.popitem(last=False)
        return self._serving_scores[key]

    async def _score(
        self, gate: Gate, version: AdapterVersion, judge: JudgeAsk | None, hold: Hold
    ) -> tuple[dict[str, list[float]], int]:
        async with hold(version):  # another name's load must not evict it mid-gate

            async def ask(item: EvalItem) -> str:
                body = {"model": version.name, "messages": list(item.messages), "temperature": 0}
                return await self._answer(body, Lease(version.name, version), gate.spec.max_tokens)

            return await score(gate, ask, judge)

    @contextlib.asynccontextmanager
    async def _judge(self, gate: Gate) -> AsyncIterator[JudgeAsk | None]:
        """The gate's judge: the operator's judge it names, else the served base model."""
        endpoint = self._judges.get(gate.spec.judge) if gate.spec.judge is not None else None
        if not gate.spec.uses_judge:
            yield None
        elif endpoint is not None:
            async with judge_client() as client:
                yield http_judge(client, endpoint.url, endpoint.model, endpoint.api_key)
        else:

            async def ask(body: dict[str, object]) -> str:
                base = self._base_model_id
                return await self._answer({"model": base, **body}, Lease(base, None), JUDGE_MAX_TOKENS)

            yield ask

    async def _answer(self, body: dict[str, object], lease: Lease, max_tokens: int) -> str:
        request = ChatCompletionRequest.model_validate(body)
        generation = to_generation_request(request, lease, max_n=1, default_max_tokens=max_tokens)
        generation = dataclasses.replace(generation, request_id=f"gate-{generation.request_id}")
        text: list[str] = []
        async with contextlib.aclosing(self._engine.generate(generation)) as deltas:  # type: ignore[type-var]
            async for delta in deltas:
                if delta.index == 0:
                    text.append(delta.text)
        return "".join(text)


def _failed(outcome: GateOutcome, why: str) -> GateOutcome:
    return dataclasses.replace(outcome, failures=(*outcome.failures, why))


def _digest(gate: Gate) -> str:
    spec = gate.spec.model_dump(mode="json")
    questions = [(item.key, item.reference) for item in gate.items]
    return hashlib.sha256(json.dumps([spec, questions], sort_keys=True).encode()).hexdigest()

"""More adapters than engine slots: a flood on one cannot keep another out (server/registry/residency.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.registry.test_registry import RecordingEngine, make_registry


def test_a_flooded_adapter_yields_its_slot_to_a_waiting_one(adapters_dir: Path) -> None:
    """One slot; alpha is held by a steady stream of requests. A request for beta asks alpha to
    yield: alpha's new requests wait, its running ones end, beta loads and is served, then alpha."""

    async def scenario() -> list[str]:
        engine = RecordingEngine()
        registry = make_registry(adapters_dir, engine, max_loaded=1)
        await registry.scan()
        served: list[str] = []
        stop = asyncio.Event()

        async def use(model: str, seconds: float) -> None:
            async with registry.lease(model):
                served.append(model)
                await asyncio.sleep(seconds)

        async def flood() -> None:  # alpha is never idle: a new request starts before the last ends
            running: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                task = asyncio.create_task(use("alpha", 0.05))
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(0.01)
            await asyncio.gather(*running)

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.2)
        await asyncio.wait_for(use("beta", 0.01), timeout=5)  # before: waited for ever
        await asyncio.sleep(0.2)
        stop.set()
        await flooding
        return served

    served = asyncio.run(scenario())
    beta = served.index("beta")
    assert "alpha" in served[:beta] and "alpha" in served[beta + 1 :]  # alpha served before and after

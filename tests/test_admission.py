"""Fair admission in front of vLLM's LoRA slots (server/admission.py)."""

from __future__ import annotations

import asyncio

import pytest

from server.admission import AdapterGate
from server.engine.base import Engine
from server.errors import Overloaded


async def hold(gate: AdapterGate, adapter: str | None, flow: str, log: list[str], release: asyncio.Event) -> None:
    async with gate.admit(adapter, flow):
        log.append(f"{flow}:{adapter}")
        await release.wait()


def test_a_flooded_adapter_yields_its_slot_and_flows_take_turns() -> None:
    async def scenario() -> list[str]:
        gate, log = AdapterGate(slots=1, max_queued=10), []
        a1, a2, b1, a3 = (asyncio.Event() for _ in range(4))
        tasks = [asyncio.create_task(hold(gate, "shop-a@1", "tenant-a", log, a1))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(hold(gate, "shop-b@1", "tenant-b", log, b1)))
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(hold(gate, "shop-a@1", "tenant-a", log, a2)))  # a yields: this waits
        tasks.append(asyncio.create_task(hold(gate, None, "tenant-c", log, a3)))  # the base needs no slot
        await asyncio.sleep(0.01)
        assert log == ["tenant-a:shop-a@1", "tenant-c:None"] and gate.waiting == 2
        a1.set()
        await asyncio.sleep(0.01)
        assert log[-1] == "tenant-b:shop-b@1"  # b got the slot before a's second request
        b1.set()
        await asyncio.sleep(0.01)
        assert log[-1] == "tenant-a:shop-a@1" and gate.waiting == 0
        a2.set()
        a3.set()
        await asyncio.gather(*tasks)
        assert gate.in_flight() == {}
        return log

    assert len(asyncio.run(scenario())) == 4


def test_requests_for_an_adapter_in_flight_enter_at_once() -> None:
    async def scenario() -> None:
        gate, log, done = AdapterGate(slots=2, max_queued=10), [], asyncio.Event()
        tasks = [asyncio.create_task(hold(gate, "shop-a@1", f"t{i}", log, done)) for i in range(5)]
        tasks.append(asyncio.create_task(hold(gate, "shop-b@1", "t9", log, done)))
        await asyncio.sleep(0.01)
        assert len(log) == 6 and gate.in_flight() == {"shop-a@1": 5, "shop-b@1": 1}
        done.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_the_queue_is_bounded_per_flow_and_a_cancelled_wait_leaves_no_trace() -> None:
    async def scenario() -> None:
        gate, log, done = AdapterGate(slots=1, max_queued=1), [], asyncio.Event()
        holder = asyncio.create_task(hold(gate, "shop-a@1", "a", log, done))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hold(gate, "shop-b@1", "b", log, done))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            async with gate.admit("shop-c@1", "b"):
                pass
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert gate.waiting == 0
        async with gate.admit("shop-a@1", "a"):  # nobody waits any more: shop-a is not held back
            pass
        done.set()
        await holder
        assert gate.in_flight() == {}

    asyncio.run(scenario())


class SlowEngine(Engine):
    """vLLM's scheduling with one LoRA slot, as far as order goes: a request for the adapter in the
    slot runs at once, another waits until the slot is empty (so a steady flood keeps it out).
    Answers after ``seconds``; records the order requests started."""

    max_model_len = 4096
    adapter_slots = 1  # as VllmEngine with --max-loras 1: the gateway admits fairly in front of it

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, []
        self.slot: tuple[str, int] | None = None  # adapter, requests running
        self.freed = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def add_adapter(self, adapter) -> None:  # type: ignore[no-untyped-def]
        return None

    async def remove_adapter(self, adapter) -> None:  # type: ignore[no-untyped-def]
        return None

    def health(self):  # type: ignore[no-untyped-def]
        from server.engine.base import EngineHealth

        return EngineHealth(True)

    def peak_memory_bytes(self) -> None:
        return None

    async def generate(self, request):  # type: ignore[no-untyped-def]
        from server.engine.base import GenerationDelta

        name = request.adapter.name if request.adapter else "base"
        while self.slot is not None and self.slot[0] != name:
            self.freed = self.freed if not self.freed.is_set() else asyncio.Event()
            await self.freed.wait()
        self.slot = (name, (self.slot[1] if self.slot else 0) + 1)
        self.started.append(name)
        try:
            await asyncio.sleep(self.seconds)
            yield GenerationDelta(0, "done", "stop", prompt_tokens=3, completion_tokens=1)
        finally:
            assert self.slot is not None
            self.slot = (name, self.slot[1] - 1) if self.slot[1] > 1 else None
            if self.slot is None:
                self.freed.set()


def test_the_vllm_engine_path_admits_a_second_adapter_before_a_floods_backlog(base_model, adapters_dir) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from server.app import create_app
    from tests.conftest import make_settings
    from tests.support import running_server

    engine = SlowEngine(0.5)
    app = create_app(make_settings(base_model, adapters_dir, engine="vllm", max_loras=1), engine)  # type: ignore[arg-type]
    assert app.state.gateway.adapter_gate is not None

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            def ask(model: str):  # type: ignore[no-untyped-def]
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
                return asyncio.create_task(client.post("/v1/chat/completions", json=body))

            flood = [ask("alpha")]
            await asyncio.sleep(0.1)
            other = ask("beta")
            await asyncio.sleep(0.1)
            flood += [ask("alpha") for _ in range(3)]
            answers = await asyncio.gather(*flood, other)
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]

    with running_server(app) as url:
        asyncio.run(scenario(url))
    assert engine.started == ["alpha", "beta", "alpha", "alpha", "alpha"]  # beta before alpha's later requests


def test_a_client_that_leaves_while_queued_holds_nothing(base_model, adapters_dir) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from server.app import create_app
    from tests.conftest import make_settings
    from tests.support import running_server, wait_for

    engine = SlowEngine(1.0)
    app = create_app(make_settings(base_model, adapters_dir, engine="vllm", max_loras=1), engine)  # type: ignore[arg-type]
    gateway = app.state.gateway
    body = {"messages": [{"role": "user", "content": "hi"}]}
    with running_server(app) as url:

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                alpha = asyncio.create_task(client.post("/v1/chat/completions", json={**body, "model": "alpha"}))
                await asyncio.sleep(0.2)
                with pytest.raises(httpx.ReadTimeout):  # beta waits for alpha's slot; its client gives up
                    await client.post("/v1/chat/completions", json={**body, "model": "beta"}, timeout=0.3)
                assert (await alpha).status_code == 200

        asyncio.run(scenario())
        wait_for(lambda: gateway.adapter_gate.in_flight() == {} and gateway.adapter_gate.waiting == 0)
        wait_for(lambda: not gateway.registry.holders())  # no lease left behind
    assert engine.started == ["alpha"]

"""More adapters than engine slots: a flood on one cannot keep another out (server/registry/residency.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.registry.records import AdapterInfo, AdapterVersion
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


def _version(adapter_id: int, load_path: Path) -> AdapterVersion:
    (load_path / "adapter_model.safetensors").parent.mkdir(parents=True, exist_ok=True)
    (load_path / "adapter_model.safetensors").write_bytes(b"")
    info = AdapterInfo(rank=8, alpha=16, target_modules=("q_proj",), base_model=None, size_bytes=0)
    return AdapterVersion("shop", adapter_id, 1, str(load_path), str(load_path), info, 0, "0" * 64)


def test_a_version_lives_through_its_states_and_its_record_goes_when_retired(tmp_path: Path) -> None:
    """staged -> proving -> active -> draining (held) -> retired (its last holder left): the
    states the registry moves a version through, each visible while the version has a record."""
    from server.registry.residency import Residency, VersionState

    async def scenario() -> list[VersionState | None]:
        engine = RecordingEngine()
        residency = Residency(engine, 4, lambda seconds: None)  # type: ignore[arg-type]
        version = _version(1, tmp_path / "v1")
        seen = []
        residency.stage(version)
        seen.append(residency.state(version))
        await residency.ensure_loaded(version, evict=True)
        residency.proving(version)
        seen.append(residency.state(version))
        residency.activate(version)
        seen.append(residency.state(version))
        residency.acquire(version)
        await residency.retire(version)  # a request holds it: it drains
        seen.append(residency.state(version))
        assert residency.busy() == [version] and residency.draining() == [version]
        residency.release(version)
        await asyncio.sleep(0.05)  # the drained version is unloaded by a task of its own
        seen.append(residency.state(version))
        assert not residency.is_loaded(version) and engine.removed
        return seen

    assert asyncio.run(scenario()) == [
        VersionState.STAGED,
        VersionState.PROVING,
        VersionState.ACTIVE,
        VersionState.DRAINING,
        None,  # retired: the record went
    ]


def test_a_transition_the_life_cycle_does_not_allow_is_refused(tmp_path: Path) -> None:
    import pytest

    from server.registry.residency import Resident, VersionState

    resident = Resident(_version(1, tmp_path / "v1"), VersionState.DRAINING)
    with pytest.raises(AssertionError, match="draining -> active is not allowed"):
        resident.move(VersionState.ACTIVE)
    resident.move(VersionState.RETIRED)
    with pytest.raises(AssertionError, match="retired -> proving"):
        resident.move(VersionState.PROVING)

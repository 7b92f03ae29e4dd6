"""Registry at start-up: what the directory holds is served; what is bad is reported, not served."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from server.engine.base import AdapterRef, EngineHealth, GenerationRequest
from server.errors import ModelNotFound
from server.registry import AdapterRegistry, AdapterState
from server.registry.registry import RegistryHooks


class RecordingEngine:
    """Records add/remove calls; the registry needs nothing else from an engine here."""

    max_model_len = 128

    def __init__(self) -> None:
        self.added: list[AdapterRef] = []
        self.removed: list[AdapterRef] = []

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.added.append(adapter)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self.removed.append(adapter)

    def health(self) -> EngineHealth:
        return EngineHealth(ready=True)

    def generate(self, request: GenerationRequest):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def make_registry(
    directory: Path, engine: RecordingEngine, rejected: list[str] | None = None, **kwargs: object
) -> AdapterRegistry:
    return AdapterRegistry(
        engine,  # type: ignore[arg-type]
        base_model_id="base",
        adapters_dir=directory,
        max_lora_rank=64,
        max_adapter_bytes=10**8,
        hooks=RegistryHooks(rejected=(rejected if rejected is not None else []).append),
        **kwargs,  # type: ignore[arg-type]
    )


def test_scan_registers_good_and_reports_bad(adapters_dir: Path, trained_adapters: dict[str, Path]) -> None:
    shutil.copytree(trained_adapters["alpha"], adapters_dir / "dora-one")
    config = json.loads((adapters_dir / "dora-one" / "adapter_config.json").read_text())
    (adapters_dir / "dora-one" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    shutil.copytree(trained_adapters["alpha"], adapters_dir / ".staging-tmp")  # ignored
    (adapters_dir / "README.md").write_text("not an adapter")  # ignored
    engine, rejected = RecordingEngine(), []
    registry = make_registry(adapters_dir, engine, rejected)
    asyncio.run(registry.scan())

    assert [v.name for v in registry.active_versions()] == ["alpha", "beta"]
    assert [a.name for a in engine.added] == ["alpha", "beta"]  # "ready" means loaded once: a request will succeed
    assert len({a.adapter_id for a in engine.added}) == 2
    bad = registry.get("dora-one")
    assert bad is not None and bad.state is AdapterState.REJECTED and "DoRA" in (bad.last_error or "")
    assert rejected == ["dora"]


def test_lease_resolves_base_and_adapters(adapters_dir: Path) -> None:
    async def scenario() -> None:
        registry = make_registry(adapters_dir, RecordingEngine())
        await registry.scan()
        async with registry.lease("base") as lease:
            assert lease.adapter is None and lease.ref is None
        async with registry.lease("alpha") as lease:
            assert lease.ref is not None and lease.ref.name == "alpha"
        for missing in ("gamma", "../alpha", "dora-one"):
            with pytest.raises(ModelNotFound):
                async with registry.lease(missing):
                    pass

    asyncio.run(scenario())


def test_a_missing_directory_serves_the_base_only(tmp_path: Path) -> None:
    registry = make_registry(tmp_path / "nope", RecordingEngine())
    asyncio.run(registry.scan())
    assert registry.active_versions() == []


def test_stray_entries_are_reported_not_served(adapters_dir: Path, trained_adapters: dict[str, Path]) -> None:
    (adapters_dir / "notes.txt").write_text("hello")  # a stray file
    shutil.copytree(trained_adapters["alpha"], adapters_dir / "has space")  # a name no client could use
    (adapters_dir / "empty").mkdir()  # a copy that has not started yet
    (adapters_dir / "README.md").write_text("documentation is fine")
    rejected: list[str] = []
    registry = make_registry(adapters_dir, RecordingEngine(), rejected)
    asyncio.run(registry.scan())
    states = {e.name: (e.state, e.last_error) for e in registry.entries()}
    assert states["notes.txt"][0] is AdapterState.REJECTED and "not an adapter directory" in (
        states["notes.txt"][1] or ""
    )
    assert states["has space"][0] is AdapterState.REJECTED and "valid adapter name" in (states["has space"][1] or "")
    assert states["empty"][0] is AdapterState.INCOMPLETE
    assert "README.md" not in states
    assert sorted(rejected) == ["bad_name", "not_a_directory"]
    asyncio.run(registry.scan())  # looking again at unchanged files reports nothing new
    assert len(rejected) == 2

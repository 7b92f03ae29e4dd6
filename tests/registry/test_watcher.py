"""The watcher never fails silently: logged, counted, reported by /ready, restarted after a rescan."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from server.registry.watcher import AdapterWatcher
from tests.registry.test_registry import RecordingEngine, make_registry
from tests.support import metric_value


class FailsOnce(AdapterWatcher):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise OSError("inotify watch limit reached")
        self.following = True
        await asyncio.Event().wait()


def test_a_failed_watcher_is_reported_rescanned_and_restarted(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, RecordingEngine())
    watcher = FailsOnce(registry)
    failures: list[None] = []
    scans = 0
    original_scan = registry.scan

    async def counting_scan() -> None:
        nonlocal scans
        scans += 1
        await original_scan()

    registry.scan = counting_scan  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(watcher.supervise(lambda: failures.append(None), backoff=0.05))
        await asyncio.sleep(0.02)
        assert not watcher.following and watcher.last_failure == "OSError: inotify watch limit reached"
        for _ in range(100):
            if watcher.following:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert watcher.runs == 2 and watcher.following and len(failures) == 1 and scans == 1


def test_ready_says_when_the_directory_is_not_followed(gateway_app, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    watcher = gateway_app.state.gateway.watcher
    assert httpx.get(f"{gateway_url}/ready").json()["adapters"]["watching"] is True
    watcher.following, watcher.last_failure = False, "OSError: gone"
    try:
        response = httpx.get(f"{gateway_url}/ready")
        assert response.status_code == 503
        assert response.json()["adapters"]["watcher_failure"] == "OSError: gone"
    finally:
        watcher.following, watcher.last_failure = True, None
    assert httpx.get(f"{gateway_url}/ready").status_code == 200
    assert metric_value(httpx.get(f"{gateway_url}/metrics").text, "lora_gateway_watcher_failures_total") == 0


def test_the_gateways_own_state_in_the_directory_is_not_news(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Database writes (``.gateway.db`` and its WAL) and ``.kept`` used to wake the watcher and log
    "changes detected" hundreds of times; only an adapter's files are followed."""
    import logging

    caplog.set_level(logging.DEBUG, logger="watchfiles")
    registry = make_registry(tmp_path, RecordingEngine())
    synced: list[str] = []

    async def sync(name: str, **_: object) -> None:
        synced.append(name)

    registry.sync = sync  # type: ignore[method-assign, assignment]
    watcher = AdapterWatcher(registry, settle=0.05)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.5)
        for i in range(20):
            (tmp_path / ".gateway.db").write_bytes(b"x" * i)
            (tmp_path / ".gateway.db-wal").write_bytes(b"y" * i)
            (tmp_path / ".kept").mkdir(exist_ok=True)
            (tmp_path / ".kept" / f"{i}").write_text("z")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)
        logged = [r for r in caplog.records if "detected" in r.getMessage()]  # watchfiles' "N changes detected"
        assert synced == [] and not logged
        (tmp_path / "shop").mkdir()
        (tmp_path / "shop" / "adapter_config.json").write_text("{}")
        for _ in range(100):
            if synced:
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(scenario())
    assert synced == ["shop"]

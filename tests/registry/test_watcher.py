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

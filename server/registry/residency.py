"""Which adapter versions the engine holds, and which requests hold them.

The engine holds at most ``max_loaded`` versions; the least recently used idle one is evicted to
make room, and reloaded from its durable copy by the next request that names it. Requests hold a
version by reference count; a retired version still in use *drains*, and is unloaded when its last
request releases it. One engine load or unload runs at a time.

When every slot is busy and a request needs another version, the least recently used busy version
is asked to *yield*: it admits no new request until its running ones end and it is evicted, so a
flood on one adapter cannot keep another adapter out of the engine for ever (``wait_turn``). The
flooded adapter's new requests wait their turn and reload it once the other has been served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ..engine.base import Engine
from ..errors import EngineUnavailable
from ..terms.layout import WEIGHTS_FILE
from .records import AdapterVersion, adapter_ref

logger = logging.getLogger(__name__)


class Residency:
    def __init__(self, engine: Engine, max_loaded: int, on_loaded: Callable[[float], None]) -> None:
        self._engine = engine
        self._max_loaded = max_loaded
        self._on_loaded = on_loaded
        self._in_use: dict[int, int] = {}  # adapter_id -> running requests
        self._draining: dict[int, AdapterVersion] = {}
        self._loaded: OrderedDict[int, AdapterVersion] = OrderedDict()  # least recently used first
        self._engine_lock = asyncio.Lock()  # one engine load/unload at a time
        self._went_idle = asyncio.Event()  # replaced each time it fires: "a loaded version is free now"
        self._unloads: set[asyncio.Task[None]] = set()  # drained versions being unloaded (held, not collected)
        self._yielding: dict[int, int] = {}  # adapter_id -> waiters it must give its slot to

    # ------------------------------------------------------------------ reading

    def is_loaded(self, version: AdapterVersion) -> bool:
        return version.adapter_id in self._loaded

    def draining(self) -> list[AdapterVersion]:
        return list(self._draining.values())

    def busy(self) -> list[AdapterVersion]:
        """Versions answering a request now, or draining (the store must keep their copies); a
        version merely left loaded since its last request is not busy: retention may take it."""
        in_use = [v for v in self._loaded.values() if self._in_use.get(v.adapter_id)]
        return [*in_use, *self._draining.values()]

    async def drop_deleted(self) -> None:
        """Unload idle versions whose stored copy is gone (retention took it): they would only
        hold a slot until the least recently used one is evicted."""
        for version in list(self._loaded.values()):
            if not self._in_use.get(version.adapter_id) and not Path(version.load_path).is_dir():
                await self.unload(version)

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    @property
    def full(self) -> bool:
        return len(self._loaded) >= self._max_loaded

    # ------------------------------------------------------------------ requests

    async def wait_turn(self, version: AdapterVersion) -> None:
        """Hold a new request for a version that is yielding its slot, until it has been evicted."""
        while version.adapter_id in self._yielding and version.adapter_id in self._loaded:
            went_idle = self._went_idle
            await went_idle.wait()

    def acquire(self, version: AdapterVersion) -> None:
        self._in_use[version.adapter_id] = self._in_use.get(version.adapter_id, 0) + 1

    def release(self, version: AdapterVersion) -> None:
        left = self._in_use[version.adapter_id] - 1
        if left:
            self._in_use[version.adapter_id] = left
            return
        del self._in_use[version.adapter_id]
        if version.adapter_id in self._draining:
            task = asyncio.get_running_loop().create_task(self.unload(self._draining.pop(version.adapter_id)))
            self._unloads.add(task)
            task.add_done_callback(self._unloads.discard)
        self._signal_idle()

    async def retire(self, version: AdapterVersion) -> None:
        """No new request gets ``version``: unload it now if idle, else once it drains."""
        if self._in_use.get(version.adapter_id):
            self._draining[version.adapter_id] = version
        else:
            await self.unload(version)

    # ------------------------------------------------------------------ the engine

    async def ensure_loaded(self, version: AdapterVersion, *, evict: bool) -> None:
        """Make sure the engine holds ``version``, evicting the least recently used idle version if
        the engine is full. With ``evict=False`` (preloading) it only fills free slots.

        Versions already loaded return at once without the lock, so requests for them never queue
        behind a load; a load that finds every slot busy waits for one to go idle, then retries.
        """
        marked: int | None = None  # the busy version asked to yield its slot to this request
        try:
            while True:
                if version.adapter_id in self._loaded:
                    self._loaded.move_to_end(version.adapter_id)
                    return
                if marked is not None and marked not in self._loaded:
                    marked = None  # it yielded (to this request or another): ask again if still full
                went_idle = self._went_idle
                async with self._engine_lock:
                    if version.adapter_id in self._loaded:
                        continue
                    if len(self._loaded) >= self._max_loaded:
                        if not evict:
                            return
                        victim = next((v for v in self._loaded.values() if not self._in_use.get(v.adapter_id)), None)
                        if victim is not None:
                            await self._engine_remove(victim)
                        elif marked is None:
                            marked = self._ask_to_yield(version)
                    if await self._load_if_room(version):
                        return
                await went_idle.wait()  # every loaded version is busy: wait for one to be released
        finally:
            if marked is not None and marked in self._yielding:
                self._yielding[marked] -= 1
                if not self._yielding[marked]:
                    del self._yielding[marked]
                self._signal_idle()

    def _ask_to_yield(self, waiting: AdapterVersion) -> int | None:
        """Mark the least recently used busy version (not yet yielding) to give up its slot."""
        for candidate in self._loaded.values():
            if candidate.adapter_id != waiting.adapter_id and candidate.adapter_id not in self._yielding:
                self._yielding[candidate.adapter_id] = 1
                return candidate.adapter_id
        for candidate in self._loaded.values():  # all yielding already: wait behind the oldest
            if candidate.adapter_id != waiting.adapter_id:
                self._yielding[candidate.adapter_id] += 1
                return candidate.adapter_id
        return None

    async def _load_if_room(self, version: AdapterVersion) -> bool:
        """Caller holds ``_engine_lock``."""
        if len(self._loaded) >= self._max_loaded:
            return False
        if not Path(version.load_path, WEIGHTS_FILE).is_file():
            raise EngineUnavailable(
                f"The stored copy of adapter {version.name} v{version.version} is gone; publish it again."
            )
        started = time.perf_counter()
        await self._engine.add_adapter(adapter_ref(version))
        self._on_loaded(time.perf_counter() - started)
        self._loaded[version.adapter_id] = version
        return True

    async def unload(self, version: AdapterVersion) -> None:
        """Take ``version`` out of the engine (its durable copy stays, under the retention rule)."""
        async with self._engine_lock:
            if version.adapter_id in self._loaded:
                await self._engine_remove(version)
        self._signal_idle()

    async def _engine_remove(self, version: AdapterVersion) -> None:
        """Caller holds ``_engine_lock``."""
        del self._loaded[version.adapter_id]
        if self._yielding.pop(version.adapter_id, None) is not None:
            self._signal_idle()  # its held-back requests may go (and reload it in turn)
        try:
            await self._engine.remove_adapter(adapter_ref(version))
        except Exception:
            logger.exception("could not unload adapter %s (id %d)", version.name, version.adapter_id)

    def _signal_idle(self) -> None:
        self._went_idle.set()
        self._went_idle = asyncio.Event()

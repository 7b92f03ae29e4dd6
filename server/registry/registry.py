"""Which adapters exist, which version of each is live, and when an old version may be unloaded.

The registry is the only writer of adapter state. A new version is validated, then loaded into the
engine, and only then becomes active (so nothing is served half-loaded); the version it replaces
moves to *draining* and is unloaded once its last request releases it (reference counts, as in
SGLang's LoRA registry). A rejected version never displaces the active one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.engine.base import AdapterRef, Engine
from server.errors import ModelNotFound
from server.registry.names import is_valid_name
from server.registry.records import AdapterState, AdapterVersion
from server.registry.validation import AdapterRejected, inspect_adapter

logger = logging.getLogger(__name__)


@dataclass
class AdapterEntry:
    """Everything known about one adapter name (mutable; owned by the registry)."""

    name: str
    state: AdapterState
    active: AdapterVersion | None = None
    last_error: str | None = None
    rejected_path: str | None = None


@dataclass(frozen=True)
class Lease:
    """A request's hold on the model it asked for; ``adapter`` is None for the base model."""

    model: str
    adapter: AdapterVersion | None

    @property
    def ref(self) -> AdapterRef | None:
        if self.adapter is None:
            return None
        return AdapterRef(self.adapter.name, self.adapter.adapter_id, self.adapter.path)


class AdapterRegistry:
    def __init__(
        self,
        engine: Engine,
        *,
        base_model_id: str,
        adapters_dir: Path,
        max_lora_rank: int,
        max_adapter_bytes: int,
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        self._engine = engine
        self.base_model_id = base_model_id
        self.adapters_dir = adapters_dir
        self._max_lora_rank = max_lora_rank
        self._max_adapter_bytes = max_adapter_bytes
        self._on_rejected = on_rejected or (lambda name, reason: None)
        self._entries: dict[str, AdapterEntry] = {}
        self._ids = itertools.count(1)
        self._versions: dict[str, int] = {}
        self._in_use: dict[int, int] = {}  # adapter_id -> running requests
        self._draining: dict[int, AdapterVersion] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[AdapterEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def active_versions(self) -> list[AdapterVersion]:
        return [e.active for e in self.entries() if e.active is not None]

    def get(self, name: str) -> AdapterEntry | None:
        return self._entries.get(name)

    @contextmanager
    def lease(self, model: str) -> Iterator[Lease]:
        """Hold ``model`` (base id or adapter name) for the duration of one request."""
        if model == self.base_model_id:
            yield Lease(model, None)
            return
        entry = self._entries.get(model)
        if entry is None or entry.active is None:
            raise ModelNotFound(model)
        version = entry.active
        self._in_use[version.adapter_id] = self._in_use.get(version.adapter_id, 0) + 1
        try:
            yield Lease(model, version)
        finally:
            self._release(version)

    def _release(self, version: AdapterVersion) -> None:
        left = self._in_use[version.adapter_id] - 1
        if left:
            self._in_use[version.adapter_id] = left
            return
        del self._in_use[version.adapter_id]
        if version.adapter_id in self._draining:
            asyncio.get_running_loop().create_task(self._unload(self._draining.pop(version.adapter_id)))

    # ------------------------------------------------------------------ writing

    async def scan(self) -> None:
        """Register every adapter directory present now (start-up)."""
        if not self.adapters_dir.is_dir():
            logger.warning("adapters directory %s does not exist; serving the base model only", self.adapters_dir)
            return
        for path in sorted(self.adapters_dir.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            await self.register(path.name, path)

    async def register(self, name: str, path: Path) -> AdapterEntry:
        """Validate and load ``path`` as the next version of ``name``; keep the old one on failure."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._entries.get(name) or AdapterEntry(name, AdapterState.VALIDATING)
            self._entries[name] = entry
            try:
                if not is_valid_name(name):
                    raise AdapterRejected("bad_name", f"{name!r} is not a valid adapter name.")
                info = await asyncio.to_thread(
                    inspect_adapter, path, max_lora_rank=self._max_lora_rank, max_bytes=self._max_adapter_bytes
                )
                self._versions[name] = self._versions.get(name, 0) + 1
                version = AdapterVersion(
                    name, next(self._ids), self._versions[name], str(path.resolve()), info, int(time.time())
                )
                if entry.active is None:
                    entry.state = AdapterState.LOADING
                await self._engine.add_adapter(AdapterRef(name, version.adapter_id, version.path))
            except AdapterRejected as exc:
                self._reject(entry, exc.reason, str(exc), path)
                return entry
            except Exception as exc:
                self._reject(entry, "load_failed", f"{name}: the engine could not load it ({exc}).", path)
                return entry
            previous, entry.active = entry.active, version
            entry.state, entry.last_error, entry.rejected_path = AdapterState.READY, None, None
            if previous is not None:
                await self._retire(previous)
            logger.info("adapter %s v%d ready (id %d)", name, version.version, version.adapter_id)
            return entry

    def _reject(self, entry: AdapterEntry, reason: str, message: str, path: Path) -> None:
        logger.warning("adapter rejected: %s", message)
        entry.last_error, entry.rejected_path = message, str(path)
        if entry.active is None:
            entry.state = AdapterState.REJECTED
        self._on_rejected(entry.name, reason)

    async def _retire(self, version: AdapterVersion) -> None:
        if self._in_use.get(version.adapter_id):
            self._draining[version.adapter_id] = version
        else:
            await self._unload(version)

    async def _unload(self, version: AdapterVersion) -> None:
        try:
            await self._engine.remove_adapter(AdapterRef(version.name, version.adapter_id, version.path))
        except Exception:
            logger.exception("could not unload adapter %s (id %d)", version.name, version.adapter_id)

"""Which adapters exist, which version of each is live, and which versions the engine holds.

The adapters directory is the source of truth; ``sync(name)`` makes the registry agree with what
``<dir>/<name>`` holds now, and is the only way state changes (the watcher, the admin API and
start-up all call it). It is idempotent: each version is identified by a fingerprint of its files
(name, size, mtime), so repeated events for unchanged files do nothing, and a bad file is reported
once, not once per event.

Life of a version (after SGLang's LoRA registry): validated from headers, then loaded into the
engine, and only then made active, so nothing is served half-loaded. The version it replaces is
retired: unloaded at once if idle, else *draining* until its last request releases it (reference
counts). A rejected or incomplete new version never displaces the active one.

The engine holds at most ``max_loaded`` versions; the least recently used idle one is evicted to
make room, and reloaded on demand by the next request that names it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from server.engine.base import AdapterRef, Engine
from server.errors import EngineUnavailable, ModelNotFound
from server.registry.base_model import BaseModelSpec
from server.registry.names import is_valid_name
from server.registry.records import AdapterState, AdapterVersion
from server.registry.snapshots import Snapshots
from server.registry.validation import (
    AdapterIncomplete,
    AdapterRejected,
    check_inside,
    file_sha256,
    inspect_adapter,
)

logger = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]
# Top-level files that may live in the adapters directory without being reported.
IGNORED_FILES = {"README.md"}


@dataclass
class RegistryHooks:
    """Callbacks for metrics, so the registry does not depend on Prometheus."""

    rejected: Callable[[str], None] = lambda reason: None
    loaded: Callable[[float], None] = lambda seconds: None
    swapped: Callable[[], None] = lambda: None


@dataclass
class AdapterEntry:
    """Everything known about one adapter name (mutable; owned by the registry)."""

    name: str
    state: AdapterState
    active: AdapterVersion | None = None
    last_error: str | None = None
    fingerprint: Fingerprint | None = None  # of the files last looked at, good or bad
    checked: bool = False
    sha256: dict[int, str] = field(default_factory=dict)  # adapter_id -> weights digest, once read


@dataclass(frozen=True)
class Lease:
    """A request's hold on the model it asked for; ``adapter`` is None for the base model."""

    model: str
    adapter: AdapterVersion | None

    @property
    def ref(self) -> AdapterRef | None:
        return None if self.adapter is None else _ref(self.adapter)


def _ref(version: AdapterVersion) -> AdapterRef:
    return AdapterRef(version.name, version.adapter_id, version.load_path)


def fingerprint(path: Path) -> Fingerprint | None:
    """(file, size, mtime) of each file in ``path``; None when ``path`` is not a directory."""
    try:
        return tuple(sorted((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in path.iterdir() if f.is_file()))
    except (FileNotFoundError, NotADirectoryError):
        return None


class AdapterRegistry:
    def __init__(
        self,
        engine: Engine,
        *,
        base_model_id: str,
        adapters_dir: Path,
        max_lora_rank: int,
        max_adapter_bytes: int,
        max_loaded: int = 64,
        base_spec: BaseModelSpec | None = None,
        hooks: RegistryHooks | None = None,
    ) -> None:
        self._engine = engine
        self.base_model_id = base_model_id
        self.adapters_dir = adapters_dir
        self.base_spec = base_spec
        self._max_lora_rank = max_lora_rank
        self._max_adapter_bytes = max_adapter_bytes
        self._max_loaded = max_loaded
        self._hooks = hooks or RegistryHooks()
        self._entries: dict[str, AdapterEntry] = {}
        self._ids = itertools.count(1)
        self._versions: dict[str, int] = {}
        self._in_use: dict[int, int] = {}  # adapter_id -> running requests
        self._draining: dict[int, AdapterVersion] = {}
        self._loaded: OrderedDict[int, AdapterVersion] = OrderedDict()  # least recently used first
        self._engine_lock = asyncio.Lock()  # one engine load/unload at a time
        self._went_idle = asyncio.Event()  # replaced each time it fires: "a loaded version is free now"
        self._name_locks: dict[str, asyncio.Lock] = {}
        self._snapshots = Snapshots(adapters_dir)
        self.scan_total = 0
        self.scan_done = 0
        self.scan_complete = False
        self.revision = 0  # bumped whenever the set of active versions changes (for caches)

    # ------------------------------------------------------------------ reading

    def entries(self) -> list[AdapterEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def active_versions(self) -> list[AdapterVersion]:
        return [e.active for e in self.entries() if e.active is not None]

    def get(self, name: str) -> AdapterEntry | None:
        return self._entries.get(name)

    def is_loaded(self, version: AdapterVersion) -> bool:
        return version.adapter_id in self._loaded

    def draining(self) -> list[AdapterVersion]:
        return list(self._draining.values())

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    @asynccontextmanager
    async def lease(self, model: str) -> AsyncIterator[Lease]:
        """Hold ``model`` (base id or adapter name) for one request, loading it if it was evicted."""
        if model == self.base_model_id:
            yield Lease(model, None)
            return
        version = await self._resolve(model)
        self._in_use[version.adapter_id] = self._in_use.get(version.adapter_id, 0) + 1
        try:
            await self._ensure_loaded(version, evict=True)
            yield Lease(model, version)
        finally:
            self._release(version)

    async def _resolve(self, model: str) -> AdapterVersion:
        entry = self._entries.get(model)
        if entry is None or entry.active is None:
            raise ModelNotFound(model)
        version = entry.active
        if not self.is_loaded(version) and fingerprint(Path(version.path)) != version.fingerprint:
            # Evicted, and its files changed since: look again before loading anything from disk.
            entry = await self.sync(model)
            if entry is None or entry.active is None:
                raise ModelNotFound(model)
            version = entry.active
        return version

    def _release(self, version: AdapterVersion) -> None:
        left = self._in_use[version.adapter_id] - 1
        if left:
            self._in_use[version.adapter_id] = left
            return
        del self._in_use[version.adapter_id]
        if version.adapter_id in self._draining:
            asyncio.get_running_loop().create_task(self._unload(self._draining.pop(version.adapter_id)))
        self._signal_idle()

    def _signal_idle(self) -> None:
        self._went_idle.set()
        self._went_idle = asyncio.Event()

    # ------------------------------------------------------------------ following the directory

    async def scan(self) -> None:
        """Bring every name in the directory (and every name no longer there) up to date."""
        names = set(self._entries)
        if self.adapters_dir.is_dir():
            names |= {p.name for p in self.adapters_dir.iterdir() if not p.name.startswith(".")}
        else:
            logger.warning("adapters directory %s does not exist; serving the base model only", self.adapters_dir)
        if not self.scan_complete:
            await asyncio.to_thread(self._snapshots.remove_stale)
        self.scan_total, self.scan_done = len(names), 0
        for name in sorted(names):
            await self.sync(name, preload=self.scan_complete)
            self.scan_done += 1
        self.scan_complete = True

    async def close(self) -> None:
        """Drop this process's snapshots (the engine is being stopped with everything it holds)."""
        await asyncio.to_thread(self._snapshots.close)

    async def preload(self) -> None:
        """Load registered adapters into free engine slots, without evicting anything."""
        for version in self.active_versions():
            if len(self._loaded) >= self._max_loaded:
                return
            try:
                await self._ensure_loaded(version, evict=False)
            except Exception:
                logger.exception("preloading %s failed", version.name)

    async def sync(self, name: str, *, force: bool = False, preload: bool = True) -> AdapterEntry | None:
        """Make the registry agree with ``<dir>/<name>`` as it is now; return the entry, if any."""
        if name.startswith(".") or "/" in name or "\\" in name:
            return None  # staging entries, and anything that is not a single path component
        lock = self._name_locks.setdefault(name, asyncio.Lock())
        async with lock:
            path = self.adapters_dir / name
            if not (path.exists() or path.is_symlink()):
                await self._unregister(name)
                return None
            if path.is_file() and name in IGNORED_FILES:
                return None
            entry = self._entries.setdefault(name, AdapterEntry(name, AdapterState.INCOMPLETE))
            current = fingerprint(path)
            if entry.checked and current == entry.fingerprint and not force:
                return entry
            entry.fingerprint, entry.checked = current, True
            await self._register(entry, path, current, preload=preload)
            return entry

    async def _register(self, entry: AdapterEntry, path: Path, files: Fingerprint | None, *, preload: bool) -> None:
        name = entry.name
        try:
            if not is_valid_name(name):
                raise AdapterRejected("bad_name", f"{name!r} is not a valid adapter name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}}).")
            if files is None:
                raise AdapterRejected("not_a_directory", f"{name}: not an adapter directory.")
            version = await self._take_version(name, path, files)
            try:
                if preload or entry.active is not None:
                    await self._ensure_loaded(version, evict=True)
            except Exception:
                self._snapshots.discard(Path(version.load_path))
                raise
        except AdapterIncomplete as exc:
            if entry.active is None:
                entry.state = AdapterState.INCOMPLETE
            entry.last_error = str(exc)
            logger.debug("adapter %s incomplete: %s", name, exc)
            return
        except AdapterRejected as exc:
            self._reject(entry, exc.reason, str(exc))
            return
        except Exception as exc:
            self._reject(entry, "load_failed", f"{name}: the engine could not load it ({type(exc).__name__}: {exc}).")
            return
        previous, entry.active = entry.active, version
        entry.state, entry.last_error = AdapterState.READY, None
        self.revision += 1
        if previous is not None:
            self._hooks.swapped()
            await self._retire(previous)
        logger.info("adapter %s v%d ready (id %d)", name, version.version, version.adapter_id)

    async def _take_version(self, name: str, path: Path, files: Fingerprint) -> AdapterVersion:
        """Snapshot ``path`` and validate the snapshot, so what is validated is what gets loaded."""
        await asyncio.to_thread(check_inside, path, self.adapters_dir)
        adapter_id = next(self._ids)
        snapshot = await asyncio.to_thread(self._snapshots.take, path, adapter_id)
        try:
            if fingerprint(path) != files:
                raise AdapterIncomplete(f"{name}: files changed while being registered.")
            info = await asyncio.to_thread(
                inspect_adapter, snapshot, max_lora_rank=self._max_lora_rank, max_bytes=self._max_adapter_bytes, base=self.base_spec
            )
        except Exception:
            self._snapshots.discard(snapshot)
            raise
        self._versions[name] = self._versions.get(name, 0) + 1
        return AdapterVersion(
            name=name,
            adapter_id=adapter_id,
            version=self._versions[name],
            path=str(path.absolute()),
            load_path=str(snapshot),
            info=info,
            created=int(time.time()),
            fingerprint=files,
            snapshot_fingerprint=fingerprint(snapshot) or (),
        )

    def _reject(self, entry: AdapterEntry, reason: str, message: str) -> None:
        logger.warning("adapter rejected: %s%s", message, " (the previous version keeps serving)" if entry.active else "")
        entry.last_error = message
        if entry.active is None:
            entry.state = AdapterState.REJECTED
        self._hooks.rejected(reason)

    async def _unregister(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        self.revision += 1
        if entry is not None and entry.active is not None:
            logger.info("adapter %s removed", name)
            await self._retire(entry.active)

    async def _retire(self, version: AdapterVersion) -> None:
        if self._in_use.get(version.adapter_id):
            self._draining[version.adapter_id] = version
        else:
            await self._unload(version)

    # ------------------------------------------------------------------ engine residency

    async def _ensure_loaded(self, version: AdapterVersion, *, evict: bool) -> None:
        """Make sure the engine holds ``version``, evicting the least recently used idle version if
        the engine is full. With ``evict=False`` (preloading) it only fills free slots.

        Versions already loaded return at once without the lock, so requests for them never queue
        behind a load; a load that finds every slot busy waits for one to go idle, then retries.
        """
        while True:
            if version.adapter_id in self._loaded:
                self._loaded.move_to_end(version.adapter_id)
                return
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
                if len(self._loaded) < self._max_loaded:
                    if fingerprint(Path(version.load_path)) != version.snapshot_fingerprint:
                        raise EngineUnavailable(
                            f"The files of adapter {version.name} were overwritten in place; publish it again."
                        )
                    started = time.perf_counter()
                    await self._engine.add_adapter(_ref(version))
                    self._hooks.loaded(time.perf_counter() - started)
                    self._loaded[version.adapter_id] = version
                    break
            await went_idle.wait()  # every loaded version is busy: wait for one to be released
        entry = self._entries.get(version.name)
        if entry is not None and version.adapter_id not in entry.sha256:
            weights = Path(version.path) / "adapter_model.safetensors"
            entry.sha256[version.adapter_id] = await asyncio.to_thread(file_sha256, weights)

    async def _unload(self, version: AdapterVersion) -> None:
        """Retire ``version`` for good: out of the engine, and its snapshot deleted."""
        async with self._engine_lock:
            if version.adapter_id in self._loaded:
                await self._engine_remove(version)
        self._snapshots.discard(Path(version.load_path))
        self._signal_idle()

    async def _engine_remove(self, version: AdapterVersion) -> None:
        """Caller holds ``_engine_lock``."""
        del self._loaded[version.adapter_id]
        try:
            await self._engine.remove_adapter(_ref(version))
        except Exception:
            logger.exception("could not unload adapter %s (id %d)", version.name, version.adapter_id)

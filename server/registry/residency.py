"""Which adapter versions the engine holds, and which requests hold them: one record per version.

Every version the registry puts in the engine, proves or serves has a ``Resident`` record while it
is loaded, held or draining: its explicit ``VersionState``, the requests (and gates) holding it, and
whether it sits in an engine slot. A state changes only through ``Resident.move``, which knows the
allowed transitions, and only from the methods of ``Residency`` (the registry calls them):

    staged ──► proving ──► active ──► draining ──► retired
       │          │           ▲          (last holder leaves)
       └──────────┴───► retired (its load or gate failed, or newer files came)
       └──────────────────────┘ (proven before on this base and engine: no gate to run)

The engine holds at most ``max_loaded`` versions; the least recently used idle one is evicted to
make room, and reloaded from its durable copy by the next request that names it. An evicted, idle
version needs no record (its name's entry still says it serves); a retired one's record goes.
One engine load or unload runs at a time.

When every slot is busy and a request needs another version, the least recently used busy version
is asked to *yield*: it admits no new request until its running ones end and it is evicted, so a
flood on one adapter cannot keep another adapter out of the engine for ever (``wait_turn``). The
flooded adapter's new requests wait their turn and reload it once the other has been served.

What retention must keep (``busy``) follows from the records: a version held by a request or a
gate, or draining. A version merely left loaded after its last request is not busy.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engine.base import Engine
from ..errors import EngineUnavailable
from ..terms.layout import WEIGHTS_FILE
from .records import AdapterVersion, adapter_ref

logger = logging.getLogger(__name__)


class VersionState(enum.StrEnum):
    STAGED = "staged"  # copied into the store and validated; takes no traffic yet
    PROVING = "proving"  # loaded, its eval gate running; takes no traffic
    ACTIVE = "active"  # takes requests: its name's serving version, a split's, or a kept NAME@N
    DRAINING = "draining"  # replaced or removed: finishes the requests it holds, takes no new one
    RETIRED = "retired"  # out of the engine for good; the record goes (its kept copy may stay)


_NEXT: dict[VersionState, frozenset[VersionState]] = {
    VersionState.STAGED: frozenset({VersionState.PROVING, VersionState.ACTIVE, VersionState.RETIRED}),
    VersionState.PROVING: frozenset({VersionState.ACTIVE, VersionState.RETIRED}),
    VersionState.ACTIVE: frozenset({VersionState.DRAINING, VersionState.RETIRED}),
    VersionState.DRAINING: frozenset({VersionState.RETIRED}),
    VersionState.RETIRED: frozenset(),
}


@dataclass(eq=False)
class Resident:
    """One version in the engine's keeping: its state, who holds it, its slot."""

    version: AdapterVersion
    state: VersionState
    holders: int = 0  # requests (and eval gates) using it now
    loaded: bool = False  # in an engine slot
    yielding: int = 0  # requests waiting for the slot it was asked to give up

    def move(self, to: VersionState) -> None:
        """The one place a version's state changes; a transition the life cycle does not allow is
        a bug in the registry, and says which."""
        if to is not self.state and to not in _NEXT[self.state]:
            raise AssertionError(f"{self.version.name} v{self.version.version}: {self.state} -> {to} is not allowed")
        self.state = to


class Residency:
    def __init__(self, engine: Engine, max_loaded: int, on_loaded: Callable[[float], None]) -> None:
        self._engine = engine
        self._max_loaded = max_loaded
        self._on_loaded = on_loaded
        self._residents: dict[int, Resident] = {}  # adapter_id -> its record
        self._slots: OrderedDict[int, Resident] = OrderedDict()  # loaded, least recently used first
        self._engine_lock = asyncio.Lock()  # one engine load/unload at a time
        self._went_idle = asyncio.Event()  # replaced each time it fires: "a loaded version is free now"
        self._unloads: set[asyncio.Task[None]] = set()  # drained versions being unloaded (held, not collected)

    # ------------------------------------------------------------------ reading

    def state(self, version: AdapterVersion) -> VersionState | None:
        """The version's state while it has a record (loaded, held, proving or draining)."""
        resident = self._residents.get(version.adapter_id)
        return None if resident is None else resident.state

    def is_loaded(self, version: AdapterVersion) -> bool:
        return version.adapter_id in self._slots

    def draining(self) -> list[AdapterVersion]:
        return [r.version for r in self._residents.values() if r.state is VersionState.DRAINING]

    def holders(self) -> dict[int, int]:
        """adapter_id -> requests (and gates) holding it, for versions held now."""
        return {id_: r.holders for id_, r in self._residents.items() if r.holders}

    def busy(self) -> list[AdapterVersion]:
        """Versions held by a request or a gate, or draining (the store must keep their copies); a
        version merely left loaded since its last request is not busy: retention may take it."""
        return [r.version for r in self._residents.values() if r.holders or r.state is VersionState.DRAINING]

    async def drop_deleted(self) -> None:
        """Unload idle versions whose stored copy is gone (retention took it): they would only
        hold a slot until the least recently used one is evicted."""
        for resident in list(self._slots.values()):
            if not resident.holders and not Path(resident.version.load_path).is_dir():
                await self.unload(resident.version)

    @property
    def loaded_count(self) -> int:
        return len(self._slots)

    @property
    def full(self) -> bool:
        return len(self._slots) >= self._max_loaded

    # ------------------------------------------------------------------ the life cycle

    def _record(self, version: AdapterVersion, state: VersionState) -> Resident:
        resident = self._residents.get(version.adapter_id)
        if resident is None:
            resident = self._residents[version.adapter_id] = Resident(version, state)
        return resident

    def stage(self, version: AdapterVersion) -> None:
        """A new candidate, about to be loaded and proven."""
        self._record(version, VersionState.STAGED)

    def proving(self, version: AdapterVersion) -> None:
        """Its eval gate runs now: it takes no traffic until it passes."""
        self._record(version, VersionState.STAGED).move(VersionState.PROVING)

    def activate(self, version: AdapterVersion) -> None:
        """It serves its name from now on (passed, or proven before on this base and engine: then
        it is not loaded yet, and needs no record until a request loads it)."""
        resident = self._residents.get(version.adapter_id)
        if resident is not None:
            resident.move(VersionState.ACTIVE)

    async def retire(self, version: AdapterVersion) -> None:
        """No new request gets ``version``: unload it now if idle, else once it drains."""
        resident = self._residents.get(version.adapter_id)
        if resident is None:  # evicted and idle: nothing in the engine to free
            return
        if resident.holders:
            resident.move(VersionState.DRAINING)
        else:
            await self._retire_now(resident)

    async def discard(self, version: AdapterVersion) -> None:
        """A candidate that will not serve (its load or gate failed, newer files came): out now."""
        resident = self._residents.get(version.adapter_id)
        if resident is not None:
            await self._retire_now(resident)

    async def _retire_now(self, resident: Resident) -> None:
        resident.move(VersionState.RETIRED)
        self._residents.pop(resident.version.adapter_id, None)
        await self.unload(resident.version)

    # ------------------------------------------------------------------ requests

    async def wait_turn(self, version: AdapterVersion) -> None:
        """Hold a new request for a version that is yielding its slot, until it has been evicted."""
        while (resident := self._slots.get(version.adapter_id)) is not None and resident.yielding:
            went_idle = self._went_idle
            await went_idle.wait()

    def acquire(self, version: AdapterVersion) -> None:
        """A request (or a gate) holds ``version``; one the registry leases without a record (an
        evicted serving version, a kept ``NAME@N``) serves, so its record starts active."""
        self._record(version, VersionState.ACTIVE).holders += 1

    def release(self, version: AdapterVersion) -> None:
        resident = self._residents[version.adapter_id]
        resident.holders -= 1
        if resident.holders:
            return
        if resident.state is VersionState.DRAINING:
            task = asyncio.get_running_loop().create_task(self._retire_now(resident))
            self._unloads.add(task)
            task.add_done_callback(self._unloads.discard)
        else:
            self._forget_idle(resident)  # an active version never loaded (its load failed): nothing to keep
        self._signal_idle()

    def _forget_idle(self, resident: Resident) -> None:
        """An active version out of the engine and held by none needs no record."""
        if not resident.holders and not resident.loaded and resident.state is VersionState.ACTIVE:
            self._residents.pop(resident.version.adapter_id, None)

    # ------------------------------------------------------------------ the engine

    async def ensure_loaded(self, version: AdapterVersion, *, evict: bool) -> None:
        """Make sure the engine holds ``version``, evicting the least recently used idle version if
        the engine is full. With ``evict=False`` (preloading) it only fills free slots.

        Versions already loaded return at once without the lock, so requests for them never queue
        behind a load; a load that finds every slot busy waits for one to go idle, then retries.
        """
        marked: Resident | None = None  # the busy version asked to yield its slot to this request
        try:
            while True:
                if version.adapter_id in self._slots:
                    self._slots.move_to_end(version.adapter_id)
                    return
                if marked is not None and not marked.loaded:
                    marked = None  # it yielded (to this request or another): ask again if still full
                went_idle = self._went_idle
                async with self._engine_lock:
                    if version.adapter_id in self._slots:
                        continue
                    if len(self._slots) >= self._max_loaded:
                        if not evict:
                            return
                        victim = next((r for r in self._slots.values() if not r.holders), None)
                        if victim is not None:
                            await self._engine_remove(victim)
                        elif marked is None:
                            marked = self._ask_to_yield(version)
                    if await self._load_if_room(version):
                        return
                await went_idle.wait()  # every loaded version is busy: wait for one to be released
        finally:
            if marked is not None and marked.yielding:
                marked.yielding -= 1
                self._signal_idle()

    def _ask_to_yield(self, waiting: AdapterVersion) -> Resident | None:
        """Mark the least recently used busy version (not yet yielding) to give up its slot."""
        others = [r for r in self._slots.values() if r.version.adapter_id != waiting.adapter_id]
        candidate = next((r for r in others if not r.yielding), None) or next(iter(others), None)
        if candidate is not None:  # all yielding already: wait behind the oldest
            candidate.yielding += 1
        return candidate

    async def _load_if_room(self, version: AdapterVersion) -> bool:
        """Caller holds ``_engine_lock``."""
        if len(self._slots) >= self._max_loaded:
            return False
        if not Path(version.load_path, WEIGHTS_FILE).is_file():
            raise EngineUnavailable(
                f"The stored copy of adapter {version.name} v{version.version} is gone; publish it again."
            )
        started = time.perf_counter()
        await self._engine.add_adapter(adapter_ref(version))
        self._on_loaded(time.perf_counter() - started)
        resident = self._record(version, VersionState.ACTIVE)
        resident.loaded = True
        self._slots[version.adapter_id] = resident
        return True

    async def unload(self, version: AdapterVersion) -> None:
        """Take ``version`` out of the engine (its durable copy stays, under the retention rule)."""
        async with self._engine_lock:
            resident = self._slots.get(version.adapter_id)
            if resident is not None:
                await self._engine_remove(resident)
        self._signal_idle()

    async def _engine_remove(self, resident: Resident) -> None:
        """Caller holds ``_engine_lock``."""
        del self._slots[resident.version.adapter_id]
        resident.loaded = False
        if resident.yielding:
            resident.yielding = 0
            self._signal_idle()  # its held-back requests may go (and reload it in turn)
        self._forget_idle(resident)
        try:
            await self._engine.remove_adapter(adapter_ref(resident.version))
        except Exception:
            logger.exception("could not unload adapter %s (id %d)", resident.version.name, resident.version.adapter_id)

    def _signal_idle(self) -> None:
        self._went_idle.set()
        self._went_idle = asyncio.Event()

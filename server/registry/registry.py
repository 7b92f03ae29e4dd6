"""Which adapters exist, which version of each is live, and which versions the engine holds.

The adapters directory is the source of truth; ``sync(name)`` makes the registry agree with what
``<dir>/<name>`` holds now (the watcher, the admin API and start-up all call it). It is idempotent:
files are fingerprinted (name, size, mtime), so repeated events for unchanged files do nothing, and
a bad file is reported once, not once per event.

Every change is all-or-nothing. A version is copied into the durable store (``store.py``),
validated there (headers, then a dry-run load: ``dry_run.py``), loaded into the engine, put
through its eval gate when it carries one (the ``prove`` step it is given), and only then made
active and *proven*; a failure at any step leaves the directory, the active version and the store as they
were, so "ready" means "a request will succeed". The version it replaces is retired: unloaded at
once if idle, else *draining* until its last request releases it.

A traffic split (``splits.py``) lives in the adapter's directory too, and is applied in the same
step as the version it comes with, so a canary never takes all traffic, not even for one request.

``install`` (the admin API's load) and ``rollback`` go the other way round: the version is proven
first, and only then written into the directory. At start, a name whose directory files are
refused or half-written is served from its newest proven version, and says so.

Which versions the engine holds (at most ``max_loaded``, least recently used evicted), which
requests hold them, and each version's life-cycle state (staged, proving, active, draining,
retired) are ``residency.py``'s; a name's state is read from its entry (``records.py``). Why a
version arrives (``Arrival``: the directory, an install, a rollback, a restore) decides how it is
adopted.

This module is past the ~400 lines the rest keep to, on purpose: every change of what a name
serves happens here, under that name's lock, and the lock discipline is easier to check in one
file than across several.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.base import Engine
from ..errors import ModelNotFound
from ..terms.address import split_address
from ..terms.layout import README_FILE
from .addressing import KeptVersions
from .base_model import BaseModelSpec
from .bases import Bases, ServedBase
from .gate_spec import Gate, GateOutcome
from .names import is_valid_name
from .publish import publish_adapter
from .records import AdapterEntry, AdapterInfo, AdapterVersion, Fingerprint, Lease, fingerprint
from .residency import Residency
from .splits import Split, split_in, write_split_file
from .staging import check_stored, stage
from .store import StoredVersion, VersionStore
from .validation import (
    AdapterIncomplete,
    AdapterRejected,
    check_inside,
    declared_base,
    inspect_adapter,
    recorded_fingerprint,
)

logger = logging.getLogger(__name__)

# Top-level files that may live in the adapters directory without being reported.
IGNORED_FILES = {README_FILE}


@dataclass
class RegistryHooks:
    """Callbacks for metrics, so the registry does not depend on Prometheus."""

    rejected: Callable[[str], None] = lambda reason: None
    loaded: Callable[[float], None] = lambda seconds: None
    swapped: Callable[[], None] = lambda: None
    gated: Callable[[GateOutcome], None] = lambda outcome: None


class Arrival(enum.Enum):
    """Why a version is being adopted, which decides how (``_adopt``)."""

    DIRECTORY = "directory"  # new files in the directory: gated in the background, split from the files
    INSTALL = "install"  # the admin API's load: proven first, then written into the directory
    ROLLBACK = "rollback"  # a kept version again: written back into the directory
    RESTORE = "restore"  # start-up: the newest proven version, while the directory's files are refused

    @property
    def publishes(self) -> bool:
        return self in (Arrival.INSTALL, Arrival.ROLLBACK)


# A version taken into the store: its durable copy, what validation read of it, the base it is for.
Staged = tuple[StoredVersion, AdapterInfo, ServedBase]
Hold = Callable[["AdapterVersion"], AbstractAsyncContextManager[None]]
# The eval gate's run, given by the gateway (``server.evaluation.proving``): the gate, the candidate,
# the version serving now, and ``held`` to keep a version loaded while it is asked. Injected, so the
# registry serves versions without knowing how they are judged (as ``RegistryHooks`` keeps metrics out).
Prove = Callable[[Gate, AdapterVersion, "AdapterVersion | None", Hold], Awaitable[GateOutcome]]


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
        keep_versions: int = 5,
        base_spec: BaseModelSpec | None = None,
        hooks: RegistryHooks | None = None,
        prove: Prove | None = None,
        base_root: str | None = None,
    ) -> None:
        self._engine = engine
        self.base_model_id = base_model_id
        self.adapters_dir = adapters_dir
        # The served bases (``bases.py``): the default one now, others as the engine brings them.
        self.bases = Bases([ServedBase(base_model_id, base_root or base_model_id, base_spec)])
        self.store = VersionStore(adapters_dir, keep_versions)
        self._limits: dict[str, Any] = {"max_lora_rank": max_lora_rank, "max_bytes": max_adapter_bytes}  # validation's
        self._hooks = hooks or RegistryHooks()
        self._residency = Residency(engine, max_loaded, self._hooks.loaded)
        self._prove_step = prove
        self._entries: dict[str, AdapterEntry] = {}
        self._ids = itertools.count(1)
        self._kept = KeptVersions(self.store, self._inspect_kept, lambda: next(self._ids))
        # Held only while in use: a lock disappears with its last holder, so names that come and go
        # (a directory churned by a sync tool) do not grow this map forever.
        self._name_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._scan_lock = asyncio.Lock()  # the watcher's periodic re-scan never overlaps another scan
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

    @property
    def base_spec(self) -> BaseModelSpec | None:
        """The default base's names, shapes and fingerprint (None until its config is read)."""
        default = self.bases.default
        return default.spec if default is not None else None

    @base_spec.setter
    def base_spec(self, spec: BaseModelSpec | None) -> None:
        default = self.bases.default
        assert default is not None
        self.bases.replace(dataclasses.replace(default, spec=spec))

    def base_of(self, path: Path) -> ServedBase:
        """The served base the adapter in ``path`` was trained on (``bases.py``), or
        ``AdapterRejected`` (base_mismatch) naming what it declares and what is served."""
        declared, recorded = declared_base(path), recorded_fingerprint(path)
        base = self.bases.of_adapter(declared, recorded)
        if base is not None:
            return base
        if len(self.bases) == 1:  # the default base's own check says it best (and names --base-model-alias)
            default = self.bases.default
            assert default is not None
            if default.spec is not None:
                inspect_adapter(path, **self._limits, base=default.spec)
        raise AdapterRejected(
            "base_mismatch",
            f"{path.name}: trained on {declared!r}, which no engine here serves (serving "
            f"{self.bases.describe()}); it is served once one does, or start the gateway with "
            f"--base-model-alias {declared!r}={self.base_model_id} if that is the same model under another name.",
        )

    def inspect(self, path: Path) -> AdapterInfo:
        """The header checks a version passes before it is copied in (format, rank, size, shapes
        against its base): what a remote source's files must pass before they are published."""
        return self._inspect_kept(path)[0]

    def _inspect_kept(self, path: Path) -> tuple[AdapterInfo, str]:
        """``inspect``, and the id of the base the adapter is for."""
        base = self.base_of(path)
        return inspect_adapter(path, **self._limits, base=base.spec), base.id

    def add_base(self, base: ServedBase) -> bool:
        """A base the engine serves now (an upstream of a new base came up): True when it is news,
        and adapters refused because no engine served their base are then looked at again."""
        if not self.bases.add(base):
            return False
        logger.info("serving base model %s (%s)", base.id, base.root)
        for entry in self._entries.values():
            if entry.rejected_reason == "base_mismatch":
                entry.checked = False  # the next sync (the watcher's rescan, or now) takes it again
        return True

    def is_loaded(self, version: AdapterVersion) -> bool:
        return self._residency.is_loaded(version)

    def draining(self) -> list[AdapterVersion]:
        return self._residency.draining()

    def holders(self) -> dict[int, int]:
        """adapter_id -> requests (and gates) holding that version now."""
        return self._residency.holders()

    @property
    def loaded_count(self) -> int:
        return self._residency.loaded_count

    @asynccontextmanager
    async def lease(self, model: str, user: str | None = None) -> AsyncIterator[Lease]:
        """Hold ``model`` (base id, adapter name, or a version of one: ``addressing.py``) for one
        request, loading it if it was evicted. A name under a traffic split (``splits.py``) is
        the version ``user`` is assigned to."""
        if model in self.bases:
            yield Lease(model, None)
            return
        name, ref = split_address(model)
        entry = self._entries.get(name)
        if entry is None or entry.active is None:
            raise ModelNotFound(model)
        split = entry.split if ref is None else None
        if split is not None:
            ref = str(split.assign(user))
        if ref is None or ref == str(entry.active.version):
            version = entry.active
        else:
            version = await self._kept.resolve(entry, ref, model)
        await self._residency.wait_turn(version)  # a version yielding its slot takes no new request
        self._residency.acquire(version)
        try:
            await self._residency.ensure_loaded(version, evict=True)
            yield Lease(model, version, split)
        finally:
            self._residency.release(version)

    # ------------------------------------------------------------------ following the directory

    async def scan(self) -> None:
        """Bring every name in the directory (and every name no longer there) up to date.

        The first scan (start-up) also serves the newest proven version of any name whose files
        in the directory are refused or half-written, so a restart never takes down a model.
        """
        async with self._scan_lock:
            names = set(self._entries)
            if self.adapters_dir.is_dir():
                names |= {p.name for p in self.adapters_dir.iterdir() if not p.name.startswith(".")}
            else:
                logger.warning("adapters directory %s does not exist; serving the base model only", self.adapters_dir)
            starting = not self.scan_complete
            if starting:
                await asyncio.to_thread(self.store.clean)
                self.scan_total, self.scan_done = len(names), 0
            for name in sorted(names):
                entry = await self.sync(name)
                if starting and entry is not None and entry.active is None and is_valid_name(name):
                    await self._restore(entry)
                self.scan_done += starting
            self.scan_complete = True

    async def preload(self) -> None:
        """Load registered adapters into free engine slots, without evicting anything."""
        for version in self.active_versions():
            if self._residency.full:
                return
            try:
                await self._residency.ensure_loaded(version, evict=False)
            except Exception:
                logger.exception("preloading %s failed", version.name)

    async def sync(self, name: str, *, force: bool = False) -> AdapterEntry | None:
        """Make the registry agree with ``<dir>/<name>`` as it is now; return the entry, if any."""
        if name.startswith(".") or "/" in name or "\\" in name:
            return None  # staging entries, and anything that is not a single path component
        async with self._lock(name):
            path = self.adapters_dir / name
            if not (path.exists() or path.is_symlink()):
                await self._unregister(name)
                return None
            if path.is_file() and name in IGNORED_FILES:
                return None
            entry = self._entries.setdefault(name, AdapterEntry(name))
            current = fingerprint(path)
            if entry.checked and current == entry.fingerprint and not force:
                return entry
            entry.fingerprint, entry.checked = current, True
            self._cancel_gate(entry)  # a gate still running judged files that are no longer there
            try:
                if not is_valid_name(name):
                    raise AdapterRejected(
                        "bad_name", f"{name!r} is not a valid adapter name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})."
                    )
                if current is None:
                    raise AdapterRejected("not_a_directory", f"{name}: not an adapter directory.")
                await asyncio.to_thread(check_inside, path, self.adapters_dir)
                staged = await asyncio.to_thread(self._stage, name, path, current)
                await self._adopt(entry, staged, Arrival.DIRECTORY, split_from=path)
            except AdapterIncomplete as exc:
                entry.last_error, entry.rejected_reason, entry.checked = (
                    str(exc),
                    None,
                    False,
                )  # looked at again by the next rescan
                logger.debug("adapter %s incomplete: %s", name, exc)
            except AdapterRejected as exc:
                self._reject(entry, exc)
            except Exception as exc:  # unreadable files (permissions, I/O): refused, never a crash of the watcher
                self._reject(
                    entry,
                    AdapterRejected(
                        "unreadable", f"{name}: its files could not be read ({type(exc).__name__}: {exc})."
                    ),
                )
            return entry

    # ------------------------------------------------------------------ deliberate changes

    async def install(self, name: str, source: Path) -> AdapterEntry:
        """Prove the adapter in ``source`` (validated, loaded), and only then write it into the
        directory as ``name`` and serve it. Raises ``AdapterRejected``/``AdapterIncomplete``, in
        which case neither the directory nor what is served changed."""
        async with self._lock(name):
            entry = self._entries.get(name) or AdapterEntry(name)
            stored = await asyncio.to_thread(self._stage, name, source, fingerprint(source))
            await self._adopt(entry, stored, Arrival.INSTALL, split_from=source)
            self._entries[name] = entry
            return entry

    async def rollback(self, name: str, number: int | None = None) -> AdapterEntry:
        """Serve a kept version of ``name`` again (``number``, or the newest one unlike the version
        served now) and write its files back into the directory."""
        async with self._lock(name):
            entry = self._entries.get(name) or AdapterEntry(name)
            serving = Path(entry.active.load_path) if entry.active else None
            try:
                choice = await asyncio.to_thread(self.store.rollback_target, name, number, serving)
            except LookupError as exc:
                raise ModelNotFound(name, exc.args[0]) from None
            await self._adopt(entry, await asyncio.to_thread(self._check_stored, choice), Arrival.ROLLBACK)
            self._entries[name] = entry
            return entry

    async def end_split(self, name: str) -> AdapterEntry:
        """Stop splitting ``name``'s traffic: every request goes to the version the directory holds."""
        async with self._lock(name):
            entry = self._entries.get(name)
            if entry is None or entry.active is None:
                raise ModelNotFound(name)
            await asyncio.to_thread(write_split_file, self.adapters_dir / name, None)
            entry.fingerprint, entry.split = fingerprint(self.adapters_dir / name), None
            self.revision += 1
            logger.info("adapter %s: the traffic split ended; v%d takes all traffic", name, entry.active.version)
            return entry

    async def _restore(self, entry: AdapterEntry) -> None:
        """Serve the newest proven version that still loads; the directory's files stay as they are."""
        async with self._lock(entry.name):
            refused, reason = entry.last_error, entry.rejected_reason
            for kept in await asyncio.to_thread(self.store.versions, entry.name):
                try:
                    await self._adopt(entry, await asyncio.to_thread(self._check_stored, kept), Arrival.RESTORE)
                except (AdapterRejected, AdapterIncomplete) as exc:
                    logger.warning(
                        "adapter %s: kept version %d cannot be served either: %s", entry.name, kept.number, exc
                    )
                    continue
                entry.restored, entry.last_error, entry.rejected_reason = True, refused, reason
                logger.warning(
                    "adapter %s: the files in %s are not served (%s); serving the last good version %d "
                    "(sha256 %s) from %s",
                    entry.name,
                    self.adapters_dir,
                    refused,
                    kept.number,
                    kept.sha256[:12],
                    kept.path.parent,
                )
                return

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._name_locks.get(name)
        if lock is None:
            lock = self._name_locks[name] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------------ taking a version

    def _stage(self, name: str, source: Path, files: Fingerprint | None) -> Staged:
        base = self.base_of(source)
        return (*stage(self.store, name, source, files, self._limits, base.spec), base)

    def _check_stored(self, kept: StoredVersion) -> Staged:
        base = self.base_of(kept.path)
        return (*check_stored(kept, self._limits, base.spec), base)

    async def _adopt(
        self,
        entry: AdapterEntry,
        staged: Staged,
        arrival: Arrival,
        split_from: Path | None = None,
    ) -> None:
        """Load the staged version, prove it, write it into the directory when ``arrival`` says
        so, and serve it under the traffic split in ``split_from`` (none: it takes all traffic).
        Caller holds the name's lock. On failure the unproven copy goes and nothing else changes.

        What the directory brings (``Arrival.DIRECTORY``: the watcher, the start-up scan, a reload)
        runs its eval gate as a task of its own and this returns at once: a gate whose judge hangs
        holds neither the scan, nor readiness, nor any other adapter. The version serves (or is
        rejected) when its gate ends; newer files for the name cancel it."""
        stored, info, base = staged
        split, rewrite = await asyncio.to_thread(self._split_of, entry, stored.number, split_from)
        if split is not None:
            await asyncio.to_thread(self._check_split_base, entry.name, split, base)
        version = self._version_of(entry, stored, info, base)
        proven_here = stored.proven and stored.proven_on == self._proof(base)  # loads on demand
        if version is not entry.active and not proven_here:
            await self._load_candidate(version, stored)
            if info.gate is not None and arrival is Arrival.DIRECTORY:
                self._cancel_gate(entry)
                entry.gating = version.version
                entry.gate_task = asyncio.create_task(
                    self._gate_then_serve(entry, (stored, info, base), version, split, rewrite),
                    name=f"eval-gate-{entry.name}",
                )
                return
            gate = await self._run_gate(entry, stored, version) if info.gate is not None else None
            await self._prove(stored, gate, base)
        await self._serve(entry, stored, version, split, rewrite, publish=arrival.publishes)

    def _version_of(
        self, entry: AdapterEntry, stored: StoredVersion, info: AdapterInfo, base: ServedBase
    ) -> AdapterVersion:
        """The version a staged copy becomes: the one serving when its files are the same again (a
        re-publish, a rollback's files), else a new one under an id never used before."""
        if entry.active is not None and entry.active.load_path == str(stored.path):
            return entry.active
        return AdapterVersion(
            name=entry.name,
            adapter_id=next(self._ids),
            version=stored.number,
            path=str((self.adapters_dir / entry.name).absolute()),
            load_path=str(stored.path),
            info=info,
            created=int(time.time()),
            sha256=stored.sha256,
            base=base.id,
        )

    async def _load_candidate(self, version: AdapterVersion, stored: StoredVersion) -> None:
        """Stage ``version`` and load it; a failure discards it (and its unproven copy) and refuses."""
        self._residency.stage(version)
        try:
            await self._residency.ensure_loaded(version, evict=True)
        except Exception as exc:
            self.store.discard(stored)
            await self._residency.discard(version)
            if isinstance(exc, AdapterRejected):
                raise
            raise AdapterRejected(
                "load_failed", f"{version.name}: the engine could not load it ({type(exc).__name__}: {exc})."
            ) from exc

    async def _serve(
        self,
        entry: AdapterEntry,
        stored: StoredVersion,
        version: AdapterVersion,
        split: Split | None,
        rewrite: bool,
        publish: bool,
    ) -> None:
        """Make a proven ``version`` the one ``entry`` serves (the caller holds the name's lock)."""
        name = entry.name
        if publish:
            await asyncio.to_thread(publish_adapter, stored.path, name, self.adapters_dir)  # the copy has no split
        if split is not None and (rewrite or publish):  # a canary, now in explicit form: a restart need not guess
            await asyncio.to_thread(write_split_file, self.adapters_dir / name, split)
        if publish or rewrite:
            entry.fingerprint, entry.checked = fingerprint(self.adapters_dir / name), True
        if split != entry.split:
            self.revision += 1
            if split is not None:
                logger.info("adapter %s: traffic split %s (baseline v%d)", name, dict(split.weights), split.baseline)
        self._residency.activate(version)
        previous, entry.active, entry.split = entry.active, version, split
        entry.last_error, entry.rejected_reason, entry.restored = None, None, False
        if previous is not version:
            self.revision += 1
            logger.info(
                "adapter %s v%d ready (id %d, sha256 %s)",
                name,
                version.version,
                version.adapter_id,
                version.sha256[:12],
            )
            if previous is not None:
                self._hooks.swapped()
                await self._residency.retire(previous)

    async def _gate_then_serve(
        self, entry: AdapterEntry, staged: Staged, version: AdapterVersion, split: Split | None, rewrite: bool
    ) -> None:
        """A background gate (``_adopt``): its verdict, then, under the name's lock, serve or refuse."""
        stored, _, base = staged
        try:
            gate = await self._run_gate(entry, stored, version)
        except AdapterRejected as exc:
            async with self._lock(entry.name):
                if entry.gate_task is asyncio.current_task():
                    entry.gate_task = None
                    self._reject(entry, exc)
            return
        except asyncio.CancelledError:  # newer files, a removal or shutdown: this candidate goes
            if entry.gating != version.version:  # unless the newer files are this very copy again
                self.store.discard(stored)
            await self._residency.discard(version)
            raise
        async with self._lock(entry.name):
            if entry.gate_task is not asyncio.current_task():  # superseded while the verdict came in
                self.store.discard(stored)
                await self._residency.discard(version)
                return
            entry.gate_task = None
            try:
                await self._prove(stored, gate, base)
                await self._serve(entry, stored, version, split, rewrite, publish=False)
            except Exception as exc:
                await self._residency.discard(version)
                self._reject(entry, AdapterRejected("unreadable", f"{entry.name}: {type(exc).__name__}: {exc}."))

    async def _prove(self, stored: StoredVersion, gate: GateOutcome | None, base: ServedBase) -> None:
        """Mark ``stored`` proven (with its gate's outcome), apply retention, and unload what it took."""
        summary = gate.summary() if gate else None
        await asyncio.to_thread(self.store.prove, stored, self._protected(), self._proof(base), summary)
        await self._residency.drop_deleted()

    def _cancel_gate(self, entry: AdapterEntry) -> None:
        task, entry.gate_task = entry.gate_task, None
        if task is not None and not task.done():
            task.cancel()

    async def stop_gates(self) -> None:
        """Cancel every gate still running (shutdown): their candidates are discarded."""
        tasks = [e.gate_task for e in self._entries.values() if e.gate_task is not None]
        for entry in self._entries.values():
            self._cancel_gate(entry)
        await asyncio.gather(*tasks, return_exceptions=True)

    @asynccontextmanager
    async def held(self, version: AdapterVersion) -> AsyncIterator[None]:
        """``version`` loaded (evicting an idle one if need be) and kept so while the block runs:
        what a gate asks it must not be evicted by another name's load mid-gate."""
        self._residency.acquire(version)
        try:
            await self._residency.ensure_loaded(version, evict=True)
            yield
        finally:
            self._residency.release(version)

    async def _run_gate(self, entry: AdapterEntry, stored: StoredVersion, version: AdapterVersion) -> GateOutcome:
        """Run the version's eval gate against it and the version serving now (the ``prove`` step the
        gateway gave, ``server.evaluation.proving``); a failure discards the candidate and raises,
        and the serving version goes on serving. Without a prove step a gate cannot pass."""
        gate = version.info.gate
        assert gate is not None
        logger.info("adapter %s v%d: running its eval gate", entry.name, version.version)
        entry.gating = version.version
        self._residency.proving(version)
        try:
            if self._prove_step is None:
                why = "this registry runs no eval gates (no prove step)"
                outcome = GateOutcome(version.version, version.sha256, {}, failures=(why,))
            else:
                outcome = await self._prove_step(gate, version, entry.active, self.held)
        finally:
            if entry.gating == version.version:
                entry.gating = None
        entry.gate = outcome
        self._hooks.gated(outcome)
        if not outcome.passed:
            self.store.discard(stored)
            await self._residency.discard(version)
            raise AdapterRejected("eval_gate_failed", f"{entry.name} v{version.version}: {outcome.describe()}.")
        logger.info("adapter %s v%d: %s", entry.name, version.version, outcome.describe())
        return outcome

    def _split_of(self, entry: AdapterEntry, number: int, source: Path | None) -> tuple[Split | None, bool]:
        serving = entry.active.version if entry.active is not None else None
        return split_in(
            entry.name,
            source,
            entry.split,
            lambda: {v.number for v in self.store.versions(entry.name)},
            serving,
            number,
        )

    def _proof(self, base: ServedBase) -> tuple[tuple[str, str], ...]:
        """What a successful load proves an adapter against: its base, this kind of engine."""
        return (("base", base.fingerprint or "unknown"), ("engine", type(self._engine).__name__))

    def _check_split_base(self, name: str, split: Split, base: ServedBase) -> None:
        """A traffic split compares versions of one base: a version on another base is refused."""
        for number in split.versions:
            path = self.store.path_of(name, number)
            other = self.bases.of_adapter(declared_base(path), recorded_fingerprint(path)) if path.is_dir() else base
            if other is None or other.id != base.id:
                raise AdapterRejected(
                    "split_across_bases",
                    f"{name}: its traffic split names v{number}, which was trained on another base than "
                    f"{base.id!r}; a split compares versions of one base.",
                )

    def _protected(self) -> set[Path]:
        """Copies the store must not delete (README: retention): the newest ``--keep-versions`` and
        pinned ones are the store's own rule; besides them, what serves, what a split names, and
        what answers or drains a request right now. A version left loaded after a ``NAME@N``
        request or a split is not among them: it goes, and is unloaded."""
        versions = [*self.active_versions(), *self._residency.busy()]
        splits = [self.store.path_of(e.name, n) for e in self._entries.values() if e.split for n in e.split.versions]
        return {Path(v.load_path) for v in versions} | set(splits)

    def _reject(self, entry: AdapterEntry, exc: AdapterRejected) -> None:
        logger.warning("adapter rejected: %s%s", exc, " (the previous version keeps serving)" if entry.active else "")
        entry.last_error, entry.rejected_reason = str(exc), exc.reason
        self._hooks.rejected(exc.reason)

    async def _unregister(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._cancel_gate(entry)
        self._kept.forget(name)
        self.revision += 1
        if entry is not None and entry.active is not None:
            logger.info("adapter %s removed (its kept versions stay in %s)", name, self.store.root / name)
            await self._residency.retire(entry.active)

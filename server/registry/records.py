"""What the registry records: frozen versions it hands out, and the mutable entry per name that it
alone changes (state transitions happen in ``registry.py`` only)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.base import AdapterRef

if TYPE_CHECKING:
    from .gate_spec import Gate, GateOutcome
    from .profile import AdapterProfile
    from .splits import Split


class AdapterState(enum.StrEnum):
    """A name's state (``AdapterEntry.state``); each of its versions has its own
    (``residency.VersionState``: staged, proving, active, draining, retired)."""

    READY = "ready"  # an active version serves requests
    INCOMPLETE = "incomplete"  # files still arriving; nothing served yet
    GATING = "gating"  # a first version's eval gate is running; nothing served yet
    REJECTED = "rejected"  # the files are invalid; nothing served


@dataclass(frozen=True)
class AdapterInfo:
    """What validation read from an adapter's files (headers only, never the weights)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str | None
    size_bytes: int
    profile: AdapterProfile | None = None  # profile.json, when the adapter has one
    gate: Gate | None = None  # eval.json and its test set, when the adapter has a gate


@dataclass(frozen=True)
class AdapterVersion:
    """One version of a named adapter. ``adapter_id`` is never reused, even for the same name,
    so an engine can hold the old and the new version side by side during a swap; ``version`` is
    the number of its durable copy (see ``server.registry.store``), stable across restarts."""

    name: str
    adapter_id: int
    version: int
    path: str  # <adapters_dir>/<name>, as users know it
    load_path: str  # this version's durable copy, which the engine loads
    info: AdapterInfo
    created: int
    sha256: str  # of the weights that were validated and loaded
    base: str = ""  # the served base it belongs to (registry.bases); "" with one base, in tests


@dataclass(frozen=True)
class Lease:
    """A request's hold on the model it asked for; ``adapter`` is None for the base model."""

    model: str
    adapter: AdapterVersion | None
    split: Split | None = None  # the traffic split that chose ``adapter``, if one did

    @property
    def base(self) -> str:
        """The base model that answers: the adapter's, or the base asked for by name."""
        return self.model if self.adapter is None else self.adapter.base

    @property
    def ref(self) -> AdapterRef | None:
        return None if self.adapter is None else adapter_ref(self.adapter)

    @property
    def profile(self) -> AdapterProfile | None:
        """The adapter's request defaults (its ``profile.json``); None for the base model."""
        return None if self.adapter is None else self.adapter.info.profile


def adapter_ref(version: AdapterVersion) -> AdapterRef:
    """What the engine is told of a version: its durable copy, under an id never reused."""
    return AdapterRef(version.name, version.adapter_id, version.load_path, version.base)


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint | None:
    """(file, size, mtime) of each file in ``path``; None when ``path`` is not a directory."""
    try:
        return tuple(sorted((f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in path.iterdir() if f.is_file()))
    except (FileNotFoundError, NotADirectoryError):
        return None


@dataclass
class AdapterEntry:
    """Everything known about one adapter name (mutable; owned by the registry)."""

    name: str
    active: AdapterVersion | None = None
    last_error: str | None = None  # why the directory's current files are not what is served
    rejected_reason: str | None = None
    fingerprint: Fingerprint | None = None  # of the files last looked at, good or bad
    checked: bool = False
    restored: bool = False  # active came from the store because the directory's files were refused
    gate: GateOutcome | None = None  # the last eval gate run for this name (passed or failed)
    gating: int | None = None  # the version whose eval gate is running now
    gate_task: asyncio.Task[None] | None = field(default=None, repr=False)  # that gate, run in the background
    split: Split | None = None  # shares of traffic between versions (canary, A/B); None: all to active

    @property
    def state(self) -> AdapterState:
        """What the name's state is, read from what it holds (never set, so it cannot disagree)."""
        if self.active is not None:
            return AdapterState.READY
        if self.gate_task is not None:
            return AdapterState.GATING
        return AdapterState.REJECTED if self.rejected_reason is not None else AdapterState.INCOMPLETE

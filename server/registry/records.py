"""Frozen records the registry hands out; the registry alone decides state transitions."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AdapterState(str, enum.Enum):
    READY = "ready"  # an active version serves requests
    INCOMPLETE = "incomplete"  # files still arriving; nothing served yet
    REJECTED = "rejected"  # the files are invalid; nothing served


@dataclass(frozen=True)
class AdapterInfo:
    """What validation read from an adapter's files (headers only, never the weights)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str | None
    size_bytes: int


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

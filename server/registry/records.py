"""Frozen records the registry hands out; the registry alone decides state transitions."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AdapterState(str, enum.Enum):
    VALIDATING = "validating"
    LOADING = "loading"
    READY = "ready"
    REJECTED = "rejected"
    DRAINING = "draining"


@dataclass(frozen=True)
class AdapterInfo:
    """What validation read from an adapter's files (headers only, never the weights)."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model: str | None
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class AdapterVersion:
    """One loaded version of a named adapter. ``adapter_id`` is never reused, even for the same name."""

    name: str
    adapter_id: int
    version: int
    path: str
    info: AdapterInfo
    created: int

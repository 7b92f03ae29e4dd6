"""Taking a version's files: a durable copy, checked, or a kept copy checked again (in a thread).

Headers are checked on the source first, so nothing is copied for a half-written or bad adapter;
the copy is then what is hashed, validated and loaded. Files whose digest, config and profile match
a proven version are that version again (no second copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..terms.layout import CONFIG_FILE, PROFILE_FILE, WEIGHTS_FILE
from .base_model import BaseModelSpec
from .dry_run import check_adapter
from .records import AdapterInfo, Fingerprint, fingerprint
from .store import StoredVersion, VersionStore
from .validation import AdapterIncomplete, AdapterRejected, file_sha256, inspect_adapter


def stage(
    store: VersionStore,
    name: str,
    source: Path,
    files: Fingerprint | None,
    limits: dict[str, Any],
    base: BaseModelSpec | None,
) -> tuple[StoredVersion, AdapterInfo]:
    """(a durable copy of ``source``, what validation read of it); ``files`` is the fingerprint
    the caller saw, so files changing meanwhile are caught (``AdapterIncomplete``)."""
    inspect_adapter(source, **limits, base=base)
    digest = file_sha256(source / WEIGHTS_FILE)
    profile = source / PROFILE_FILE
    kept = store.find(
        name, digest, (source / CONFIG_FILE).read_bytes(), profile.read_bytes() if profile.is_file() else None
    )
    if kept is not None:
        return kept, check_adapter(kept.path, base, **limits)
    stored = store.copy_in(name, source, digest)
    try:
        if (files is not None and fingerprint(source) != files) or file_sha256(stored.path / WEIGHTS_FILE) != digest:
            raise AdapterIncomplete(f"{name}: files changed while being registered.")
        return stored, check_adapter(stored.path, base, **limits)
    except BaseException:
        store.discard(stored)
        raise


def check_stored(
    kept: StoredVersion, limits: dict[str, Any], base: BaseModelSpec | None
) -> tuple[StoredVersion, AdapterInfo]:
    """A kept copy, checked again before it serves (a rollback, a restore): unchanged, still valid."""
    if file_sha256(kept.path / WEIGHTS_FILE) != kept.sha256:
        raise AdapterRejected("corrupt_copy", f"{kept.name}: the kept copy of version {kept.number} was modified.")
    return kept, check_adapter(kept.path, base, **limits)

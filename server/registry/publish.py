"""Put an adapter into the watched directory atomically, or take one out.

Readers (our watcher, vLLM's filesystem resolver, NIM) must never see half an adapter. Files are
copied into a staging directory inside the adapters directory (``.staging-*``: same file system,
ignored by the watcher), flushed to disk, then moved into place with one rename. Replacing an
existing adapter swaps the two directories with ``renameat2(RENAME_EXCHANGE)`` where Linux offers
it, so ``<dir>/<name>`` is never missing; elsewhere the old directory is renamed away first, and the
watcher's settle delay covers that instant.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import AdapterRejected
from ..terms.layout import CONFIG_FILE, EXTRA_FILES, STAGING_PREFIX, WEIGHTS_FILE
from .durable import fsync_path
from .gate_spec import gate_files
from .names import is_valid_name


def publish_adapter(
    source: str | Path,
    name: str,
    adapters_dir: str | Path,
    *,
    validate: Callable[[Path], object] | None = None,
) -> Path:
    """Publish the adapter in ``source`` as ``name``; if ``name`` exists this is its next version.

    ``validate`` (e.g. the registry's full check against the served base) runs on the staged copy;
    if it raises, nothing in the live directory changes.
    """
    if not is_valid_name(name):
        raise AdapterRejected("bad_name", f"{name!r} is not a valid adapter name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}}).")
    source, root = Path(source), Path(adapters_dir)
    if not (source / CONFIG_FILE).is_file() or not (source / WEIGHTS_FILE).is_file():
        raise AdapterRejected("missing_files", f"{source} must contain {CONFIG_FILE} and {WEIGHTS_FILE}.")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for file in (CONFIG_FILE, WEIGHTS_FILE, *EXTRA_FILES, *gate_files(source)):
            if (source / file).is_file():
                shutil.copyfile(source / file, staging / file)
                fsync_path(staging / file)
        if validate is not None:
            validate(staging)
        target = root / name
        if target.exists():
            if not _exchange(staging, target):
                trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
                os.rename(target, trash)
                os.rename(staging, target)
                staging = trash
        else:
            os.rename(staging, target)
        fsync_path(root)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_adapter(name: str, adapters_dir: str | Path) -> bool:
    """Delete ``<dir>/<name>`` in one step (rename away, then remove). False if it did not exist."""
    if not is_valid_name(name):
        raise AdapterRejected("bad_name", f"{name!r} is not a valid adapter name.")
    root = Path(adapters_dir)
    target = root / name
    if not (target.exists() or target.is_symlink()):
        return False
    trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
    os.rename(target, trash)
    if trash.is_symlink() or trash.is_file():
        trash.unlink()
    else:
        shutil.rmtree(trash, ignore_errors=True)
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0

"""Per-version snapshots of adapter files, so a version loads exactly what was validated.

Adapters are loaded lazily (and reloaded after LRU eviction), possibly long after validation; by
then ``<dir>/<name>`` may hold other files, even invalid ones. At registration each version's files
are hard-linked into ``<dir>/.versions/<process>/<adapter_id>/<name>/``: no bytes are copied and no
weights are read, and replacing the live files by rename (``lora-gateway adapters publish``,
rsync, ``mv``) leaves the snapshot untouched. A file overwritten in place (``cp`` onto an existing
file rewrites the same inode) shows up as a changed snapshot fingerprint and is never loaded.

Where hard links are impossible (another file system), files are copied instead. Each process
keeps its own namespace, removed at shutdown, so gateways sharing one volume never touch each
other's snapshots; namespaces left by crashed processes are removed after a week.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = ".versions"
_STALE_AFTER_S = 7 * 24 * 3600


class Snapshots:
    def __init__(self, adapters_dir: Path) -> None:
        self._root = adapters_dir / SNAPSHOT_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def take(self, source: Path, adapter_id: int) -> Path:
        """Link every regular file of ``source`` into a new snapshot directory and return it."""
        target = self._root / str(adapter_id) / source.name
        target.mkdir(parents=True)
        for file in source.iterdir():
            if not file.is_file() or file.is_symlink():
                continue
            try:
                os.link(file, target / file.name)
            except OSError:
                shutil.copy2(file, target / file.name)
        return target

    def discard(self, snapshot: Path) -> None:
        shutil.rmtree(snapshot.parent, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)

    def remove_stale(self) -> None:
        """Remove namespaces of processes that stopped without cleaning up (a week untouched)."""
        parent = self._root.parent
        if not parent.is_dir():
            return
        cutoff = time.time() - _STALE_AFTER_S
        for namespace in parent.iterdir():
            if namespace != self._root and namespace.stat().st_mtime < cutoff:
                logger.info("removing stale adapter snapshots %s", namespace)
                shutil.rmtree(namespace, ignore_errors=True)

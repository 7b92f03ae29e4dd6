"""Follow the adapters directory while the server runs (watchfiles), and resync now and then.

Events are grouped by the top-level name they touch and handled once that name has been quiet for
``settle`` seconds, so a copy that writes many files (``cp -r``, rsync, a volume sync) is looked at
once it stops changing rather than on every write; the registry's fingerprints make any extra look
free. ``poll`` forces polling for file systems where inotify events do not arrive (NFS, some bind
mounts), and a periodic full resync catches anything a dropped event would have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from .registry import AdapterRegistry

logger = logging.getLogger(__name__)


class AdapterWatcher:
    def __init__(
        self,
        registry: AdapterRegistry,
        *,
        poll: float | None = None,
        settle: float = 0.2,
        resync_every: float = 60.0,
    ) -> None:
        self._registry = registry
        self._directory = registry.adapters_dir
        self._poll = poll
        self._settle = settle
        self._resync_every = resync_every
        self._pending: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Initial scan, then follow changes until cancelled."""
        from watchfiles import awatch

        self._directory.mkdir(parents=True, exist_ok=True)
        resync = asyncio.create_task(self._resync_periodically())
        try:
            async for changes in awatch(
                self._directory,
                force_polling=self._poll is not None,
                poll_delay_ms=int((self._poll or 0.3) * 1000),
                step=20,
                recursive=True,
                ignore_permission_denied=True,
            ):
                for name in {self._top_level(Path(p)) for _change, p in changes}:
                    if name and not name.startswith("."):  # staging, trash and snapshots
                        self._schedule(name)
        finally:
            resync.cancel()
            for task in self._pending.values():
                task.cancel()

    def _top_level(self, path: Path) -> str | None:
        try:
            relative = path.relative_to(self._directory)
        except ValueError:
            relative = path.resolve().relative_to(self._directory.resolve())
        return relative.parts[0] if relative.parts else None

    def _schedule(self, name: str) -> None:
        previous = self._pending.pop(name, None)
        if previous is not None:
            previous.cancel()  # still changing: wait for it to settle again
        self._pending[name] = asyncio.create_task(self._sync_when_settled(name))

    async def _sync_when_settled(self, name: str) -> None:
        await asyncio.sleep(self._settle)
        self._pending.pop(name, None)
        try:
            # Shielded: a newer event may cancel the wait, never a sync already under way.
            await asyncio.shield(self._registry.sync(name))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("could not sync adapter %s", name)

    async def _resync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._resync_every)
            with contextlib.suppress(Exception):
                await self._registry.scan()

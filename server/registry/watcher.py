"""Follow the adapters directory while the server runs (watchfiles), and resync now and then.

Events are grouped by the top-level name they touch and handled once that name has been quiet for
``settle`` seconds, so a copy that writes many files (``cp -r``, rsync, a volume sync) is looked at
once it stops changing rather than on every write; the registry's fingerprints make any extra look
free. ``poll`` forces polling for file systems where inotify events do not arrive (NFS, some bind
mounts), and a periodic full resync catches anything a dropped event would have missed.

A watcher that dies is never silent: ``supervise`` logs it, reports it (``on_failure``, for the
metric), marks the gateway not ready (``following`` is False) and restarts it with backoff,
rescanning the directory first since events may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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
        self.following = False  # the directory is being watched right now
        self.last_failure: str | None = None

    async def supervise(
        self, on_failure: Callable[[], None] = lambda: None, *, backoff: float = 1.0, max_backoff: float = 30.0
    ) -> None:
        """``run`` until cancelled, restarting it (after a rescan) whenever it fails."""
        delay = backoff
        while True:
            try:
                await self.run()
                raise RuntimeError("the watch ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.following, self.last_failure = False, f"{type(exc).__name__}: {exc}"
                on_failure()
                logger.exception("the adapters watcher failed; restarting it in %.0f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
            try:
                await self._registry.scan()  # catch up on whatever changed while nobody watched
            except Exception:
                logger.exception("rescan after a watcher failure failed")

    async def run(self) -> None:
        """Initial scan, then follow changes until cancelled."""
        from watchfiles import awatch

        self._directory.mkdir(parents=True, exist_ok=True)
        resync = asyncio.create_task(self._resync_periodically())
        self.following, self.last_failure = True, None
        try:
            async for changes in awatch(
                self._directory,
                force_polling=self._poll is not None,
                poll_delay_ms=int((self._poll or 0.3) * 1000),
                step=20,
                recursive=True,
                ignore_permission_denied=True,
                watch_filter=self._adapter_path,
            ):
                for name in {self._top_level(Path(p)) for _change, p in changes}:
                    if name:
                        self._schedule(name)
        finally:
            resync.cancel()
            for task in self._pending.values():
                task.cancel()

    def _adapter_path(self, _change: object, path: str) -> bool:
        """Only adapters' files are news. The gateway's own state in the directory (``.gateway.db``
        and its WAL, ``.kept``, staging and trash: every dot entry) is filtered out before watchfiles
        reports or logs anything, so a database write never looks like a change to an adapter."""
        name = self._top_level(Path(path))
        return bool(name) and not name.startswith(".")  # type: ignore[union-attr]

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
            try:
                await self._registry.scan()
            except Exception:
                logger.exception("periodic rescan of %s failed", self._directory)

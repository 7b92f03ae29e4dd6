"""Starting, ending and watching traffic splits on a running gateway (the admin API's side).

A split is the split file in the adapter's directory (``splits.py``); these operations write or
remove that file and let the registry apply it, so the API, the CLI (which writes the same file
while offline) and a restart all agree. Ending a split is one of two moves the registry already
makes safely: the chosen version is the directory's (the split file goes) or a kept one (it is
republished, as a rollback: proven first, then written into the directory).

``CanaryWatch`` ends a split by itself when its rules say so: the fixed thresholds of
``auto_abort`` (each version's share of server errors or negative feedback over a sliding window),
and verdicts by evidence (``auto_abort`` and ``auto_promote`` margins: ``evidence.py``). It counts
every split's evidence, ruled or not, so the split report can show it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest, ModelNotFound
from .evidence import MAX_USERS, SplitEvidence
from .records import AdapterEntry
from .splits import Split, parse_split, write_split_file

if TYPE_CHECKING:
    from .registry import AdapterRegistry

logger = logging.getLogger(__name__)


class Rollouts:
    def __init__(
        self, registry: AdapterRegistry, on_abort: Callable[[str, str], None] = lambda name, why: None
    ) -> None:
        self._registry = registry
        self._on_abort = on_abort
        self.watch = CanaryWatch(self._auto_abort, self._auto_promote)
        self._tasks: set[asyncio.Task[None]] = set()

    async def set_split(self, name: str, raw: object) -> AdapterEntry:
        """Split ``name``'s traffic as ``raw`` asks (a split file's JSON); a bad split is a 400
        (``bad_split``) and nothing changes."""
        registry = self._registry
        entry = self._serving(name)
        assert entry.active is not None
        spec = parse_split(raw, "split")
        if spec.canary is not None:
            raise InvalidRequest(
                '"canary" is for a split file published with new weights (train --canary); '
                'name the versions here: {"versions": {"5": 90, "6": 10}}.',
                param="split",
                code="bad_split",
            )
        kept = {v.number for v in await asyncio.to_thread(registry.store.versions, name)}
        split = spec.resolve(name, entry.active.version, entry.active.version, kept)
        await asyncio.to_thread(write_split_file, registry.adapters_dir / name, split)
        entry = await registry.sync(name) or entry
        if entry.split is None or entry.split.salt != split.salt:
            raise InvalidRequest(f"{name}: the split was not applied: {entry.last_error}", code="bad_split")
        return entry

    async def promote(self, name: str, version: int | None = None) -> AdapterEntry:
        """End the split in favour of ``version`` (default: the one version besides the baseline)."""
        entry = self._serving(name)
        split = self._split(entry)
        if version is None:
            others = [v for v in split.versions if v != split.baseline]
            if len(others) != 1:
                raise InvalidRequest(
                    f"{name}: the split has several candidate versions {others}; say which to promote.",
                    param="version",
                    code="bad_split",
                )
            version = others[0]
        if version not in split.versions:
            raise InvalidRequest(
                f"{name}: version {version} is not in the split {list(split.versions)}.",
                param="version",
                code="bad_split",
            )
        return await self._end(entry, version)

    async def abort(self, name: str, reason: str = "requested") -> AdapterEntry:
        """End the split and send all traffic back to its baseline (the version that served before)."""
        entry = self._serving(name)
        split = self._split(entry)
        logger.warning(
            "adapter %s: split %s aborted (%s); v%d takes all traffic",
            name,
            dict(split.weights),
            reason,
            split.baseline,
        )
        self._on_abort(name, reason)
        return await self._end(entry, split.baseline)

    async def _end(self, entry: AdapterEntry, version: int) -> AdapterEntry:
        assert entry.active is not None
        if version == entry.active.version:
            return await self._registry.end_split(entry.name)
        return await self._registry.rollback(entry.name, version)  # republished: its kept copy has no split

    def _serving(self, name: str) -> AdapterEntry:
        entry = self._registry.get(name)
        if entry is None or entry.active is None:
            raise ModelNotFound(name)
        return entry

    @staticmethod
    def _split(entry: AdapterEntry) -> Split:
        if entry.split is None:
            raise InvalidRequest(f"{entry.name} has no traffic split.", code="no_split")
        return entry.split

    def _auto_abort(self, name: str, salt: str, why: str) -> None:
        self._end_later(name, salt, "abort", lambda: self.abort(name, why))

    def _auto_promote(self, name: str, salt: str, version: int, why: str) -> None:
        def promote() -> Awaitable[AdapterEntry]:
            logger.warning("adapter %s: split promoted automatically (%s); v%d takes all traffic", name, why, version)
            return self.promote(name, version)

        self._end_later(name, salt, "promotion", promote)

    def _end_later(self, name: str, salt: str, what: str, end: Callable[[], Awaitable[AdapterEntry]]) -> None:
        """End the split ``salt`` of ``name`` off the request's path (it publishes, under the name's lock)."""

        async def run() -> None:
            entry = self._registry.get(name)
            if entry is None or entry.split is None or entry.split.salt != salt:
                return  # ended (or replaced) meanwhile
            try:
                await end()
            except Exception:
                logger.exception("adapter %s: the automatic %s failed", name, what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Window:
    """Events (time, bad) of one version in one split, the last ``seconds`` only."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, bool]] = deque()
        self.bad = 0

    def add(self, bad: bool, now: float, seconds: float) -> tuple[int, int]:
        self.events.append((now, bad))
        self.bad += bad
        while self.events and self.events[0][0] < now - seconds:
            self.bad -= self.events.popleft()[1]
        return len(self.events), self.bad


class CanaryWatch:
    """Counts what a split's rules need, cheap enough for every request: the fixed-rate windows
    of ``auto_abort`` (a deque append) and each version's evidence (``evidence.py``: running
    sums, and an interval only when a sample reaches its next look)."""

    def __init__(
        self,
        abort: Callable[[str, str, str], None],
        promote: Callable[[str, str, int, str], None] = lambda name, salt, version, why: None,
    ) -> None:
        self._abort = abort
        self._promote = promote
        self._windows: dict[tuple[str, str, int, str], _Window] = {}
        self._fired: set[str] = set()  # salts of splits already being ended
        self._evidence: dict[str, tuple[str, SplitEvidence]] = {}  # name: (salt, its evidence)
        self.verdicts: dict[str, dict[str, Any]] = {}  # name: the last verdict by evidence, kept after the split

    def request(
        self, split: Split, version: int, server_error: bool, seconds: float | None, malformed: bool | None
    ) -> None:
        """One request of ``version`` under ``split`` ended: a server error, or answered in
        ``seconds``; ``malformed``: whether its tool calls or JSON failed their check, None when it
        asked for neither (``server.output_checks``)."""
        evidence = self.evidence(split)
        arm = evidence.arm(version)
        if arm is not None:
            arm.requests += 1
            arm.errors += server_error
            if seconds is not None:
                arm.latency = arm.latency.add(seconds)
            if malformed is not None:
                arm.checked += 1
                arm.malformed += malformed
            self._decide(split, evidence)
        if split.auto_abort is not None and split.auto_abort.max_error_rate is not None:
            self._count(split, version, "errors", server_error, split.auto_abort.max_error_rate)

    def feedback(self, split: Split, version: int, negative: bool, user: str, score: float) -> None:
        """A first rating by ``user`` of an answer of ``version``: ``score`` from 0 (worst) to 1."""
        evidence = self.evidence(split)
        arm = evidence.arm(version)
        if arm is not None and (user in arm.users or len(arm.users) < MAX_USERS):
            total, count = arm.users.get(user, (0.0, 0))
            arm.users[user] = (total + score, count + 1)
            self._decide(split, evidence)
        if split.auto_abort is not None and split.auto_abort.max_negative_rate is not None:
            self._count(split, version, "negative feedback", negative, split.auto_abort.max_negative_rate)

    def evidence(self, split: Split) -> SplitEvidence:
        """The evidence of ``split`` (a new split of the same name starts afresh)."""
        found = self._evidence.get(split.name)
        if found is None or found[0] != split.salt:
            found = (split.salt, SplitEvidence(split.baseline, split.versions))
            self._evidence[split.name] = found
        return found[1]

    def report(self, split: Split | None, name: str) -> dict[str, Any]:
        """Each metric per version with its interval, the rules, and the verdict (when one was reached)."""
        data: dict[str, Any] = {"name": name, "split": None if split is None else split.summary()}
        if split is not None:
            data.update(self.evidence(split).report())
        data["last_verdict"] = self.verdicts.get(name)
        return data

    def _decide(self, split: Split, evidence: SplitEvidence) -> None:
        abort = split.auto_abort.evidence if split.auto_abort is not None else None
        if (abort is None and split.auto_promote is None) or split.salt in self._fired:
            return
        verdict = evidence.decide(abort, split.auto_promote)
        if verdict is None:
            return
        self._fired.add(split.salt)
        self.verdicts[split.name] = verdict.summary()
        if verdict.action == "abort":
            self._abort(split.name, split.salt, verdict.describe())
        else:
            self._promote(split.name, split.salt, verdict.version, verdict.describe())

    def _count(self, split: Split, version: int, what: str, bad: bool, limit: float) -> None:
        rule = split.auto_abort
        assert rule is not None
        if version == split.baseline or version not in split.versions or split.salt in self._fired:
            return
        key = (split.name, split.salt, version, what)
        window = self._windows.get(key)
        if window is None:
            self._windows = {k: w for k, w in self._windows.items() if k[0] != split.name or k[1] == split.salt}
            window = self._windows[key] = _Window()
        total, bad_count = window.add(bad, time.monotonic(), rule.window_s)
        if total >= rule.min_events and bad_count / total > limit:
            self._fired.add(split.salt)
            why = f"v{version}: {what} {bad_count}/{total} in {rule.window_s:g}s, above {limit:g}"
            self._abort(split.name, split.salt, why)

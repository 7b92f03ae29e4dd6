"""``--adapters-source s3://bucket/prefix``: a fleet of gateways follows one remote location.

Every ``--adapters-source-interval`` seconds the source is listed: each sub-folder
``<prefix>/<name>/`` is an adapter. One whose files changed (their sizes and ETags) since this
gateway last took it is downloaded into staging, checked (headers, rank, safetensors, shapes
against the base) and published into the local adapters directory, which the directory watcher
then adopts like any other publish: dry-run load, eval gate, kept versions, canary split. So an
adapter published once to the bucket reaches every gateway of the fleet within one interval, and
every gateway still proves it for itself.

What was taken from the source is recorded in ``<adapters-dir>/.source.json`` (a name, the files'
signature), so a restart downloads nothing it already has. A name removed from the source is
removed from the directory only if this source had put it there (and, when the whole source
lists empty, only once a second look agrees); names published locally are never touched. One
bad adapter (refused files, a failed download) is reported, left as it was, and retried when its
files change again: it never holds up the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..terms.layout import SOURCE_STATE_FILE
from .names import is_valid_name
from .publish import publish_adapter, remove_adapter
from .sources import RemoteFile, SourceConfig, SourceURL, open_source, stage_from
from .validation import AdapterIncomplete, AdapterRejected

logger = logging.getLogger(__name__)
Signature = list[list[str | int]]  # [[file, size, tag], ...], sorted: JSON-stable


def signature(files: dict[str, RemoteFile]) -> Signature:
    return [[f.name, f.size, f.tag] for f in sorted(files.values(), key=lambda f: f.name)]


class SourceWatcher:
    def __init__(
        self,
        url: str,
        adapters_dir: Path,
        config: SourceConfig,
        *,
        interval: float = 30.0,
        check: Callable[[Path], object] | None = None,
        on_failure: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.url = SourceURL.parse(url)
        config.check(self.url, requested=False)
        self.adapters_dir = adapters_dir
        self.config = config
        self.interval = interval
        self._check = check  # the registry's header check against the served base
        self._on_failure = on_failure
        self.last_error: str | None = None  # the last listing's failure, for /ready's detail
        self.polls = 0
        self._seen_empty = False  # the last look listed nothing (see ``poll``)
        self._taken: dict[str, Signature] | None = None  # what this source put here (``.source.json``)
        self._refused: dict[str, Signature] = {}  # files refused once are not fetched again until they change

    @property
    def _state_file(self) -> Path:
        return self.adapters_dir / SOURCE_STATE_FILE

    def _state(self) -> dict[str, Signature]:
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}
        taken = data.get(str(self.url), {}) if isinstance(data, dict) else {}
        return taken if isinstance(taken, dict) else {}

    def _save(self, taken: dict[str, Signature]) -> None:
        try:
            data = json.loads(self._state_file.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[str(self.url)] = taken
        tmp = self._state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self._state_file)

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged and retried at the next interval."""
        while True:
            try:
                await asyncio.to_thread(self.poll)
                self.last_error = None
            except AdapterRejected as exc:
                self.last_error = str(exc)
                logger.warning("adapters source %s: %s", self.url, exc)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("adapters source %s: polling failed", self.url)
            await asyncio.sleep(self.interval)

    def poll(self) -> list[str]:
        """One look at the source (blocking: run it in a thread); returns the names published."""
        source = open_source(self.url, self.config)
        names = source.subdirectories()
        if self._taken is None:  # read once: this watcher is the only writer of its URL's record
            self._taken = self._state()
        taken = self._taken
        published: list[str] = []
        for name in names:
            if not is_valid_name(name):
                logger.warning("adapters source %s: %r is not a valid adapter name; skipped", self.url, name)
                continue
            current: Signature | None = None
            try:
                adapter = source.child(name)  # one client for the whole look
                files = adapter.files()
                current = signature(files)
                if current in (taken.get(name), self._refused.get(name)):
                    continue
                staged = stage_from(adapter, self.adapters_dir, files)  # the files just listed, not again
                try:
                    publish_adapter(staged, name, self.adapters_dir, validate=self._check)
                finally:
                    shutil.rmtree(staged, ignore_errors=True)
                taken[name] = current
                self._save(taken)
                self._refused.pop(name, None)
                published.append(name)
                logger.info("adapters source %s: published %s into %s", self.url, name, self.adapters_dir)
            except (AdapterRejected, AdapterIncomplete) as exc:
                if current is not None and isinstance(exc, AdapterRejected) and exc.reason != "source_unavailable":
                    self._refused[name] = current
                self._on_failure(name)
                logger.warning("adapters source %s: %s not taken: %s", self.url, name, exc)
        gone = sorted(set(taken) - set(names))
        if gone and not names and not self._seen_empty:
            # The whole source empty at once is as likely a listing gone wrong (a prefix renamed, a
            # replica behind) as a decision: taken out only if the next look agrees.
            self._seen_empty = True
            logger.warning(
                "adapters source %s lists nothing; its %d adapters go if the next look agrees", self.url, len(gone)
            )
            gone = []
        elif names:
            self._seen_empty = False
        for name in gone:  # gone from the source: it put them here, it takes them out
            remove_adapter(name, self.adapters_dir)
            del taken[name]
            self._save(taken)
            logger.info("adapters source %s: %s removed (no longer in the source)", self.url, name)
        self.polls += 1
        return published

"""Requests that name a version: ``shop@3`` (its number) or ``shop@1a2b3c4d`` (a sha256 prefix;
the address itself is ``server.terms.address``).

Most requests take whatever version of a name is active; some must reach one version: an eval
comparing two, a support agent reproducing what a customer saw, a canary checked by hand. A kept
(proven) version is served by the same engine as any other: it gets an ``AdapterVersion`` of its
own (a fresh ``adapter_id``), is loaded on demand and evicted when idle like the rest. Its headers
are read once (validation, no dry run: it was proven) and the version is remembered until its
kept copy goes (retention), after which the address is a 404 like any unknown model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelNotFound
from ..terms.address import matches
from .records import AdapterEntry, AdapterInfo, AdapterVersion
from .store import StoredVersion, VersionStore


class KeptVersions:
    def __init__(
        self,
        store: VersionStore,
        inspect: Callable[[Path], tuple[AdapterInfo, str]],  # headers read, and the base it is for
        new_id: Callable[[], int],
    ) -> None:
        self._store = store
        self._inspect = inspect
        self._new_id = new_id
        self._known: dict[tuple[str, int], AdapterVersion] = {}

    async def resolve(self, entry: AdapterEntry, ref: str, model: str) -> AdapterVersion:
        """The version ``ref`` names among ``entry``'s active and kept versions; ``ModelNotFound``
        (saying what is kept) when none or several match."""
        active = entry.active
        if active is not None and matches(active.version, active.sha256, ref):
            return active
        for (name, _), known in list(self._known.items()):
            if name == entry.name and matches(known.version, known.sha256, ref):
                if Path(known.load_path).is_dir():
                    return known
                del self._known[(name, known.version)]  # its kept copy went (retention)
        kept = await asyncio.to_thread(self._store.versions, entry.name)
        found = [v for v in kept if matches(v.number, v.sha256, ref)]
        if len(found) != 1:
            numbers = [v.number for v in kept] or "none"
            why = "matches several kept versions" if found else "names no kept version"
            raise ModelNotFound(model, f"`{model}` {why} of adapter `{entry.name}`; kept: {numbers}.")
        return await asyncio.to_thread(self._remember, entry, found[0])

    def _remember(self, entry: AdapterEntry, kept: StoredVersion) -> AdapterVersion:
        info, base = self._inspect(kept.path)
        version = AdapterVersion(
            name=entry.name,
            adapter_id=self._new_id(),
            version=kept.number,
            path=str(kept.path),
            load_path=str(kept.path),
            info=info,
            created=int(kept.kept_at or time.time()),
            sha256=kept.sha256,
            base=base,
        )
        self._known[(entry.name, kept.number)] = version
        return version

    def forget(self, name: str) -> None:
        """Drop what is remembered of ``name`` (it was removed)."""
        for key in [k for k in self._known if k[0] == name]:
            del self._known[key]

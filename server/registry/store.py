"""Durable copies of adapter versions: what the engine loads, and what survives a restart.

Each version the registry takes is *copied* (not hard-linked: an in-place overwrite of the live
file would change a link too) into ``<adapters_dir>/.kept/<name>/<N>/<name>/``. The engine loads
that copy, so what was validated is what gets loaded, whatever happens to ``<dir>/<name>`` later.

A copy becomes *proven* (``kept.json`` written next to it) only once the engine loaded it, and
records what it was proven on (the base's fingerprint and the engine): a restart on the same base
and engine need not load it again to know a request will succeed. Proven versions are the
last-good versions a restart falls back to when the directory's current files are rejected, and
the versions ``lora-gateway adapters rollback`` republishes. A copy that failed, or that a crash
left unproven, is deleted.

Retention: the newest ``keep`` proven versions of each name stay (default 5, ``--keep-versions``),
plus pinned versions and any version this process still serves or drains; older ones are deleted when a new version is
proven. Version numbers ``N`` are per name and never reused while a copy exists, so they mean the
same thing across restarts; a file whose digest matches a proven copy is that version again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..terms.layout import CONFIG_FILE, LEGACY_SNAPSHOTS, PROFILE_FILE, SPLIT_FILE, STORE_DIR
from .durable import fsync_path

logger = logging.getLogger(__name__)

MARKER = "kept.json"
_UNPROVEN_GRACE_S = 3600  # per-process hard-link snapshots of earlier releases


@dataclass(frozen=True)
class StoredVersion:
    name: str
    number: int
    path: Path  # the directory the engine loads: <store>/<name>/<N>/<name>
    sha256: str
    proven: bool
    kept_at: float = 0.0
    proven_on: tuple[tuple[str, str], ...] = ()  # what it was loaded with: base fingerprint, engine
    pinned: bool = False  # never deleted by retention
    eval: dict[str, Any] | None = None  # its eval gate's outcome, when it passed one


class VersionStore:
    def __init__(self, adapters_dir: Path, keep: int = 5) -> None:
        self.root = adapters_dir / STORE_DIR
        self.keep = max(1, keep)

    # ------------------------------------------------------------------ reading

    def versions(self, name: str) -> list[StoredVersion]:
        """Proven versions of ``name``, newest first."""
        found = []
        for number_dir in self._number_dirs(name):
            marker = number_dir / MARKER
            try:
                meta = json.loads(marker.read_text())
                proof = tuple(sorted((str(k), str(v)) for k, v in (meta.get("proven_on") or {}).items()))
                found.append(
                    StoredVersion(
                        name,
                        int(number_dir.name),
                        number_dir / name,
                        str(meta["sha256"]),
                        True,
                        float(meta.get("kept_at", 0)),
                        proof,
                        bool(meta.get("pinned", False)),
                        meta.get("eval") if isinstance(meta.get("eval"), dict) else None,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda v: v.number, reverse=True)

    def find(self, name: str, sha256: str, config: bytes, profile: bytes | None = None) -> StoredVersion | None:
        """The proven version with these weights (by digest), this adapter_config.json and this
        profile.json (None: without one), the JSON files compared by what they say (key order and
        spacing differ between writers, and a file written again is the same version again)."""
        return next(
            (
                v
                for v in self.versions(name)
                if v.sha256 == sha256
                and _same_json(_config_bytes(v.path), config)
                and _same_json(_file_bytes(v.path / PROFILE_FILE), profile)
            ),
            None,
        )

    def path_of(self, name: str, number: int) -> Path:
        """Where version ``number`` of ``name`` is (or would be) kept."""
        return self.root / name / str(number) / name

    def get(self, name: str, number: int) -> StoredVersion | None:
        return next((v for v in self.versions(name) if v.number == number), None)

    def rollback_target(self, name: str, number: int | None, serving: Path | None) -> StoredVersion:
        """Version ``number``, or the newest kept version other than the one at ``serving``;
        ``LookupError`` (with a message naming what is kept) when there is none."""
        kept = self.versions(name)
        choice = next((v for v in kept if (v.number == number if number is not None else v.path != serving)), None)
        if choice is None:
            which = f"version {number}" if number is not None else "earlier version"
            raise LookupError(f"No kept {which} of adapter `{name}`; kept: {[v.number for v in kept] or 'none'}.")
        return choice

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    # ------------------------------------------------------------------ writing

    def copy_in(self, name: str, source: Path, sha256: str) -> StoredVersion:
        """Copy the regular files of ``source`` (but its split file) into a new, unproven version of ``name``."""
        staging = self.root / name / f".incoming-{uuid.uuid4().hex[:8]}" / name
        staging.mkdir(parents=True)
        try:
            for file in source.iterdir():
                # The split file is routing state of the name, not part of a version.
                if file.is_file() and not file.is_symlink() and file.name != SPLIT_FILE:
                    shutil.copyfile(file, staging / file.name)
                    fsync_path(staging / file.name)
            while True:  # another gateway on the same volume may take a number at the same time
                number = max((int(d.name) for d in self._number_dirs(name)), default=0) + 1
                try:
                    os.rename(staging.parent, self.root / name / str(number))
                    break
                except OSError:
                    if not (self.root / name / str(number)).exists():
                        raise
        except BaseException:
            shutil.rmtree(staging.parent, ignore_errors=True)
            raise
        return StoredVersion(name, number, self.root / name / str(number) / name, sha256, False)

    def prove(
        self,
        version: StoredVersion,
        protect: set[Path],
        proven_on: tuple[tuple[str, str], ...] = (),
        eval: dict[str, Any] | None = None,
    ) -> StoredVersion:
        """Mark ``version`` loadable with ``proven_on`` (durable from now on), with its eval gate's
        outcome when it passed one, and apply the retention rule."""
        kept_at = time.time()
        marker = {
            "name": version.name,
            "version": version.number,
            "sha256": version.sha256,
            "kept_at": kept_at,
            "proven_on": dict(proven_on),
            **({"eval": eval} if eval is not None else {}),
        }
        _write_marker(version.path.parent / MARKER, marker)
        for old in self.versions(version.name)[self.keep :]:
            if old.path not in protect and old.number != version.number and not old.pinned:
                logger.info(
                    "adapter %s: version %d is past the retention of %d versions; deleting it",
                    old.name,
                    old.number,
                    self.keep,
                )
                shutil.rmtree(old.path.parent, ignore_errors=True)
        return StoredVersion(
            version.name, version.number, version.path, version.sha256, True, kept_at, proven_on, False, eval
        )

    def set_pinned(self, name: str, number: int, pinned: bool) -> StoredVersion:
        """Pin (never deleted by retention) or unpin a kept version; ``LookupError`` naming what is
        kept when there is no such version."""
        kept = self.versions(name)
        version = next((v for v in kept if v.number == number), None)
        if version is None:
            raise LookupError(
                f"No kept version {number} of adapter `{name}`; kept: {[v.number for v in kept] or 'none'}."
            )
        marker = version.path.parent / MARKER
        meta = json.loads(marker.read_text())
        _write_marker(marker, {**meta, "pinned": pinned})
        return dataclasses.replace(version, pinned=pinned)

    def discard(self, version: StoredVersion) -> None:
        """Delete an unproven copy (its load failed); proven ones go only by retention."""
        if not version.proven:
            shutil.rmtree(version.path.parent, ignore_errors=True)

    def clean(self) -> None:
        """At start: delete unproven copies (a crash between copy and load) and the hard-link
        snapshots earlier releases kept under ``.versions``. Unproven copies younger than an hour
        stay: another gateway on the same volume may be loading one; they are never served."""
        legacy = self.root.parent / LEGACY_SNAPSHOTS
        if legacy.is_dir():
            logger.info("removing %s (per-process snapshots of an earlier release)", legacy)
            shutil.rmtree(legacy, ignore_errors=True)
        cutoff = time.time() - _UNPROVEN_GRACE_S
        for name in self.names():
            for entry in (self.root / name).iterdir():
                unproven = entry.name.startswith(".incoming-") or (
                    entry.name.isdigit() and not (entry / MARKER).is_file()
                )
                if unproven and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)

    def _number_dirs(self, name: str) -> list[Path]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        return [d for d in directory.iterdir() if d.name.isdigit() and d.is_dir()]


def _write_marker(marker: Path, meta: dict[str, Any]) -> None:
    """Replace ``marker`` with ``meta`` in one rename, flushed to disk."""
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    fsync_path(tmp)
    os.replace(tmp, marker)
    fsync_path(marker.parent)


def _same_json(kept: bytes | None, given: bytes | None) -> bool:
    if kept is None or given is None:
        return kept is given
    try:
        return bool(json.loads(kept) == json.loads(given))
    except ValueError:
        return kept == given


def _config_bytes(path: Path) -> bytes | None:
    return _file_bytes(path / CONFIG_FILE)


def _file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None

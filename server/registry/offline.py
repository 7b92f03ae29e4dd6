"""Splits, promotions and aborts from the command line, with or without a gateway running.

They work on the same files the gateway follows: the adapter's split file and the kept versions.
A running gateway's watcher applies the change (and re-checks it); a stopped one starts with it.
The admin API (``rollout.py``) makes the same changes through the registry instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..terms.layout import CONFIG_FILE, PROFILE_FILE, WEIGHTS_FILE
from .publish import publish_adapter
from .splits import Split, parse_split, read_split_file, write_split_file
from .store import StoredVersion, VersionStore
from .validation import AdapterRejected, file_sha256


def directory_version(store: VersionStore, name: str) -> StoredVersion | None:
    """The kept version the directory's files of ``name`` are, if they are one."""
    files = store.root.parent / name
    try:
        profile = files / PROFILE_FILE
        return store.find(
            name,
            file_sha256(files / WEIGHTS_FILE),
            (files / CONFIG_FILE).read_bytes(),
            profile.read_bytes() if profile.is_file() else None,
        )
    except OSError:
        return None


def listing(adapters_dir: Path) -> list[dict[str, Any]]:
    """Per name (the directory's adapters, and names that only have kept versions): which kept
    version its files are (``version`` None: files no gateway proved: new, or refused), the kept
    and pinned version numbers, and its split's shares."""
    store = VersionStore(adapters_dir)
    names = {p.name for p in adapters_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    rows = []
    for name in sorted(names | set(store.names())):
        files: dict[str, Any] | None = None
        if (adapters_dir / name / WEIGHTS_FILE).is_file():
            current = directory_version(store, name)
            files = {
                "version": current.number if current else None,
                "sha256": file_sha256(adapters_dir / name / WEIGHTS_FILE),
            }
        kept = store.versions(name)
        try:
            split = read_split_file(adapters_dir / name) if (adapters_dir / name).is_dir() else None
        except AdapterRejected:
            split = None
        rows.append(
            {
                "name": name,
                "directory": files,
                "kept": [v.number for v in kept],
                "pinned": [v.number for v in kept if v.pinned],
                "split": " ".join(f"v{v}={p}%" for v, p in split.weights) if split and split.weights else None,
            }
        )
    return rows


def start_split(adapters_dir: Path, name: str, raw: object) -> Split:
    """Write a split of ``name``'s kept versions (``raw``: a split file's JSON); the version the
    directory holds is its baseline. ``AdapterRejected("bad_split")`` when it cannot be."""
    store = VersionStore(adapters_dir)
    current = directory_version(store, name)
    if current is None:
        raise AdapterRejected(
            "bad_split",
            f"{name}: the directory's files are not a kept version (a gateway keeps a version once it "
            "served it); nothing to split from.",
            param="split",
        )
    spec = parse_split(raw, "split")
    if spec.canary is not None:
        raise AdapterRejected("bad_split", '"canary" is for a split file published with new weights.', param="split")
    split = spec.resolve(name, current.number, current.number, {v.number for v in store.versions(name)})
    write_split_file(adapters_dir / name, split)
    return split


def end_split(adapters_dir: Path, name: str, version: int | None, *, abort: bool = False) -> int:
    """End ``name``'s split: ``abort`` returns to its baseline, else ``version`` (default: the one
    besides the baseline) takes all traffic. Returns the version that now serves."""
    directory = adapters_dir / name
    spec = read_split_file(directory)
    if spec is None or spec.weights is None or spec.baseline is None:
        raise AdapterRejected("no_split", f"{name} has no traffic split a gateway has applied.", param="split")
    versions = [number for number, _ in spec.weights]
    if abort:
        version = spec.baseline
    elif version is None:
        others = [n for n in versions if n != spec.baseline]
        if len(others) != 1:
            raise AdapterRejected("bad_split", f"{name}: say which of {others} to promote.", param="version")
        version = others[0]
    if version not in versions:
        raise AdapterRejected(
            "bad_split", f"{name}: version {version} is not in the split {versions}.", param="version"
        )
    store = VersionStore(adapters_dir)
    current = directory_version(store, name)
    if current is not None and current.number == version:
        write_split_file(directory, None)
        return version
    kept = store.get(name, version)
    if kept is None:
        raise AdapterRejected("bad_split", f"{name}: version {version} is no longer kept.", param="version")
    publish_adapter(kept.path, name, adapters_dir)  # its kept copy carries no split file
    return version

"""Adapters from where teams keep them: object storage (``s3://``, any fsspec URL the operator
enables) and the Hugging Face Hub (``hf://org/repo[@revision][/folder]``).

A remote adapter is *downloaded into staging* and from there takes exactly the path a local one
takes (``publish_adapter``'s checks from the command line, ``registry.install`` from the admin API):
the same validation, dry-run load, eval gate and kept versions. Nothing here decides what serves.

What a request may do is bounded by the operator, never by the request or the adapter:

- Where: an admin's ``/v1/load_lora_adapter`` may name only a URL under one of the prefixes of
  ``--adapter-sources`` (none by default: local paths only). The command line (the operator) may
  name any URL whose scheme is enabled.
- With what: credentials come from the operator's environment or settings only (boto's chain for
  S3: ``AWS_*`` variables, ``~/.aws``, an instance role; ``HF_TOKEN`` for the Hub) and options
  from ``--source-options``. A URL carrying credentials (``user:pass@``, a query) is refused.
- How much: only an adapter's known files are fetched (config, safetensors weights, profile,
  training record, eval gate and its test set), each within a size bound checked from the listing
  *before* it is downloaded and again after, within a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from ..terms.layout import CONFIG_FILE, EXTRA_FILES, GATE_FILE, STAGING_PREFIX, WEIGHTS_FILE
from .gate_spec import gate_files
from .validation import AdapterRejected

HUB_SCHEME = "hf"
DEFAULT_SCHEMES = ("s3", HUB_SCHEME)
SMALL_FILE_BYTES = 64 * 1024**2  # every file but the weights: configs, a profile, an eval set
# What is fetched of an adapter, config first (the eval gate's test set is added once eval.json is here)
ADAPTER_FILES = (CONFIG_FILE, *EXTRA_FILES, GATE_FILE, WEIGHTS_FILE)
_SCHEME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789+-.")


class SourceConfigError(ValueError):
    """The operator's source settings name something no fetch can use (start-up fails with this line)."""


def is_remote(location: str) -> bool:
    """``scheme://...`` (a URL) rather than a path on this machine."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and bool(scheme) and set(scheme.lower()) <= _SCHEME_CHARS and scheme.lower() != "file"


@dataclass(frozen=True)
class SourceURL:
    """A remote adapter's address: ``scheme://location`` and, on the Hub, the revision."""

    scheme: str
    location: str  # bucket/prefix for object stores; org/repo[/folder] on the Hub, without @revision
    revision: str | None = None

    @classmethod
    def parse(cls, url: str, *, prefix: bool = False) -> SourceURL:
        """``prefix``: an allowed location (``--adapter-sources``), which may be a whole Hub org."""
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or not is_remote(url):
            raise AdapterRejected("bad_source", f"{url!r} is not a URL (scheme://...).")
        if "?" in rest or "#" in rest or "@" in rest.split("/", 1)[0] and scheme != HUB_SCHEME:
            raise AdapterRejected(
                "bad_source", f"{scheme}:// URLs name a location only: credentials and options come from the operator."
            )
        parts = [p for p in rest.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or "\\" in rest or "\x00" in rest:
            raise AdapterRejected("bad_source", f"{url!r}: no such location.")
        revision = None
        if scheme == HUB_SCHEME and prefix and len(parts) == 1 and "@" not in parts[0]:
            return cls(scheme, parts[0])
        if scheme == HUB_SCHEME:
            if len(parts) < 2:
                raise AdapterRejected("bad_source", f"{url!r}: a Hub source is hf://ORG/REPO[@REVISION][/FOLDER].")
            repo, _, revision = parts[1].partition("@")
            if "@" in parts[0] or not repo or any("@" in p for p in parts[2:]):
                raise AdapterRejected("bad_source", f"{url!r}: a Hub source is hf://ORG/REPO[@REVISION][/FOLDER].")
            parts[1] = repo
        return cls(scheme, "/".join(parts), revision or None)

    def __str__(self) -> str:
        if self.scheme != HUB_SCHEME or self.revision is None:
            return f"{self.scheme}://{self.location}"
        org, repo, *folder = self.location.split("/")
        return f"{self.scheme}://{org}/{repo}@{self.revision}" + "".join(f"/{f}" for f in folder)

    def child(self, name: str) -> SourceURL:
        return SourceURL(self.scheme, f"{self.location}/{name}", self.revision)

    def under(self, prefix: SourceURL) -> bool:
        """Inside ``prefix`` (same scheme, whole path components; a pinned revision must match)."""
        if self.scheme != prefix.scheme or (prefix.revision is not None and prefix.revision != self.revision):
            return False
        return PurePosixPath(self.location).is_relative_to(PurePosixPath(prefix.location))


@dataclass(frozen=True)
class SourceConfig:
    """The operator's word on remote adapters (``--adapter-sources``, ``--source-options``...)."""

    allowed: tuple[str, ...] = ()  # URL prefixes an admin request may name; empty: none
    schemes: tuple[str, ...] = DEFAULT_SCHEMES  # what any fetch may use (the command line included)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # fsspec options per scheme
    timeout: float = 60.0  # seconds for one file (connect and each read), and 10x for the whole adapter
    max_bytes: int = 2 * 1024**3  # the weights' bound; other files: SMALL_FILE_BYTES

    def check(self, url: SourceURL, *, requested: bool) -> None:
        """Refuse ``url`` unless the operator enabled its scheme and, for a request, its prefix."""
        if url.scheme not in self.schemes:
            raise AdapterRejected(
                "source_not_allowed", f"{url.scheme}:// sources are not enabled on this gateway (--source-schemes)."
            )
        if requested and not any(url.under(SourceURL.parse(prefix, prefix=True)) for prefix in self.allowed):
            raise AdapterRejected(
                "source_not_allowed",
                f"{url} is not under any source this gateway may fetch from (--adapter-sources)."
                if self.allowed
                else "This gateway fetches no adapters from URLs for a request; start it with --adapter-sources.",
            )

    def bound(self, file: str) -> int:
        return self.max_bytes if file == WEIGHTS_FILE else SMALL_FILE_BYTES


def config_from_env(environ: Mapping[str, str] = os.environ) -> SourceConfig:
    """The command line's ``SourceConfig``: the gateway's settings (``server.settings``, their
    defaults and validation), read from the same environment variables
    (``LORA_GATEWAY_SOURCE_OPTIONS``, ``_SOURCE_SCHEMES``, ``_SOURCE_TIMEOUT``); the operator
    running it may name any URL of an enabled scheme."""
    from pydantic import TypeAdapter, ValidationError

    from ..settings import Settings

    fields = Settings.model_fields
    values: dict[str, Any] = {}
    for name in ("source_options", "source_schemes", "source_timeout"):
        raw = environ.get(f"LORA_GATEWAY_{name.upper()}")
        if not raw:
            values[name] = fields[name].get_default(call_default_factory=True)
            continue
        if name == "source_schemes":  # comma-separated, as Settings reads it
            raw = json.dumps([s.strip() for s in raw.split(",") if s.strip()])
        try:
            field = fields[name]
            # the field's type with its constraints (gt=0), as Settings validates it
            typed: Any = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            values[name] = TypeAdapter(typed).validate_json(raw)
        except ValidationError as exc:
            raise SystemExit(f"lora-gateway: LORA_GATEWAY_{name.upper()}: {exc.errors()[0]['msg']}") from None
    return SourceConfig(
        schemes=tuple(s.lower() for s in values["source_schemes"]),
        options=values["source_options"],
        timeout=float(values["source_timeout"]),
    )


# ---------------------------------------------------------------------- listing and fetching


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    tag: str  # what changes when the file does: an ETag, a blob id, a modification time


class Source:
    """One remote location: list an adapter's files, fetch them into a local directory."""

    def __init__(self, url: SourceURL, config: SourceConfig) -> None:
        self.url, self.config = url, config

    def files(self) -> dict[str, RemoteFile]:
        raise NotImplementedError

    def fetch(self, names: list[str], into: Path) -> None:
        raise NotImplementedError

    def subdirectories(self) -> list[str]:
        """Names directly under the location (a watched source's adapters)."""
        raise NotImplementedError

    def child(self, name: str) -> Source:
        """The location ``name`` under this one."""
        return open_source(self.url.child(name), self.config)


def _wanted(available: Mapping[str, RemoteFile]) -> list[str]:
    """The adapter files to fetch first; the eval gate's test set is known once eval.json is here."""
    if CONFIG_FILE not in available or WEIGHTS_FILE not in available:
        raise AdapterRejected("missing_files", f"the source must contain {CONFIG_FILE} and {WEIGHTS_FILE}.")
    return [f for f in ADAPTER_FILES if f in available]


class FsspecSource(Source):
    """``s3://`` and any other fsspec protocol the operator enabled (its driver installed)."""

    def __init__(self, url: SourceURL, config: SourceConfig, fs: Any = None) -> None:
        """``fs``: a file system already opened for this scheme (``child``), else one is opened."""
        super().__init__(url, config)
        self.fs = fs if fs is not None else _open_filesystem(url.scheme, config)
        self.root = url.location.rstrip("/")

    def child(self, name: str) -> Source:
        """The same file system (its client, its connections), one folder down."""
        return FsspecSource(self.url.child(name), self.config, self.fs)

    def _listing(self, path: str) -> list[dict[str, Any]]:
        try:
            return list(self.fs.ls(path, detail=True, refresh=True))
        except FileNotFoundError:
            return []
        except Exception as exc:  # a driver's own errors: refused, named, never a crash
            raise AdapterRejected(
                "source_unavailable", f"listing {self.url} failed ({type(exc).__name__}: {exc})."
            ) from None

    def files(self) -> dict[str, RemoteFile]:
        found = {}
        for item in self._listing(self.root):
            if item.get("type") != "file":
                continue
            name = PurePosixPath(str(item["name"])).name
            tag = str(item.get("ETag") or item.get("etag") or item.get("mtime") or item.get("LastModified") or "")
            found[name] = RemoteFile(name, int(item.get("size") or 0), tag)
        return found

    def subdirectories(self) -> list[str]:
        return sorted(
            PurePosixPath(str(item["name"])).name
            for item in self._listing(self.root)
            if item.get("type") == "directory"
        )

    def fetch(self, names: list[str], into: Path) -> None:
        for name in names:
            try:
                self.fs.get_file(f"{self.root}/{name}", str(into / name))
            except Exception as exc:
                raise AdapterRejected(
                    "source_unavailable", f"fetching {self.url}/{name} failed ({type(exc).__name__}: {exc})."
                ) from None


def _open_filesystem(scheme: str, config: SourceConfig) -> Any:
    import fsspec

    options = dict(config.options.get(scheme, {}))
    if scheme == "s3":  # bounded calls; boto's retries are short
        timeouts = {"connect_timeout": config.timeout, "read_timeout": config.timeout}
        options.setdefault("config_kwargs", {**timeouts, "retries": {"max_attempts": 2}})
        options.setdefault("skip_instance_cache", True)
    try:
        return fsspec.filesystem(scheme, **options)
    except (ImportError, ValueError) as exc:
        raise AdapterRejected(
            "source_unavailable",
            f"{scheme}:// needs its fsspec driver ({exc}); pip install 'lora-gateway[sources]'.",
        ) from None


class HubSource(Source):
    """``hf://org/repo[@revision][/folder]``: ``huggingface_hub`` does the download and its cache
    (``HF_HOME``), so an operator's offline mirror or pre-filled cache works as for models."""

    def __init__(self, url: SourceURL, config: SourceConfig) -> None:
        super().__init__(url, config)
        org, repo, *folder = url.location.split("/")
        self.repo_id, self.folder = f"{org}/{repo}", "/".join(folder)

    def _path(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    def _download(self, names: list[str]) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

        try:
            folder = snapshot_download(
                self.repo_id,
                revision=self.url.revision,
                allow_patterns=[self._path(n) for n in names],
                etag_timeout=self.config.timeout,
                cache_dir=self.config.options.get(HUB_SCHEME, {}).get("cache_dir"),  # else HF_HOME's
            )
        except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
            raise AdapterRejected(
                "source_unavailable", f"{self.url}: the Hub could not provide it ({type(exc).__name__}: {exc})."
            ) from None
        return Path(folder) / self.folder if self.folder else Path(folder)

    def files(self) -> dict[str, RemoteFile]:
        from huggingface_hub import constants

        candidates = list(ADAPTER_FILES)
        if not constants.HF_HUB_OFFLINE:  # sizes from the Hub before anything is downloaded
            from huggingface_hub import HfApi
            from huggingface_hub.errors import HfHubHTTPError
            from huggingface_hub.hf_api import RepoFile

            try:
                infos = HfApi().get_paths_info(
                    self.repo_id, [self._path(n) for n in candidates], revision=self.url.revision
                )
            except (HfHubHTTPError, OSError, ValueError) as exc:
                raise AdapterRejected(
                    "source_unavailable", f"{self.url}: the Hub could not list it ({type(exc).__name__}: {exc})."
                ) from None
            return {
                PurePosixPath(i.path).name: RemoteFile(PurePosixPath(i.path).name, int(i.size), str(i.blob_id))
                for i in infos
                if isinstance(i, RepoFile)
            }
        snapshot = self._download(candidates)  # offline: the cache is the listing
        return {
            name: RemoteFile(name, (snapshot / name).stat().st_size, os.path.realpath(snapshot / name))
            for name in candidates
            if (snapshot / name).is_file()
        }

    def fetch(self, names: list[str], into: Path) -> None:
        snapshot = self._download(names)
        for name in names:
            if not (snapshot / name).is_file():
                raise AdapterRejected("source_unavailable", f"{self.url}: {name} is not in the repository.")
            shutil.copyfile(snapshot / name, into / name)

    def subdirectories(self) -> list[str]:
        raise AdapterRejected("bad_source", "a watched source is an object store location, not a Hub repository.")


def open_source(url: SourceURL, config: SourceConfig) -> Source:
    return HubSource(url, config) if url.scheme == HUB_SCHEME else FsspecSource(url, config)


def download(source: Source, into: Path, listed: dict[str, RemoteFile] | None = None) -> dict[str, RemoteFile]:
    """Fetch the adapter at ``source`` into the empty directory ``into``: known files only, each
    bounded before and after it is fetched, the whole within ten times the per-file timeout.
    ``listed``: its files as the caller just listed them (else listed here)."""
    started = time.monotonic()
    listed = source.files() if listed is None else listed
    names = _wanted(listed)

    def take(batch: list[str]) -> None:
        for name in batch:
            if listed[name].size > source.config.bound(name):
                raise AdapterRejected(
                    "too_large",
                    f"{source.url}/{name} is {listed[name].size} bytes (bound {source.config.bound(name)}).",
                )
        source.fetch(batch, into)
        for name in batch:
            size = (into / name).stat().st_size
            if size > source.config.bound(name) or size != listed[name].size:
                raise AdapterRejected("source_changed", f"{source.url}/{name} changed while it was fetched.")
        if time.monotonic() - started > 10 * source.config.timeout:
            raise AdapterRejected(
                "source_timeout", f"fetching {source.url} took longer than {10 * source.config.timeout:g} s."
            )

    take(names)
    extra = [f for f in gate_files(into) if f not in names and f in listed]  # the gate's test set
    if extra:
        take(extra)
    return {name: listed[name] for name in (*names, *extra)}


def fetch_to_staging(url: str, adapters_dir: Path, config: SourceConfig, *, requested: bool) -> Path:
    """The adapter at ``url`` downloaded into a staging directory of ``adapters_dir`` (ignored by
    the watcher, on the same file system as the live directory); the caller removes it
    (``shutil.rmtree``). ``requested``: a request names it, so it must be under --adapter-sources."""
    parsed = SourceURL.parse(url)
    config.check(parsed, requested=requested)
    return stage_from(open_source(parsed, config), adapters_dir)


def stage_from(source: Source, adapters_dir: Path, listed: dict[str, RemoteFile] | None = None) -> Path:
    """``download`` into a fresh staging directory of ``adapters_dir``; nothing is left on failure."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    staging = adapters_dir / f"{STAGING_PREFIX}fetch-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        download(source, staging, listed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


@contextmanager
def fetched(url: str, adapters_dir: Path, config: SourceConfig, *, requested: bool) -> Iterator[Path]:
    """``fetch_to_staging``, removed when the block ends."""
    staging = fetch_to_staging(url, adapters_dir, config, requested=requested)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""Traffic splits between versions of one adapter name: canaries and A/B tests.

A split lives in the adapter's own directory, ``<dir>/<name>/split.json``, so the directory stays
the one source of truth: the watcher applies a file a user writes, the admin API and the CLI
write the same file, and a restart comes back to the same split. Two forms are accepted:

- ``{"versions": {"5": 90, "6": 10}}``: explicit shares (whole percentages summing to 100) of kept
  versions; the version serving when the split starts is its *baseline*, where ``abort`` returns;
- ``{"canary": 10}``: published together with new weights (``train --canary 10``), the new
  version takes 10 % and the version serving before it the rest (its baseline). The registry
  rewrites the file in the explicit form, so a restart does not have to guess which version was
  "before".

Either may add ``"auto_abort"`` and ``"auto_promote"`` (off unless present): fixed rate
thresholds over a window (``CanaryWatch`` in ``rollout.py``), and verdicts by evidence, the
difference between versions with its interval (``evidence.py``)::

    "auto_abort": {"margins": {"feedback": 0.05, "error_rate": 0.01}, "min_sample": 30},
    "auto_promote": {"margins": {"feedback": 0.0}, "min_sample": 30, "confidence": 0.95}

Assignment is sticky per end user: the user's id, hashed with the split's ``salt``, picks a bucket
out of 10,000, and buckets are handed to versions by cumulative share. The same user therefore
stays on the same version for the life of the split; a new split (a new salt) reshuffles. A
request with no user id is assigned at random.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import AdapterRejected
from ..jsonbounds import JSONRefused, loads_bounded
from ..terms.layout import SPLIT_FILE
from .durable import fsync_path
from .evidence import EvidenceRule, parse_margins

BUCKETS = 10_000
_MAX_VARIANTS = 8
_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class AutoAbort:
    """Abort the split when a non-baseline version does worse than this over ``window_s``."""

    max_error_rate: float | None = None  # server errors (5xx) / requests
    max_negative_rate: float | None = None  # negative feedback / feedback
    window_s: float = 300.0
    min_events: int = 20  # requests (or feedback) in the window before a rate counts
    evidence: EvidenceRule | None = None  # abort when a version is surely worse by a margin

    def summary(self) -> dict[str, Any]:
        return {
            "max_error_rate": self.max_error_rate,
            "max_negative_rate": self.max_negative_rate,
            "window_s": self.window_s,
            "min_events": self.min_events,
            **(self.evidence.summary() if self.evidence is not None else {}),
        }


@dataclass(frozen=True)
class Split:
    """Shares of versions of ``name``; ``weights`` is ((version, percent), ...) in file order."""

    name: str
    weights: tuple[tuple[int, int], ...]
    baseline: int
    salt: str
    created: float
    auto_abort: AutoAbort | None = None
    auto_promote: EvidenceRule | None = None  # promote when a version is surely better by a margin

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(version for version, _ in self.weights)

    def assign(self, user: str | None) -> int:
        """The version that answers ``user`` (the same one every time); random without a user."""
        if user is None:
            bucket = random.randrange(BUCKETS)
        else:
            digest = hashlib.blake2b(f"{self.salt}\x00{user}".encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest, "big") % BUCKETS
        threshold = 0
        for version, percent in self.weights:
            threshold += percent * (BUCKETS // 100)
            if bucket < threshold:
                return version
        return self.weights[-1][0]  # unreachable: shares sum to 100

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": {str(v): p for v, p in self.weights},
            "baseline": self.baseline,
            "salt": self.salt,
            "created": self.created,
            **({"auto_abort": self.auto_abort.summary()} if self.auto_abort else {}),
            **({"auto_promote": self.auto_promote.summary()} if self.auto_promote else {}),
        }

    def summary(self) -> dict[str, Any]:
        return {**self.to_json(), "created": int(self.created)}


@dataclass(frozen=True)
class SplitSpec:
    """What a split file or request asks for, before it is checked against kept versions."""

    weights: tuple[tuple[int, int], ...] | None  # explicit shares
    canary: int | None  # or: the directory's version takes this percentage
    baseline: int | None = None
    salt: str | None = None
    created: float | None = None
    auto_abort: AutoAbort | None = None
    auto_promote: EvidenceRule | None = None

    def resolve(self, name: str, directory_version: int, serving: int | None, kept: set[int]) -> Split:
        """A ``Split`` of versions that exist (``kept`` plus the directory's); ``AdapterRejected``
        (reason ``bad_split``) naming what is wrong otherwise. ``serving`` is the version that
        served before: a canary's baseline, and an explicit split's unless the file names one."""
        available = kept | {directory_version}
        if self.canary is not None:
            if serving is None or serving == directory_version:
                raise AdapterRejected(
                    "bad_split",
                    f"{name}: a canary needs an earlier version to split with; none is serving.",
                    param="split",
                )
            weights: tuple[tuple[int, int], ...] = ((serving, 100 - self.canary), (directory_version, self.canary))
        else:
            assert self.weights is not None
            weights = self.weights
        missing = [v for v, _ in weights if v not in available]
        if missing:
            raise AdapterRejected(
                "bad_split",
                f"{name}: the split names versions {missing} that are not kept; kept: {sorted(available)}.",
                param="split",
            )
        baseline = self.baseline if self.baseline is not None else serving
        if baseline is None or baseline not in available:
            baseline = weights[0][0]
        return Split(
            name,
            weights,
            baseline,
            self.salt or secrets.token_hex(8),
            self.created or time.time(),
            self.auto_abort,
            self.auto_promote,
        )


def split_in(
    name: str,
    source: Path | None,
    current: Split | None,
    kept: Callable[[], set[int]],
    serving: int | None,
    number: int,
) -> tuple[Split | None, bool]:
    """(the split the split file in ``source`` asks for when version ``number`` serves, whether
    the file must be rewritten in its explicit form). ``current`` is the split in force: the same
    file again keeps it (and its salt). ``serving`` is the version serving before ``number``; at a
    restart, the newest kept version older than ``number`` stands in. ``AdapterRejected`` when the
    file is bad or names versions that are not kept."""
    spec = read_split_file(source) if source is not None else None
    if spec is None:
        return None, False
    if current is not None and (spec.weights, spec.salt, spec.baseline) == (
        current.weights,
        current.salt,
        current.baseline,
    ):
        rules = (spec.auto_abort, spec.auto_promote)
        if rules == (current.auto_abort, current.auto_promote):
            return current, False
        return replace(current, auto_abort=spec.auto_abort, auto_promote=spec.auto_promote), False
    numbers = kept()
    if serving is None or serving == number:
        serving = max((n for n in numbers if n < number), default=serving)
    split = spec.resolve(name, number, serving, numbers)
    return split, spec.canary is not None or spec.salt is None or spec.baseline is None


class _EvidenceFile(BaseModel):
    """The evidence part of ``auto_abort``, and ``auto_promote``: margins, sample, confidence."""

    model_config = ConfigDict(extra="forbid")

    margins: dict[str, Any] | None = None
    min_sample: int = 30
    confidence: float = 0.95

    @field_validator("margins", mode="before")
    @classmethod
    def _margins(cls, value: object) -> object:
        if value is not None and (not isinstance(value, dict) or not value):
            raise ValueError('margins map metrics to margins, e.g. {"feedback": 0.05}')
        if value is not None:
            parse_margins(value, "margins")
        return value

    @field_validator("min_sample", mode="before")
    @classmethod
    def _sample(cls, value: object) -> object:
        if not _is_int(value) or not 2 <= value <= 10_000_000:  # type: ignore[operator]
            raise ValueError("min_sample must be a whole number from 2")
        return value

    @field_validator("confidence", mode="before")
    @classmethod
    def _confidence(cls, value: object) -> object:
        if not _is_number(value) or not 0.5 <= value < 1:  # type: ignore[operator]
            raise ValueError("confidence must be at least 0.5 and below 1, e.g. 0.95")
        return value

    def rule(self) -> EvidenceRule | None:
        if not self.margins:
            return None
        return EvidenceRule(parse_margins(self.margins, "margins"), self.min_sample, self.confidence)


class _AutoPromoteFile(_EvidenceFile):
    """``auto_promote`` in a split file or request: margins are required."""

    @model_validator(mode="after")
    def _has_margins(self) -> _AutoPromoteFile:
        if not self.margins:
            raise ValueError('"auto_promote" needs margins, e.g. {"margins": {"feedback": 0.0}}')
        return self


class _AutoAbortFile(_EvidenceFile):
    """``auto_abort`` in a split file or request."""

    max_error_rate: float | None = None
    max_negative_rate: float | None = None
    window_s: float = 300.0
    min_events: int = 20

    @field_validator("max_error_rate", "max_negative_rate", mode="before")
    @classmethod
    def _fraction(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):  # type: ignore[operator]
            raise ValueError(f'"auto_abort.{info.field_name}" must be a fraction between 0 and 1')
        return value

    @field_validator("window_s", mode="before")
    @classmethod
    def _window(cls, value: object) -> object:
        if not _is_number(value) or not 1 <= value <= 7 * 86400:  # type: ignore[operator]
            raise ValueError('"auto_abort.window_s" must be between 1 second and 7 days')
        return value

    @field_validator("min_events", mode="before")
    @classmethod
    def _events(cls, value: object) -> object:
        if not _is_int(value) or value < 1:  # type: ignore[operator]
            raise ValueError('"auto_abort.min_events" must be a positive whole number')
        return value

    @model_validator(mode="after")
    def _a_rate(self) -> _AutoAbortFile:
        if self.max_error_rate is None and self.max_negative_rate is None and not self.margins:
            raise ValueError('"auto_abort" needs max_error_rate, max_negative_rate or margins')
        return self


class _SplitFile(BaseModel):
    """A split file's (or an admin request's) JSON: explicit shares or a canary percentage."""

    model_config = ConfigDict(extra="forbid")

    versions: dict[str, int] | None = None
    canary: int | None = None
    baseline: int | None = None
    salt: str | None = Field(default=None, min_length=1, max_length=64)
    created: float | None = None
    auto_abort: _AutoAbortFile | None = None
    auto_promote: _AutoPromoteFile | None = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, raw: object) -> object:
        if not isinstance(raw, dict):
            raise ValueError("a split must be a JSON object")
        unknown = set(raw) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        if (raw.get("versions") is None) == (raw.get("canary") is None):
            raise ValueError('give either "versions" ({"5": 90, "6": 10}) or "canary" (a percentage), not both')
        return raw

    @field_validator("versions", mode="before")
    @classmethod
    def _shares(cls, versions: object) -> object:
        if versions is None:
            return None
        if not isinstance(versions, dict) or not 2 <= len(versions) <= _MAX_VARIANTS:
            raise ValueError(f'"versions" must map 2 to {_MAX_VARIANTS} version numbers to percentages')
        for key, share in versions.items():
            if not isinstance(key, str) or not _VERSION_NUMBER.fullmatch(key):
                raise ValueError(f"{key!r} is not a version number")
            if not _is_int(share) or not 0 <= share <= 100:
                raise ValueError(f"the share of version {key} must be a whole percentage 0-100, not {share!r}")
        if (total := sum(versions.values())) != 100:
            raise ValueError(f"the shares must sum to 100, not {total}")
        return versions

    @field_validator("canary", mode="before")
    @classmethod
    def _canary(cls, canary: object) -> object:
        if canary is not None and (not _is_int(canary) or not 0 < canary < 100):  # type: ignore[operator]
            raise ValueError(f'"canary" must be a whole percentage between 1 and 99, not {canary!r}')
        return canary

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline(cls, baseline: object) -> object:
        if baseline is not None and not _is_int(baseline):
            raise ValueError('"baseline" must be a version number')
        return baseline

    @field_validator("created", mode="before")
    @classmethod
    def _created(cls, created: object) -> object:
        if created is not None and (not _is_number(created) or not 0 <= created < 1e11):  # type: ignore[operator]
            raise ValueError('"created" must be a time in seconds')
        return created


def parse_split(raw: object, where: str) -> SplitSpec:
    """Check a split's JSON (a file or an API body); ``AdapterRejected("bad_split")`` saying why."""
    try:
        checked = _SplitFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        field = ".".join(str(part) for part in first["loc"])
        where = f"{where}: {field}" if field else where
        raise AdapterRejected("bad_split", param="split", message=f"{where}: {message}.") from None
    weights = None if checked.versions is None else tuple((int(k), v) for k, v in checked.versions.items())
    abort = checked.auto_abort
    return SplitSpec(
        weights,
        checked.canary,
        checked.baseline,
        checked.salt,
        checked.created,
        None
        if abort is None
        else AutoAbort(abort.max_error_rate, abort.max_negative_rate, abort.window_s, abort.min_events, abort.rule()),
        None if checked.auto_promote is None else checked.auto_promote.rule(),
    )


def read_split_file(directory: Path) -> SplitSpec | None:
    """The split file in an adapter's directory; None when there is none."""
    path = directory / SPLIT_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    where = f"{directory.name}: {SPLIT_FILE}"
    if not path.is_file():
        raise AdapterRejected("bad_split", param="split", message=f"{where} is not a regular file.")
    try:
        with path.open("rb") as file:
            raw = loads_bounded(file.read(_MAX_BYTES + 1), max_bytes=_MAX_BYTES, what=SPLIT_FILE)
    except JSONRefused as exc:
        raise AdapterRejected("bad_split", param="split", message=f"{directory.name}: {exc}.") from None
    return parse_split(raw, where)


def write_split_file(directory: Path, split: Split | None) -> None:
    """Replace (or, for None, remove) the split file in one rename, flushed to disk."""
    path = directory / SPLIT_FILE
    if split is None:
        if path.exists():
            path.unlink()
            fsync_path(directory)
        return
    tmp = directory / f".{SPLIT_FILE}.tmp"
    tmp.write_text(json.dumps(split.to_json(), indent=1))
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(directory)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float (JSON's NaN and Infinity, which Python reads, are not numbers here)."""
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


_VERSION_NUMBER = re.compile(r"[1-9][0-9]{0,8}")  # ASCII digits only: int("²") fails and int("٣") is 3

"""API keys: created once (shown once), stored as SHA-256 only, scoped to models, with limits.

``KeyStore`` is the database side (create, list, update, revoke), used by the CLI and the admin
API alike. ``KeyRing`` is what a running gateway checks requests against: every key held in
memory by hash, reloaded within half a second of any change to the table (a revocation from the
CLI or another gateway takes effect in under a second without a restart).

Why SHA-256 and not bcrypt: a key is 32 random bytes, so nobody can guess it by trying likely
passwords; a slow hash only protects low-entropy secrets. A lookup by the hash of what was
presented reveals nothing about stored keys through timing: the attacker cannot steer the hash.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from ..database.tables import api_keys
from ..terms.address import split_address

logger = logging.getLogger(__name__)

KEY_PREFIX = "lgw-"
_SHOWN = 8  # characters of a key kept in clear, after the prefix, so a person can tell keys apart
_LIMITS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month", "max_concurrent")


def new_secret() -> str:
    """A fresh key: the prefix and 32 random bytes (256 bits) in URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One stored key, without its secret."""

    id: str
    prefix: str
    name: str
    tenant: str
    models: tuple[str, ...] = ("*",)  # adapter names and globs; "*": every adapter
    base: bool = True  # may it use the base model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    max_concurrent: int | None = None
    expires: float | None = None
    enabled: bool = True
    revoked: bool = False
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def usable(self, now: float | None = None) -> bool:
        return self.enabled and not self.revoked and (self.expires is None or (now or time.time()) < self.expires)

    def may_use(self, model: str, bases: str | Collection[str]) -> bool:
        """Whether this key may call ``model`` (a base's id among ``bases``, an adapter name, or
        ``name@version``); ``base`` grants every base the gateway serves."""
        if model == bases if isinstance(bases, str) else model in bases:
            return self.base
        name = split_address(model)[0]
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.models)

    @property
    def limited(self) -> bool:
        return any(getattr(self, limit) is not None for limit in _LIMITS)

    def public(self) -> dict[str, Any]:
        """What lists and the admin API show: everything but the hash (the secret is never kept)."""
        out = asdict(self)
        out["models"] = list(self.models)
        return out


class KeyStore:
    """The ``api_keys`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, name: str, tenant: str | None = None, **options: Any) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the client)."""
        secret = new_secret()
        key = ApiKey(
            id="key_" + secrets.token_hex(6),
            prefix=secret[: len(KEY_PREFIX) + _SHOWN],
            name=name,
            tenant=tenant or name,
            **options,
        )
        with self.engine.begin() as connection:
            connection.execute(insert(api_keys).values({**_row(key), "key_hash": key_hash(secret)}))
        return key, secret

    def all(self) -> list[ApiKey]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys).order_by(api_keys.c.created)).all()
        return [_key(row._mapping) for row in rows]

    def find(self, ident: str) -> ApiKey:
        """A key by id, prefix or name, in that order of precedence (an id is unique, so a key whose
        name happens to equal another key's id never blocks it); ``LookupError`` when none or
        several match at the first level that matches at all."""
        keys = self.all()
        matches = [k for k in keys if k.id == ident] or [k for k in keys if k.prefix == ident]
        matches = matches or [k for k in keys if k.name == ident]
        if len(matches) != 1:
            raise LookupError(
                f"no key {ident!r}" if not matches else f"{len(matches)} keys match {ident!r}; use the id"
            )
        return matches[0]

    def update(self, ident: str, **changes: Any) -> ApiKey:
        key = self.find(ident)
        if key.revoked:
            raise ValueError(f"key {key.id} is revoked; create a new one")
        changed = replace(key, **changes, updated=time.time())
        with self.engine.begin() as connection:
            connection.execute(update(api_keys).where(api_keys.c.id == key.id).values(_row(changed)))
        return changed

    def revoke(self, ident: str) -> ApiKey:
        """Revoked for good (the row stays, so usage and the audit log still name it)."""
        key = self.find(ident)
        revoked = replace(key, enabled=False, revoked=True, updated=time.time())
        with self.engine.begin() as connection:
            connection.execute(update(api_keys).where(api_keys.c.id == key.id).values(_row(revoked)))
        return revoked

    def stamp(self) -> tuple[int, float]:
        """Changes to the table show in (rows, newest update): cheap enough to ask twice a second."""
        with self.engine.connect() as connection:
            count, newest = connection.execute(select(func.count(), func.max(api_keys.c.updated))).one()
        return int(count), float(newest or 0.0)

    def by_hash(self) -> dict[str, ApiKey]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(api_keys)).all()
        return {row._mapping["key_hash"]: _key(row._mapping) for row in rows}


class KeyRing:
    """The running gateway's view of the key store, refreshed by ``refresh`` (a background loop)."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._by_hash: dict[str, ApiKey] = {}
        self._stamp: tuple[int, float] | None = None
        self._lock = threading.Lock()
        self.refresh()

    @property
    def closed(self) -> bool:
        """Once the store holds a key (even a revoked one), requests need one: revoking the last key
        must not open the server."""
        return bool(self._by_hash)

    def refresh(self) -> bool:
        """Reload when the table changed; True when it did."""
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return False
        keys = self.store.by_hash()
        with self._lock:
            self._by_hash, self._stamp = keys, stamp
        return True

    def authenticate(self, secret: str) -> ApiKey | None:
        """The usable key ``secret`` is, or None (unknown, disabled, revoked or expired)."""
        key = self._by_hash.get(key_hash(secret))
        return key if key is not None and key.usable() else None

    def keys(self) -> list[ApiKey]:
        return list(self._by_hash.values())


def _row(key: ApiKey) -> dict[str, Any]:
    row = asdict(key)
    row["models"] = json.dumps(list(key.models))
    return row


def _key(row: Any) -> ApiKey:
    values = {name: row[name] for name in ApiKey.__dataclass_fields__}
    values["models"] = tuple(json.loads(values["models"]))
    return ApiKey(**values)

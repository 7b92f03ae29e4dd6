"""What a running gateway knows of its tenants: who a request is (``Principal``), what it may use,
its limits, its usage and the audit log, over the gateway's database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Engine

from ..errors import Unauthorized
from .audit import AuditLog
from .bearer import bearer_token, one_of
from .keys import KEY_PREFIX, ApiKey, KeyRing, KeyStore
from .limiter import Limiter, Ticket
from .usage import UsageLog
from .window_storage import DatabaseStorage

logger = logging.getLogger(__name__)
REFRESH_S = 0.5  # a change to the keys table (a revocation) is in force within this
RECHECK_S = 0.1  # at most one extra reload per this, for keys of ours the ring does not know yet


@dataclass(frozen=True)
class Principal:
    """Who sent a request. ``key`` None: an ``--api-key`` key, or an open server (everything, no limits)."""

    key: ApiKey | None = None

    @property
    def key_id(self) -> str:
        return self.key.id if self.key else ""

    @property
    def tenant(self) -> str:
        return self.key.tenant if self.key else ""

    @property
    def limited(self) -> bool:
        """Whether its key has limits to count a request against (``Tenancy.admit``)."""
        return self.key is not None and self.key.limited

    def may_use(self, model: str, bases: str | Collection[str]) -> bool:
        return self.key is None or self.key.may_use(model, bases)


ANYONE = Principal()


class Tenancy:
    def __init__(self, engine: Engine, flat_keys: list[bytes], limits_storage: str = "memory") -> None:
        self.engine = engine
        self.flat_keys = flat_keys
        self.store = KeyStore(engine)
        self.ring = KeyRing(self.store)
        self.limiter = Limiter(DatabaseStorage(engine) if limits_storage == "database" else None)
        self.usage = UsageLog(engine)
        self.audit = AuditLog(engine)
        self._recheck_lock = asyncio.Lock()
        self._rechecked = 0.0

    @property
    def closed(self) -> bool:
        """Whether requests need a key: an ``--api-key`` is set, or the key store holds one."""
        return bool(self.flat_keys) or self.ring.closed

    def authenticate(self, authorization: str) -> Principal:
        """The principal an ``Authorization`` header names; ``Unauthorized`` for none or a wrong one."""
        return self._principal(bearer_token(authorization))

    def _principal(self, presented: str | None) -> Principal:
        """``--api-key`` keys are compared in constant time, all of them; stored keys are found by the
        SHA-256 of what was presented (``keys.py``)."""
        if not self.closed:
            return ANYONE
        if presented is None:
            raise Unauthorized(Unauthorized.MISSING)
        if one_of(presented, self.flat_keys):
            return ANYONE
        stored = self.ring.authenticate(presented)
        if stored is None:
            raise Unauthorized(Unauthorized.WRONG)
        return Principal(stored)

    async def identify(self, authorization: str) -> Principal:
        """``authenticate``, but a key of ours (``lgw-...``) not known yet makes the ring reload first.

        So a key works on its first request, not half a second after ``keys create``, and the first
        key created turns an open server into a closed one for the request that presents it. The
        reload is throttled (one per ``RECHECK_S``, shared by requests that arrive together), so
        made-up keys cost the database a cheap query a few times a second at most."""
        presented = bearer_token(authorization)
        if presented is not None and presented.startswith(KEY_PREFIX):
            if self.closed:
                with contextlib.suppress(Unauthorized):  # a known key: its one lookup is the answer
                    return self._principal(presented)
            await self._recheck()
        return self._principal(presented)

    async def _recheck(self) -> None:
        async with self._recheck_lock:
            if time.monotonic() - self._rechecked < RECHECK_S:
                return
            try:
                await asyncio.to_thread(self.ring.refresh)
            except Exception:
                logger.exception("reloading API keys failed; keeping the previous set")
            self._rechecked = time.monotonic()

    async def admit(self, principal: Principal, reserve: int = 0) -> Ticket | None:
        """Count a request against its key's limits, reserving ``reserve`` tokens (``None``: the
        key has no limits)."""
        key = principal.key
        if key is None or not key.limited:
            return None
        return await self.limiter.run(lambda: self.limiter.admit(key, reserve))

    def record(self, principal: Principal, model: str, prompt: int, completion: int, error: bool) -> None:
        self.usage.record(principal.key_id, principal.tenant, model, prompt, completion, error)

    async def follow(self) -> None:
        """Reload the keys whenever the table changes (another process, the CLI): forever."""
        while True:
            try:
                if await asyncio.to_thread(self.ring.refresh):
                    logger.debug("API keys reloaded: %d", len(self.ring.keys()))
            except Exception:
                logger.exception("reloading API keys failed; keeping the previous set")
            await asyncio.sleep(REFRESH_S)

    def close(self) -> None:
        self.usage.close()

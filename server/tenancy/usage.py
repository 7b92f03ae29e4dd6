"""Usage per key, tenant, model and hour, for billing: ``lora-gateway usage`` and ``GET /v1/usage``.

Counting sits on every request, so it never waits on the database: requests add to an in-memory
tally that a writer thread folds into the ``usage`` table once a second (one upsert per key, model
and hour that changed), and several gateways add to the same rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from ..database.tables import usage

logger = logging.getLogger(__name__)
_FLUSH_S = 1.0
_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "errors")


@dataclass(frozen=True)
class UsageRow:
    key_id: str
    tenant: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._tally: defaultdict[tuple[str, str, str, float], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="usage-writer", daemon=True)
        self._writer.start()

    def record(self, key_id: str, tenant: str, model: str, prompt: int, completion: int, error: bool) -> None:
        hour = float(int(time.time()) // 3600 * 3600)
        with self._lock:
            row = self._tally[(key_id, tenant, model, hour)]
            row[0] += 1
            row[1] += prompt
            row[2] += completion
            row[3] += int(error)

    def flush(self) -> None:
        with self._lock:
            tally, self._tally = self._tally, defaultdict(lambda: [0, 0, 0, 0])
        if not tally:
            return
        try:
            self._write(tally)
        except Exception:  # the database is down: keep the counts for the next try
            with self._lock:
                for where, counts in tally.items():
                    row = self._tally[where]
                    for i, count in enumerate(counts):
                        row[i] += count
            raise

    def _write(self, tally: dict[tuple[str, str, str, float], list[int]]) -> None:
        with self.engine.begin() as connection:
            for (key_id, tenant, model, hour), counts in tally.items():
                values = dict(zip(_COLUMNS, counts, strict=True))
                statement = self._insert(usage).values(key_id=key_id, tenant=tenant, model=model, hour=hour, **values)
                statement = statement.on_conflict_do_update(
                    index_elements=[usage.c.key_id, usage.c.model, usage.c.hour],
                    set_={name: usage.c[name] + statement.excluded[name] for name in _COLUMNS},
                )
                connection.execute(statement)

    def report(self, since: float | None = None) -> list[UsageRow]:
        """Per key and model since ``since`` (hours that began before it are left out), largest first."""
        self.flush()
        sums = [func.sum(usage.c[name]).label(name) for name in _COLUMNS]
        query = select(usage.c.key_id, usage.c.tenant, usage.c.model, *sums).group_by(
            usage.c.key_id, usage.c.tenant, usage.c.model
        )
        if since is not None:
            query = query.where(usage.c.hour >= since)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        out = [UsageRow(r.key_id, r.tenant, r.model, *(int(getattr(r, n) or 0) for n in _COLUMNS)) for r in rows]
        return sorted(out, key=lambda row: (-row.total_tokens, row.tenant, row.model))

    def close(self) -> None:
        self._closed.set()
        self._writer.join(timeout=10)
        self.flush()

    def _write_loop(self) -> None:
        while not self._closed.wait(_FLUSH_S):
            try:
                self.flush()
            except Exception:  # the database is down: the counts wait for the next second
                logger.exception("usage: writing the tally failed; retrying")

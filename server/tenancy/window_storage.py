"""Storages for the ``limits`` library's fixed windows: in the gateway's database, so that several
gateway processes (one SQLite file on one host, or PostgreSQL anywhere) count against the same
windows, and in the process.

``limits`` ships Redis, Memcached, MongoDB and in-memory storages but none in SQL; ``DatabaseStorage``
is the fixed-window half of its ``Storage`` interface, one statement per call: an upsert that
starts a new window when the old one has ended, atomic in both databases. ``ProcessStorage`` is the
same in a dict: ``limits``' own ``MemoryStorage`` starts a timer thread to expire keys whenever it
counts, which costs a tenth of a millisecond per request on the gateway's hot path.
"""

from __future__ import annotations

import threading
import time

from limits.storage import Storage
from sqlalchemy import Engine, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from ..database.tables import rate_windows


class DatabaseStorage(Storage):
    STORAGE_SCHEME = ["lora-gateway-database"]

    def __init__(self, engine: Engine) -> None:
        super().__init__(None, wrap_exceptions=False)
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        table = rate_windows
        ended = table.c.expiry <= now
        upsert = self._insert(table).values(key=key, count=amount, expiry=now + expiry)
        statement = upsert.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": case((ended, amount), else_=table.c.count + amount),
                "expiry": case((ended, now + expiry), else_=table.c.expiry),
            },
        ).returning(table.c.count)
        with self.engine.begin() as connection:
            return int(connection.execute(statement).scalar_one())

    def get(self, key: str) -> int:
        query = select(rate_windows.c.count).where(rate_windows.c.key == key, rate_windows.c.expiry > time.time())
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    def get_expiry(self, key: str) -> float:
        now = time.time()
        query = select(rate_windows.c.expiry).where(rate_windows.c.key == key)
        with self.engine.connect() as connection:
            expiry = connection.execute(query).scalar()
        return float(expiry) if expiry is not None and expiry > now else now

    def check(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(select(1))
            return True
        except SQLAlchemyError:
            return False

    def reset(self) -> int | None:
        with self.engine.begin() as connection:
            return int(connection.execute(delete(rate_windows)).rowcount or 0)

    def clear(self, key: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(rate_windows).where(rate_windows.c.key == key))

    def purge(self) -> int:
        """Delete windows that have ended (the limiter never reads them again)."""
        with self.engine.begin() as connection:
            return int(
                connection.execute(delete(rate_windows).where(rate_windows.c.expiry <= time.time())).rowcount or 0
            )


class ProcessStorage(Storage):
    """Fixed windows in this process: a dict and a lock, expired windows dropped as it grows."""

    STORAGE_SCHEME = ["lora-gateway-process"]
    _SWEEP_AT = 10_000

    def __init__(self) -> None:
        super().__init__(None, wrap_exceptions=False)
        self._windows: dict[str, list[float]] = {}  # key -> [count, expiry]
        self._lock = threading.Lock()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            window = self._windows.get(key)
            if window is None or window[1] <= now:
                if len(self._windows) >= self._SWEEP_AT:
                    self._windows = {k: w for k, w in self._windows.items() if w[1] > now}
                window = self._windows[key] = [0, now + expiry]
            window[0] += amount
            return int(window[0])

    def get(self, key: str) -> int:
        window = self._windows.get(key)
        return int(window[0]) if window is not None and window[1] > time.time() else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        window = self._windows.get(key)
        return window[1] if window is not None and window[1] > now else now

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count, self._windows = len(self._windows), {}
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)

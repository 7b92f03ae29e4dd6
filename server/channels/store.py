"""A bounded, time-limited map: WeCom's retries are remembered, but never without limit."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringStore(Generic[K, V]):
    """At most ``max_entries`` items, each forgotten ``ttl`` seconds after it was stored.

    The oldest item goes first when the store is full; ``on_evict`` hears about every item that
    leaves (expired or pushed out), so owners can release what the item holds.
    """

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        *,
        on_evict: Callable[[V], None] = lambda value: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._on_evict = on_evict
        self._clock = clock

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def get(self, key: K) -> V | None:
        self._expire()
        item = self._items.get(key)
        return None if item is None else item[1]

    def setdefault(self, key: K, value: V) -> tuple[V, bool]:
        """(the value stored under ``key``, whether it was stored just now)."""
        existing = self.get(key)
        if existing is not None:
            return existing, False
        self.put(key, value)
        return value, True

    def put(self, key: K, value: V) -> None:
        """Store ``value`` under ``key``, replacing what was there, with a fresh lifetime."""
        self._items.pop(key, None)
        self._items[key] = (self._clock(), value)
        while len(self._items) > self.max_entries:
            self._on_evict(self._items.popitem(last=False)[1][1])

    def values(self) -> list[V]:
        self._expire()
        return [value for _, value in self._items.values()]

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl
        while self._items:
            stored, value = next(iter(self._items.values()))
            if stored > deadline:
                break
            self._items.popitem(last=False)
            self._on_evict(value)

"""Per-key limits: requests and tokens per minute, token quotas per day and month, concurrency.

Counting is the ``limits`` library's (the one behind Flask-Limiter and SlowAPI): fixed windows
that start at a key's first request in them. Where the counters live is ``--limits-storage``:
``memory`` (the default: one gateway process, microseconds per check; ``window_storage.py``) or ``database`` (the
gateway's database, ``window_storage.py``: every process sharing the database shares the windows;
about a millisecond per check on SQLite, run off the event loop). Concurrency is counted per process.

A request is admitted when its key's request window has room and each of its token windows can
hold the most the request may use (its reservation: the prompt's bytes, which bound its tokens
for a byte-level tokenizer, plus ``max_tokens`` for each choice), which is counted at once, atomically: 30
parallel requests cannot all pass a window that holds 5 of them. What it really used is settled at
the end (the rest given back; a prompt longer than its estimate charged as the tokens come), so a
stream is never cut mid-answer. OpenAI's ``x-ratelimit-*`` headers describe the minute windows
after the request was counted.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute, RateLimitItemPerMonth
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter

from ..errors import QuotaExceeded, RateLimited
from .keys import ApiKey
from .window_storage import ProcessStorage

T = TypeVar("T")
_CHARGE_EVERY = 16  # tokens: a stream is charged in steps this size (and at its end)


@dataclass(frozen=True)
class _Window:
    name: str  # requests, tokens, tokens_per_day, tokens_per_month
    item: RateLimitItem


def _windows(key: ApiKey) -> tuple[_Window | None, list[_Window]]:
    requests = _Window("requests", RateLimitItemPerMinute(key.requests_per_minute)) if key.requests_per_minute else None
    tokens = []
    if key.tokens_per_minute:
        tokens.append(_Window("tokens", RateLimitItemPerMinute(key.tokens_per_minute)))
    if key.tokens_per_day:
        tokens.append(_Window("tokens_per_day", RateLimitItemPerDay(key.tokens_per_day)))
    if key.tokens_per_month:
        tokens.append(_Window("tokens_per_month", RateLimitItemPerMonth(key.tokens_per_month)))
    return requests, tokens


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``1h2m3s``."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class Limiter:
    def __init__(self, storage: Storage | None = None) -> None:
        self.storage = storage or ProcessStorage()
        self.blocking = not isinstance(self.storage, ProcessStorage)  # a database: keep it off the event loop
        self._strategy = FixedWindowRateLimiter(self.storage)
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call) if self.blocking else call()

    def admit(self, key: ApiKey, reserve: int = 0) -> Ticket:
        """Count one request of ``key`` and reserve ``reserve`` tokens in each token window, or
        raise 429 (``RateLimited``, ``QuotaExceeded``) with ``Retry-After`` and the
        ``x-ratelimit-*`` headers, counting nothing."""
        requests, tokens = _windows(key)
        for window in tokens:
            if not self._strategy.test(window.item, key.id, window.name):
                raise self._refusal(key, window)
        if key.max_concurrent is not None:
            with self._lock:
                if self._running[key.id] >= key.max_concurrent:
                    error = RateLimited(
                        f"Rate limit reached for {key.name}: {key.max_concurrent} concurrent requests at most.",
                        retry_after=1,
                    )
                    error.headers = self.headers(key)
                    raise error
                self._running[key.id] += 1
        if requests is not None and not self._strategy.hit(requests.item, key.id, requests.name):
            self._release(key)
            raise self._refusal(key, requests)
        reserved: list[_Window] = []
        for window in tokens if reserve > 0 else []:
            reserved.append(window)
            if not self._strategy.hit(window.item, key.id, window.name, cost=reserve):
                self.give_back(key, reserved, reserve)
                if requests is not None:
                    self.give_back(key, [requests], 1)
                self._release(key)
                raise self._refusal(key, window, reserve)
        return Ticket(self, key, tokens, self.headers(key), charged=reserve if tokens else 0)

    def _refusal(self, key: ApiKey, window: _Window, reserve: int = 0) -> RateLimited:
        """The 429 for a spent ``window`` (or one without room for ``reserve`` tokens): a minute
        limit, or a daily or monthly quota."""
        stats = self._strategy.get_window_stats(window.item, key.id, window.name)
        wait = stats.reset_time - time.time()
        limit = window.item.amount
        needs = f" This request may use {reserve} tokens and {stats.remaining} remain." if reserve else ""
        kind: type[RateLimited] = RateLimited
        if reserve > limit:
            message = (
                f"Request too large for {key.name}: it may use {reserve} tokens (its prompt's bytes plus "
                f"max_tokens for each choice), above the limit of {limit}; lower max_tokens."
            )
        elif window.name in ("requests", "tokens"):
            message = (
                f"Rate limit reached for {key.name} on {window.name} per min: limit {limit}.{needs} "
                f"Please try again in {duration(wait)}."
            )
        else:
            period = "day" if window.name == "tokens_per_day" else "month"
            kind, message = (
                QuotaExceeded,
                (
                    f"You exceeded the token quota of {key.name} for this {period} ({limit} tokens).{needs} "
                    f"It renews in {duration(wait)}."
                ),
            )
        error = kind(message, retry_after=wait)
        error.headers = self.headers(key)
        return error

    def headers(self, key: ApiKey) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` for the minute windows ``key`` has."""
        requests, tokens = _windows(key)
        now, out = time.time(), {}
        minute = [w for w in [requests, *tokens] if w is not None and w.name in ("requests", "tokens")]
        for window in minute:
            stats = self._strategy.get_window_stats(window.item, key.id, window.name)
            out[f"x-ratelimit-limit-{window.name}"] = str(window.item.amount)
            out[f"x-ratelimit-remaining-{window.name}"] = str(stats.remaining)
            out[f"x-ratelimit-reset-{window.name}"] = duration(stats.reset_time - now)
        return out

    def charge(self, key: ApiKey, windows: list[_Window], tokens: int) -> None:
        for window in windows:
            self._strategy.hit(window.item, key.id, window.name, cost=tokens)

    def give_back(self, key: ApiKey, windows: list[_Window], tokens: int) -> None:
        """Return ``tokens`` to each window (a reservation that was not used); never below zero."""
        for window in windows:
            storage_key = window.item.key_for(key.id, window.name)
            left = self.storage.incr(storage_key, window.item.get_expiry(), amount=-tokens)
            if left < 0:  # the window renewed meanwhile: the reservation was not in it
                self.storage.incr(storage_key, window.item.get_expiry(), amount=-left)

    def _release(self, key: ApiKey) -> None:
        if key.max_concurrent is None:
            return
        with self._lock:
            self._running[key.id] -= 1
            if self._running[key.id] <= 0:
                del self._running[key.id]


@dataclass
class Ticket:
    """One admitted request: its tokens are charged as they come, its slot freed at the end."""

    limiter: Limiter
    key: ApiKey
    windows: list[_Window]
    headers: dict[str, str]
    charged: int = 0
    _released: bool = field(default=False, repr=False)

    async def charge(self, total_tokens: int, final: bool = False) -> None:
        """Bring the charge up to ``total_tokens`` (prompt + completion so far): past the
        reservation in steps while streaming; exactly at the end, the unused rest given back."""
        due = total_tokens - self.charged
        if not self.windows or due == 0 or (not final and due < _CHARGE_EVERY):
            return
        self.charged = total_tokens
        if due > 0:
            await self.limiter.run(lambda: self.limiter.charge(self.key, self.windows, due))
        else:
            await self.limiter.run(lambda: self.limiter.give_back(self.key, self.windows, -due))

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.limiter._release(self.key)

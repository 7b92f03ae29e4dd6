"""Rate limits, token quotas and concurrency per key (server/tenancy/limiter.py, window_storage.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from server.database import open_engine
from server.errors import QuotaExceeded, RateLimited
from server.tenancy.keys import ApiKey
from server.tenancy.limiter import Limiter, duration
from server.tenancy.window_storage import DatabaseStorage, ProcessStorage


def key(**limits: int) -> ApiKey:
    return ApiKey(id="key_1", prefix="lgw-x", name="shop-a", tenant="acme", **limits)  # type: ignore[arg-type]


def test_requests_per_minute_trip_at_the_limit_with_openai_headers() -> None:
    limiter, k = Limiter(), key(requests_per_minute=3)
    tickets = [limiter.admit(k) for _ in range(3)]
    assert [t.headers["x-ratelimit-remaining-requests"] for t in tickets] == ["2", "1", "0"]
    assert tickets[0].headers["x-ratelimit-limit-requests"] == "3"
    assert tickets[0].headers["x-ratelimit-reset-requests"] in {"59s", "1m0s"}
    with pytest.raises(RateLimited) as refused:
        limiter.admit(k)
    error = refused.value
    assert error.code == "rate_limit_exceeded" and error.status_code == 429 and 0 < error.retry_after <= 60
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_are_charged_as_they_come_and_stop_the_next_request() -> None:
    limiter, k = Limiter(), key(tokens_per_minute=100)
    ticket = limiter.admit(k)
    asyncio.run(ticket.charge(10))  # below the step: not yet charged
    assert ticket.charged == 0
    asyncio.run(ticket.charge(40))
    assert ticket.charged == 40 and limiter.headers(k)["x-ratelimit-remaining-tokens"] == "60"
    asyncio.run(ticket.charge(120, final=True))  # a request may end past the window: it is not cut
    assert limiter.headers(k)["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited, match="tokens per min: limit 100"):
        limiter.admit(k)


def test_a_spent_daily_quota_is_insufficient_quota() -> None:
    limiter, k = Limiter(), key(tokens_per_day=50)
    asyncio.run(limiter.admit(k).charge(50, final=True))
    with pytest.raises(QuotaExceeded) as refused:
        limiter.admit(k)
    assert refused.value.code == "insufficient_quota" and refused.value.error_type == "insufficient_quota"
    assert refused.value.retry_after > 3600  # renews with the day's window


def test_concurrency_is_bounded_and_freed() -> None:
    limiter, k = Limiter(), key(max_concurrent=2)
    first, _second = limiter.admit(k), limiter.admit(k)
    with pytest.raises(RateLimited, match="2 concurrent"):
        limiter.admit(k)
    first.release()
    first.release()  # idempotent
    limiter.admit(k)


def test_a_request_refused_by_its_rate_limit_leaves_no_concurrency_slot_taken() -> None:
    limiter, k = Limiter(), key(max_concurrent=1, requests_per_minute=1)
    limiter.admit(k).release()
    with pytest.raises(RateLimited, match="requests per min"):
        limiter.admit(k)  # the slot was taken before the minute window refused: it is given back
    raised = key(max_concurrent=1)  # the operator lifts the rpm limit (keys update): one may run now
    running = limiter.admit(raised)
    with pytest.raises(RateLimited, match="1 concurrent"):
        limiter.admit(raised)
    running.release()


def test_two_limiters_on_one_database_share_the_windows(tmp_path: Path) -> None:
    """What two gateway processes with --limits-storage database do: one window, counted by both."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    one, two = Limiter(DatabaseStorage(open_engine(url))), Limiter(DatabaseStorage(open_engine(url)))
    assert one.blocking and two.blocking
    k = key(requests_per_minute=4)
    for limiter in (one, two, one, two):
        limiter.admit(k)
    for limiter in (one, two):
        with pytest.raises(RateLimited):
            limiter.admit(k)
    assert one.headers(k)["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize("where", ["database", "process"])
def test_parallel_requests_reserve_their_maximum_so_a_quota_admits_only_what_it_holds(
    tmp_path: Path, where: str
) -> None:
    """30 requests at once, each of which may use 60 tokens, against 330 a day: 5 pass, on one
    gateway or two sharing a database. Each settles what it really used; the rest comes back."""
    from concurrent.futures import ThreadPoolExecutor

    if where == "database":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
        limiters = [Limiter(DatabaseStorage(open_engine(url))), Limiter(DatabaseStorage(open_engine(url)))]
    else:
        limiters = [Limiter()]
    k = key(tokens_per_day=330, tokens_per_minute=1000)

    def one(i: int) -> Any:
        try:
            return limiters[i % len(limiters)].admit(k, reserve=60)
        except RateLimited as refused:  # the quota, or the minute window while others hold reservations
            return refused

    with ThreadPoolExecutor(30) as pool:
        outcomes = list(pool.map(one, range(30)))
    admitted = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(admitted) == 5
    refusals = [str(o) for o in outcomes if isinstance(o, RateLimited)]
    assert len(refusals) == 25 and any("This request may use 60 tokens and" in r for r in refusals), refusals
    for ticket in admitted:
        asyncio.run(ticket.charge(40, final=True))  # each used 40 of its 60: 100 come back
    assert limiters[0].headers(k)["x-ratelimit-remaining-tokens"] == str(1000 - 200)
    assert len([limiters[0].admit(k, reserve=50), limiters[0].admit(k, reserve=50)]) == 2  # 300 of 330
    with pytest.raises(QuotaExceeded, match="may use 31 tokens and 30 remain"):
        limiters[0].admit(k, reserve=31)


def test_a_request_larger_than_its_window_is_refused_for_what_it_is() -> None:
    limiter, k = Limiter(), key(tokens_per_minute=100, requests_per_minute=5)
    with pytest.raises(RateLimited, match="Request too large for shop-a: it may use 500 tokens"):
        limiter.admit(k, reserve=500)
    assert limiter.headers(k)["x-ratelimit-remaining-requests"] == "5"  # nothing was counted
    assert limiter.headers(k)["x-ratelimit-remaining-tokens"] == "100"


@pytest.mark.parametrize("where", ["database", "process"])
def test_a_window_restarts_when_it_ends(tmp_path: Path, where: str) -> None:
    storage = (
        DatabaseStorage(open_engine(f"sqlite:///{tmp_path / 'g.db'}")) if where == "database" else ProcessStorage()
    )
    assert storage.incr("w", 60, 5) == 5 and storage.incr("w", 60, 2) == 7 and storage.get("w") == 7
    assert storage.get_expiry("w") > time.time() + 50
    assert storage.incr("ended", -1, 3) == 3  # a window that has already ended
    assert storage.get("ended") == 0
    assert storage.incr("ended", 60, 4) == 4 and storage.get("ended") == 4  # starts over
    storage.clear("w")
    assert storage.get("w") == 0 and storage.check()


def test_reset_durations_read_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0.2, 6, 60, 361, 3723)] == ["1s", "6s", "1m0s", "6m1s", "1h2m3s"]

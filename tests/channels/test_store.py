from __future__ import annotations

from server.channels.store import ExpiringStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_writer_wins_until_the_entry_expires() -> None:
    clock = Clock()
    store: ExpiringStore[str, str] = ExpiringStore(ttl=10, max_entries=100, clock=clock)
    assert store.setdefault("msg-1", "stream-a") == ("stream-a", True)
    clock.now = 9.9
    assert store.setdefault("msg-1", "stream-b") == ("stream-a", False)
    clock.now = 10.0
    assert store.get("msg-1") is None
    assert store.setdefault("msg-1", "stream-c") == ("stream-c", True)


def test_the_oldest_entries_leave_when_full_and_owners_hear_of_it() -> None:
    evicted: list[int] = []
    store: ExpiringStore[int, int] = ExpiringStore(ttl=60, max_entries=3, on_evict=evicted.append, clock=Clock())
    for i in range(5):
        store.setdefault(i, i * 10)
    assert len(store) == 3
    assert evicted == [0, 10]
    assert store.get(0) is None and store.get(4) == 40


def test_expired_entries_are_evicted_with_notice() -> None:
    clock = Clock()
    evicted: list[str] = []
    store: ExpiringStore[str, str] = ExpiringStore(ttl=5, max_entries=10, on_evict=evicted.append, clock=clock)
    store.setdefault("a", "A")
    clock.now = 3
    store.setdefault("b", "B")
    clock.now = 6
    assert store.values() == ["B"]
    assert evicted == ["A"]


def test_put_replaces_and_renews_the_lifetime() -> None:
    clock = Clock()
    store: ExpiringStore[str, tuple[str, ...]] = ExpiringStore(ttl=10, max_entries=2, clock=clock)
    store.put("user", ("turn 1",))
    clock.now = 8
    store.put("user", ("turn 1", "turn 2"))
    clock.now = 15  # 15 s after the first put, 7 after the second
    assert store.get("user") == ("turn 1", "turn 2")
    store.put("a", ())
    store.put("b", ())
    assert store.get("user") is None  # the oldest left when the store was full

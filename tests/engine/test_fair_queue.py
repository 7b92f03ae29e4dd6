"""Fair admission into the batch: between flows, a newcomer joining even a full batch (server/engine/fair_queue.py)."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from server.engine.fair_queue import FairQueue, crowded

_clock = itertools.count()


@dataclass
class FakeJob:
    flow: str
    rows_wanted: int = 1
    cost: int = 10
    cancelled: bool = False
    queued_at: float = field(default_factory=lambda: float(next(_clock)))

    def gone(self) -> bool:
        return self.cancelled


def test_a_newcomer_goes_before_a_flooders_backlog() -> None:
    queue: FairQueue[FakeJob] = FairQueue(batch_size=16)
    for _ in range(32):
        queue.push(FakeJob("tenant-a/shop-a"))
    running: Counter[str] = Counter()
    first = queue.take(running, free=16, budget=10_000)
    assert len(first) == 16 and running["tenant-a/shop-a"] == 16  # alone, a flow fills the batch
    queue.push(FakeJob("tenant-b/shop-b"))
    (admitted,) = queue.take(running, free=0, budget=10_000)
    assert admitted.flow == "tenant-b/shop-b"  # at the next step, one row past the batch, ahead of 16 older requests
    assert len(queue) == 16


def test_the_row_past_the_batch_is_one_newcomers_at_a_time() -> None:
    queue: FairQueue[FakeJob] = FairQueue(batch_size=8)
    for flow in ["a", "a", "b", "c", "d"]:
        queue.push(FakeJob(flow))
    running: Counter[str] = Counter({"a": 8})
    assert [job.flow for job in queue.take(running, free=0, budget=10_000)] == ["b"]  # a newcomer, not a's backlog
    assert queue.take(running, free=-1, budget=10_000) == []  # b's row is past the batch: nobody else
    running["a"] -= 1  # one of a's answers ended: the batch is full again, its spare row free
    assert [job.flow for job in queue.take(running, free=0, budget=10_000)] == ["c"]
    wide: FairQueue[FakeJob] = FairQueue(batch_size=8)
    wide.push(FakeJob("e", rows_wanted=2))
    assert wide.take(Counter({"a": 8}), free=0, budget=10_000) == []  # two rows do not fit in one
    assert [job.flow for job in wide.take(Counter({"a": 7}), free=1, budget=10_000)] == ["e"]
    fifo: FairQueue[FakeJob] = FairQueue(batch_size=8, fair=False)
    fifo.push(FakeJob("b"))
    assert fifo.take(Counter({"a": 8}), free=0, budget=10_000) == []  # first come, first served keeps no spare row


def test_free_slots_go_to_the_flow_holding_fewest_rows() -> None:
    queue: FairQueue[FakeJob] = FairQueue(batch_size=8)
    for flow in ["a"] * 6 + ["b"] * 6 + ["c"] * 6:
        queue.push(FakeJob(flow))
    running: Counter[str] = Counter({"a": 4})
    taken = [job.flow for job in queue.take(running, free=4, budget=10_000)]
    assert sorted(taken) == ["b", "b", "c", "c"] and running == Counter({"a": 4, "b": 2, "c": 2})


def test_cancelled_jobs_budget_and_wide_requests() -> None:
    queue: FairQueue[FakeJob] = FairQueue(batch_size=4)
    queue.push(FakeJob("a", cancelled=True))
    queue.push(FakeJob("a", cost=500))
    queue.push(FakeJob("b", cost=500))
    queue.push(FakeJob("c", rows_wanted=4))
    running: Counter[str] = Counter()
    taken = queue.take(running, free=4, budget=600)
    assert [j.flow for j in taken] == ["a"]  # the first always fits; the next would pass the prefill budget
    assert len(queue) == 2  # the cancelled job was dropped, not admitted
    taken = queue.take(running, free=3, budget=10_000)
    # c wants 4 rows: 2 free and the newcomer's one past the batch are too few; it waits for room
    # rather than being split.
    assert [j.flow for j in taken] == ["b"]
    assert queue.take(running, free=3, budget=10_000)[0].flow == "c"


def test_the_budget_counts_what_the_cost_function_says() -> None:
    """The engine passes the tokens a prefill computes (a cached prefix is not computed): jobs whose
    whole prompts pass the budget are admitted together when that part fits."""
    queue: FairQueue[FakeJob] = FairQueue(batch_size=8)
    for _ in range(3):
        queue.push(FakeJob("a", cost=500))
    uncached = {id(job): 40 for job in queue}
    running: Counter[str] = Counter()
    assert len(queue.take(running, free=8, budget=128, cost=lambda job: uncached[id(job)])) == 3
    queue.push(FakeJob("a", cost=500))
    queue.push(FakeJob("a", cost=500))
    assert len(queue.take(running, free=5, budget=128)) == 1  # by default, each job's own cost


def test_a_newcomer_is_prefilled_apart_from_flows_already_running() -> None:
    """A prefill holds up everybody: a newcomer's step takes only newcomers, and the flooder's next
    requests go in the step after. First come first served keeps no such rule."""
    for fair, expected in ((True, [["b", "b", "c"], ["a", "a"]]), (False, [["a", "a", "b", "b", "c"]])):
        queue: FairQueue[FakeJob] = FairQueue(batch_size=16, fair=fair)
        for flow in ["a", "a", "b", "b", "c"]:
            queue.push(FakeJob(flow))
        running: Counter[str] = Counter({"a": 10})
        steps = [[job.flow for job in queue.take(running, free=5, budget=10_000)] for _ in range(2)]
        assert [sorted(step) for step in steps if step] == expected


def test_newcomers_only_holds_the_flows_already_running() -> None:
    """While a newcomer's first text is not out, the engine asks for newcomers only: a running flow's
    backlog waits (in order) even with free slots, another newcomer does not. First come first
    served keeps no such rule."""
    for fair, expected in ((True, ["c"]), (False, ["a", "a", "c"])):
        queue: FairQueue[FakeJob] = FairQueue(batch_size=16, fair=fair)
        for flow in ["a", "a", "c"]:
            queue.push(FakeJob(flow))
        running: Counter[str] = Counter({"a": 10, "b": 1})
        taken = queue.take(running, free=5, budget=10_000, newcomers_only=True)
        assert [job.flow for job in taken] == expected
    queue = FairQueue(batch_size=16)
    for flow in ["a", "a"]:
        queue.push(FakeJob(flow))
    assert queue.take(Counter({"a": 10}), free=5, budget=10_000, newcomers_only=True) == []
    assert [job.flow for job in queue.take(Counter({"a": 10}), free=5, budget=10_000)] == ["a", "a"]


def test_newcomers_are_favoured_only_while_a_flow_holds_more_than_an_even_share() -> None:
    assert crowded(Counter(a=8), joining=1)  # a flooder and a newcomer: 8 rows against a share of 4
    assert crowded(Counter(a=1 + 19), joining=1)  # one row running and 19 waiting: a flooder all the same
    assert crowded(Counter(a=6, b=1), joining=1)  # share 3
    assert not crowded(Counter({f"f{i}": 1 for i in range(16)}), joining=1)  # sixteen equals and one more
    assert not crowded(Counter(a=2, b=2, c=2, d=2), joining=1)  # share 2: nobody holds more
    assert not crowded(Counter(a=1), joining=1)
    assert not crowded(Counter(), joining=3)  # nothing running: nobody to favour anyone over

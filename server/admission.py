"""Fair admission in front of vLLM: at most ``--max-loras`` adapters in flight, the rest queued per
tenant and admitted in turn.

vLLM batches at most ``max_loras`` adapters at once and serves the rest first come, first served:
when more adapters are wanted than that, one tenant's flood on one adapter decides when everyone
else's adapters get a slot. The gateway therefore admits a request for an adapter already in
flight at once, a new adapter while a slot is free, and otherwise queues it under its flow (a
tenant on one model). The least recently admitted adapter in flight is then asked to *yield*: it
takes no new request until its running ones end, its slot goes to the queue, flows taking turns
(round-robin), and the yielded adapter's own requests wait their turn like any other. The base
model needs no slot. A flow may have ``--max-queued-requests`` waiting (503 ``queue_full`` past it).
The embedded engine does the same inside its batch (``engine/fair_queue.py``, ``registry/residency.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from .errors import Overloaded


@dataclass
class _Waiter:
    adapter: str
    flow: str
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class AdapterGate:
    def __init__(
        self, slots: int, max_queued: int, waited: Callable[[str, float], None] = lambda _adapter, _s: None
    ) -> None:
        self.slots = slots
        self.max_queued = max_queued
        self._waited = waited  # told each queued request's adapter and wait, in seconds
        self._active: OrderedDict[str, int] = OrderedDict()  # adapter -> requests in flight, oldest first
        self._yielding: set[str] = set()
        self._flows: OrderedDict[str, deque[_Waiter]] = OrderedDict()  # round-robin: the next flow is first

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._flows.values())

    def in_flight(self) -> dict[str, int]:
        return dict(self._active)

    @contextlib.asynccontextmanager
    async def admit(self, adapter: str | None, flow: str) -> AsyncIterator[None]:
        """Hold a slot for ``adapter`` (None: the base, which needs none) while the request runs."""
        if adapter is None:
            yield
            return
        if self._may_enter(adapter):
            self._enter(adapter)
        else:
            await self._wait(adapter, flow)
        try:
            yield
        finally:
            self._leave(adapter)

    def _may_enter(self, adapter: str) -> bool:
        if adapter in self._active:
            return adapter not in self._yielding
        return len(self._active) < self.slots and not self._flows

    def _enter(self, adapter: str) -> None:
        self._active[adapter] = self._active.get(adapter, 0) + 1

    async def _wait(self, adapter: str, flow: str) -> None:
        queue = self._flows.get(flow)
        if queue is not None and len(queue) >= self.max_queued:
            raise Overloaded(
                f"{self.max_queued} of your requests are already waiting for an adapter slot; retry shortly.",
                retry_after=1,
            )
        waiter = _Waiter(adapter, flow)
        self._flows.setdefault(flow, deque()).append(waiter)
        self._ask_to_yield(adapter)
        self._dispatch()
        started = time.perf_counter()
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._leave(adapter)  # granted as it was cancelled: give the slot back
            else:
                self._forget(waiter)
            raise
        self._waited(adapter, time.perf_counter() - started)

    def _ask_to_yield(self, wanted: str) -> None:
        """One adapter in flight drains for the queue at a time (the oldest), unless one already is."""
        if self._yielding or wanted in self._active:
            return
        victim = next((name for name in self._active if name != wanted), None)
        if victim is not None and len(self._active) >= self.slots:
            self._yielding.add(victim)

    def _leave(self, adapter: str) -> None:
        left = self._active[adapter] - 1
        if left:
            self._active[adapter] = left
            return
        del self._active[adapter]
        self._yielding.discard(adapter)
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant queued requests: those of adapters in flight (not yielding) at once; new adapters into
        free slots, flows taking turns."""
        progress = True
        while progress and self._flows:
            progress = False
            for flow in list(self._flows):
                queue = self._flows[flow]
                head = queue[0]
                in_flight = head.adapter in self._active and head.adapter not in self._yielding
                if not in_flight and (head.adapter in self._active or len(self._active) >= self.slots):
                    continue
                queue.popleft()
                if not queue:
                    del self._flows[flow]
                else:
                    self._flows.move_to_end(flow)  # its next request waits for the other flows' turns
                self._enter(head.adapter)
                head.granted.set_result(None)
                progress = True
                break
        if self._flows and not self._yielding:
            self._ask_to_yield(next(iter(self._flows.values()))[0].adapter)

    def _forget(self, waiter: _Waiter) -> None:
        queue = self._flows.get(waiter.flow)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._flows[waiter.flow]
        if not self._flows:
            self._yielding.clear()  # nobody waits any more: nothing needs to drain

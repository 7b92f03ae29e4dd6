"""Fair admission into the embedded engine's batch: between flows (a tenant on one model), not first
come first served.

With one FIFO, a tenant that sends 32 requests at once puts every other tenant's request behind
all 32 (SGLang's time to first token went from 40 ms to 6.3 s that way). Here each flow keeps its
own FIFO, and a free batch slot goes to the waiting flow that holds the fewest running rows (ties:
the flow whose head waited longest), which is deficit round-robin with a quantum of one row.
A flow alone may fill every slot, and a newcomer (a flow that holds no rows) may still join a full
batch of four or more as one row past it, so it starts at the next decoding step instead of waiting
for one of the flooder's answers to end; only one such row at a time. An earlier design kept one
slot empty for newcomers instead: a lone tenant's burst of ``batch_size`` then ran one short, its
last request waiting a whole answer for the kept slot: in a burst of 8 on a batch of 8 (the
benchmark model on 2 cores) its time to first token was 0.78 s, and is 0.16 s without the kept slot.
A newcomer is also prefilled on its own: when a flow that holds no rows is admitted, that step's
prefill takes only other such flows, and the flooder's next requests wait one step. A prefill
holds up everybody, so this keeps the newcomer's own wait to its own prompt. For the same reason
the engine then holds the busy flows' prefills (``take(..., newcomers_only=True)``) until the
newcomer's first text is out, for a few of its tokens at most: a newcomer's first words may take
several tokens (a character split over tokens), and a prefill of the flooder's next requests
slipped in between them held each of those up a whole step (traced with ``benchmarks/fairness.py``;
the engine also decodes those tokens apart on a CPU, ``LocalEngine._decode``). The flooder's free
slots stay empty for those few steps; its queue keeps its order.
A newcomer is favoured so only while some running flow holds or waits for more than an even
share of the batch (``crowded``): with sixteen adapters each serving one request, a request on the adapter
whose answer just ended is a newcomer too, and stepping it apart gave it a whole step (a full read
of the weights) of its own while fifteen equals waited, about a tenth of the engine's time in
``benchmarks/local_throughput.py``'s 16-adapter load.
The queue is bounded per flow (the engine refuses a flow's request past its bound), so a flooder
fills only its own queue and is refused while the others are still admitted.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    @property
    def flow(self) -> str: ...

    @property
    def rows_wanted(self) -> int: ...

    @property
    def queued_at(self) -> float: ...

    @property
    def cost(self) -> int: ...  # prefill tokens

    def gone(self) -> bool: ...


T = TypeVar("T", bound=Queued)


def crowded(demand: Counter[str], joining: int) -> bool:
    """Whether a running flow asks for more than an even share (rounded up) of what the running
    flows ask for (``demand``: rows each holds or has waiting), shared among them and ``joining``
    new flows: whether newcomers need favouring."""
    if not demand:
        return False
    share = -(-sum(demand.values()) // (len(demand) + joining))
    return max(demand.values()) > share


class FairQueue(Generic[T]):
    def __init__(self, batch_size: int, fair: bool = True) -> None:
        self.batch_size = batch_size
        self.fair = fair  # False: first come, first served
        # Rows a newcomer may take past a full batch (see the module); one at a time.
        self.spare = 1 if fair and batch_size >= 4 else 0
        self._flows: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        for jobs in self._flows.values():
            yield from jobs

    def waiting(self, flow: str) -> int:
        jobs = self._flows.get(flow)
        return len(jobs) if jobs is not None else 0

    def push(self, job: T) -> None:
        self._flows.setdefault(job.flow, deque()).append(job)
        self._size += 1

    def clear(self) -> None:
        self._flows.clear()
        self._size = 0

    def take(
        self,
        running: Counter[str],
        free: int,
        budget: int,
        newcomers_only: bool = False,
        cost: Callable[[T], int] | None = None,
    ) -> list[T]:
        """Jobs to admit into ``free`` batch slots within ``budget`` prefill tokens (the first job
        always fits), given the rows each flow runs now (updated in place). A job's tokens are
        ``cost(job)`` if given (the engine counts only what its prefill computes), else its
        ``cost``. ``free`` is negative while a newcomer's row runs past the batch; a flow that
        holds no rows may take ``spare`` rows more than ``free``. Jobs whose client left are
        dropped on the way. If the first job's flow runs no rows yet, only such flows are taken;
        with ``newcomers_only`` (and fair admission), no other flow is taken at all."""
        chosen: list[T] = []
        spare = self.spare if free >= 0 else 0
        if free + spare <= 0 or not self._size:
            return chosen
        if free <= 0 and all(running[flow] for flow in self._flows):
            return chosen  # a full batch takes only a newcomer, and none waits (checked every step)
        self._drop_gone()
        newcomers = {flow for flow in self._flows if not running[flow]} if self.fair else set()
        allowed = newcomers if self.fair and newcomers_only else None
        while free + spare > 0 and self._size:
            flow = self._next_flow(running, free, spare, allowed)
            if flow is None:
                break
            job = self._flows[flow][0]
            tokens = job.cost if cost is None else cost(job)
            if chosen and (tokens > budget or (chosen[0].flow in newcomers and flow not in newcomers)):
                break
            self._flows[flow].popleft()
            self._size -= 1
            if not self._flows[flow]:
                del self._flows[flow]
            chosen.append(job)
            running[flow] += job.rows_wanted
            spare -= max(0, job.rows_wanted - free)
            free = max(0, free - job.rows_wanted)
            budget -= tokens
        return chosen

    def _drop_gone(self) -> None:
        for flow in list(self._flows):
            jobs = self._flows[flow]
            kept = deque(job for job in jobs if not job.gone())
            self._size -= len(jobs) - len(kept)
            if kept:
                self._flows[flow] = kept
            else:
                del self._flows[flow]

    def _next_flow(self, running: Counter[str], free: int, spare: int, allowed: set[str] | None) -> str | None:
        best: tuple[int, float] | None = None
        best_flow = None
        for flow, jobs in self._flows.items():
            if allowed is not None and flow not in allowed:
                continue
            head = jobs[0]
            holds = running[flow]
            if head.rows_wanted > free + (0 if holds else spare):
                continue
            rank = (holds if self.fair else 0, head.queued_at)
            if best is None or rank < best:
                best, best_flow = rank, flow
        return best_flow

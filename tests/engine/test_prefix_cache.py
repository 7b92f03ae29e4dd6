"""The embedded engine's prefix cache (``engine/prefix_cache.py``): a shared prompt beginning is
computed once per adapter version, and answers are token for token those computed without it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from server.engine.base import AdapterRef, GenerationRequest, SamplingOptions
from server.engine.local import LocalEngine
from server.engine.prefix_cache import BLOCK, PrefixCache
from tests.support import QUESTION

POLICY = " ".join(f"Rule {i}: orders ship from the warehouse nearest to the customer." for i in range(12))
GREEDY = SamplingOptions(temperature=0, max_tokens=24, logprobs=0)


def kv(positions: int, fill: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, 2, positions, 4), fill), torch.full((1, 2, positions, 4), fill)) for _ in range(2)]


def test_whole_blocks_are_reused_per_version_and_bounded() -> None:
    cache = PrefixCache(max_bytes=10**6)
    prompt = list(range(3 * BLOCK + 5))
    cache.store("adapter_1", prompt, kv(len(prompt), 1.0))
    hit = cache.lookup("adapter_1", prompt[: 2 * BLOCK] + [9999] * 40)  # shares two blocks: takes two
    assert hit is not None and hit[0] == 2 * BLOCK and hit[1][0][0].shape[2] == 2 * BLOCK
    same = cache.lookup("adapter_1", prompt)  # the very prompt: its last token is left to compute
    assert same is not None and same[0] == 3 * BLOCK
    assert cache.lookup("adapter_2", prompt) is None  # another version never sees this one's KV
    assert cache.lookup("adapter_1", [7] * BLOCK) is None  # one block or less: nothing to skip
    counted, order = (cache.hits, cache.misses, cache.tokens_reused), list(cache._entries)
    assert cache.reusable("adapter_1", prompt[: 2 * BLOCK] + [9999] * 40) == 2 * BLOCK  # what a lookup takes
    assert cache.reusable("adapter_2", prompt) == 0
    assert (cache.hits, cache.misses, cache.tokens_reused) == counted and list(cache._entries) == order
    cache.drop("adapter_1")
    assert cache.lookup("adapter_1", prompt) is None and cache.bytes == 0 and len(cache) == 0

    small = PrefixCache(max_bytes=2 * 2 * 2 * (2 * 4 * 2 * BLOCK * 4))  # room for two 2-block entries
    for first in range(3):
        small.store("", [first] * 2 * BLOCK + [0], kv(2 * BLOCK + 1))
    assert len(small) == 2 and small.bytes <= small.max_bytes
    assert small.lookup("", [0] * 2 * BLOCK + [1]) is None  # the least recently used went first
    assert small.lookup("", [2] * 2 * BLOCK + [1]) is not None


def test_kv_to_copy_out_of_a_batch_is_made_only_when_it_is_kept() -> None:
    cache = PrefixCache(max_bytes=10**6)
    prompt = list(range(2 * BLOCK + 3))
    made: list[int] = []

    def making(positions: int) -> Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]:
        return lambda: made.append(positions) or kv(positions, 2.0)

    cache.store("", prompt, making(len(prompt)))
    cache.store("", prompt, making(len(prompt)))  # held already: nothing is made
    assert made == [len(prompt)]
    hit = cache.lookup("", prompt + [7])
    assert hit is not None and hit[0] == 2 * BLOCK and float(hit[1][0][0].max()) == 2.0


@pytest.fixture(scope="module")
def engines(
    base_model: Path, trained_adapters: dict[str, Path]
) -> Iterator[tuple[LocalEngine, LocalEngine, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    pair = []
    for cache_bytes in (0, 64 * 1024**2):
        engine = LocalEngine(str(base_model), device="cpu", max_batch_size=8, prefix_cache_bytes=cache_bytes)
        loop.run_until_complete(engine.start())
        loop.run_until_complete(engine.add_adapter(AdapterRef("alpha", 1, str(trained_adapters["alpha"]))))
        pair.append(engine)
    yield pair[0], pair[1], loop
    for engine in pair:
        loop.run_until_complete(engine.stop())
    loop.close()


async def tokens(engine: LocalEngine, request: GenerationRequest) -> list[str]:
    out: list[str] = []
    async for delta in engine.generate(request):
        out += [t.token for t in delta.logprobs or ()]
    return out


async def queued_at_once(engine: LocalEngine, requests: list[GenerationRequest]) -> list[list[str]]:
    """Each request's answer tokens, all of them waiting in the queue before the worker admits any."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30)

    holding = asyncio.ensure_future(engine._run_in_worker(hold))
    await asyncio.to_thread(held.wait, 30)
    answers = [asyncio.ensure_future(tokens(engine, request)) for request in requests]
    while len(engine._waiting) < len(requests):
        await asyncio.sleep(0.01)
    release.set()
    await holding
    return list(await asyncio.gather(*answers))


def conversation(question: str) -> tuple[dict[str, str], ...]:
    return ({"role": "system", "content": POLICY}, {"role": "user", "content": question})


def test_answers_are_token_identical_with_and_without_the_cache(
    engines: tuple[LocalEngine, LocalEngine, asyncio.AbstractEventLoop],
) -> None:
    plain, cached, loop = engines
    alpha = AdapterRef("alpha", 1, "")
    asks = [(None, "Where is my parcel?"), (alpha, "Can I return shoes?"), (None, "Do you ship abroad?")]
    asks += [(alpha, "Can I return shoes?"), (None, "Where is my parcel?")]  # the same prompts again

    async def run(engine: LocalEngine) -> list[list[str]]:
        answers = []
        for i, (adapter, question) in enumerate(asks):  # one at a time: the second finds the first's KV
            answers.append(await tokens(engine, GenerationRequest(f"q{i}", conversation(question), GREEDY, adapter)))
        together = await asyncio.gather(  # and admitted together, hits beside misses in one batch
            *(tokens(engine, GenerationRequest(f"t{i}", conversation(q), GREEDY, a)) for i, (a, q) in enumerate(asks))
        )
        return answers + list(together)

    expected, got = loop.run_until_complete(run(plain)), loop.run_until_complete(run(cached))
    assert got == expected and all(expected)
    assert cached._prefixes.hits >= 8 and cached._prefixes.tokens_reused >= 8 * BLOCK
    assert plain._prefixes.hits == 0 and len(plain._prefixes) == 0 and plain.health().prefix_cache is None
    hits, reused, held = cached.health().prefix_cache or (0, 0, 0)  # what /metrics reports
    assert hits == cached._prefixes.hits and reused == cached._prefixes.tokens_reused and held > 0


def test_hits_admitted_together_are_prefilled_in_one_forward(
    engines: tuple[LocalEngine, LocalEngine, asyncio.AbstractEventLoop],
) -> None:
    """Three jobs whose prompts start with cached KV of different lengths, on two adapters, are
    prefilled in one forward (their prefixes and rests each left-padded, so padding lies in the
    middle of a row) and answer token for token what an engine without the cache answers."""

    plain, cached, loop = engines
    alpha = AdapterRef("alpha", 1, "")
    long_question = "Can I return these shoes? They are too small, the box is unopened and I kept the receipt. " * 3
    seen = [(None, "Where is my parcel?"), (alpha, long_question)]
    asks = [*seen, (None, "Do you also ship to Norway, Iceland and the Faroe Islands?")]  # shares only the policy
    requests = [GenerationRequest(f"h{i}", conversation(q), GREEDY, a) for i, (a, q) in enumerate(asks)]
    for request in requests[:2]:  # their whole prompts are cached
        loop.run_until_complete(tokens(cached, request))

    prefills: list[tuple[list[int], int]] = []  # each hit prefill: its jobs' reused lengths, its forwards
    prefill_from, forward = cached._prefill_from, cached._forward
    forwards = [0]

    def counting_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        forwards[0] += 1
        return forward(*args, **kwargs)

    def recording(hits):  # type: ignore[no-untyped-def]
        before = forwards[0]
        batch = prefill_from(hits)
        prefills.append(([reused for _, _, reused, _ in hits], forwards[0] - before))
        return batch

    budget = cached.max_prefill_tokens
    cached.max_prefill_tokens = 100_000  # admit all three in one step
    cached._prefill_from, cached._forward = recording, counting_forward  # type: ignore[method-assign]
    try:
        got = loop.run_until_complete(queued_at_once(cached, requests))
    finally:
        cached.max_prefill_tokens = budget
        del cached._prefill_from, cached._forward
    expected = [loop.run_until_complete(tokens(plain, request)) for request in requests]
    assert got == expected and all(expected)
    assert len(prefills) == 1 and prefills[0][1] == 1  # one prefill of the hits, one forward
    reused = prefills[0][0]
    assert len(reused) == 3 and len(set(reused)) >= 2 and min(reused) >= BLOCK


def test_a_burst_on_a_cached_prefix_is_admitted_by_what_its_prefills_compute(
    engines: tuple[LocalEngine, LocalEngine, asyncio.AbstractEventLoop],
) -> None:
    """The prefill budget counts the tokens a prefill computes: three prompts sharing a cached
    policy, each longer than the budget, are admitted in one step (what they compute fits); a
    prompt that misses counts whole and waits for the next step. Answers stay the uncached ones."""
    plain, cached, loop = engines
    questions = ["Is there a discount today?", "When do you open?", "Can I pay by card?"]
    requests = [GenerationRequest(f"burst{i}", conversation(q), GREEDY) for i, q in enumerate(questions)]
    other = ({"role": "system", "content": POLICY.replace("warehouse", "store")}, {"role": "user", "content": "Hi?"})
    requests.append(GenerationRequest("burst-miss", other, GREEDY))
    loop.run_until_complete(tokens(cached, GenerationRequest("warm", conversation("Hello?"), GREEDY)))

    admissions: list[list[tuple[int, int]]] = []  # per admission step: (prompt tokens, computed) per job
    prefill = cached._prefill

    def recording(jobs):  # type: ignore[no-untyped-def]
        admissions.append([(len(job.prompt_ids), cached._prefill_cost(job)) for job in jobs])
        return prefill(jobs)

    budget = cached.max_prefill_tokens
    cached.max_prefill_tokens = 128  # the CPU default, stated: the test needs it below every whole prompt
    cached._prefill = recording  # type: ignore[method-assign]
    try:
        got = loop.run_until_complete(queued_at_once(cached, requests))
    finally:
        cached.max_prefill_tokens = budget
        del cached._prefill
    assert got == [loop.run_until_complete(tokens(plain, request)) for request in requests] and all(got)
    assert [len(step) for step in admissions] == [3, 1]
    hits, (miss,) = admissions
    assert all(whole > 128 for whole, _ in hits) and sum(computed for _, computed in hits) <= 128
    assert miss[0] == miss[1] > 128  # nothing of it cached: its whole prompt counts


def test_an_unloaded_version_takes_its_kv_along(
    engines: tuple[LocalEngine, LocalEngine, asyncio.AbstractEventLoop], trained_adapters: dict[str, Path]
) -> None:
    _, cached, loop = engines
    long_question = ({"role": "user", "content": QUESTION},)
    beta = AdapterRef("beta", 2, str(trained_adapters["beta"]))
    loop.run_until_complete(cached.add_adapter(beta))
    request = GenerationRequest("b", ({"role": "system", "content": POLICY}, *long_question), GREEDY, beta)
    hits = cached._prefixes.hits
    first = loop.run_until_complete(tokens(cached, request))
    again = loop.run_until_complete(tokens(cached, request))
    assert first == again and cached._prefixes.hits == hits + 1
    held = {e.peft_name for e in cached._prefixes._entries.values()}
    assert "adapter_2" in held
    loop.run_until_complete(cached.remove_adapter(beta))
    assert "adapter_2" not in {e.peft_name for e in cached._prefixes._entries.values()}

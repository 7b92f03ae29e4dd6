"""The embedded engine on its own: batching, adapters per row, limits, adapter load/unload."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.engine.base import AdapterRef, GenerationRequest, SamplingOptions
from server.engine.local import CPU_PREFILL_TOKENS, LocalEngine
from server.errors import ContextLengthExceeded, EngineUnavailable
from tests.support import ANSWERS, QUESTION

ASK = ({"role": "user", "content": QUESTION},)
GREEDY = SamplingOptions(temperature=0, max_tokens=30)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(
    base_model: Path, trained_adapters: dict[str, Path], loop: asyncio.AbstractEventLoop
) -> Iterator[LocalEngine]:
    engine = LocalEngine(str(base_model), device="cpu", max_batch_size=8, max_model_len=512)
    loop.run_until_complete(engine.start())
    for i, name in enumerate(("alpha", "beta"), start=1):
        loop.run_until_complete(engine.add_adapter(AdapterRef(name, i, str(trained_adapters[name]))))
    yield engine
    loop.run_until_complete(engine.stop())


REFS = {"alpha": AdapterRef("alpha", 1, ""), "beta": AdapterRef("beta", 2, ""), "base": None}


async def collect(engine: LocalEngine, request: GenerationRequest) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    async for delta in engine.generate(request):
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        if delta.finish_reason:
            finish[delta.index] = delta.finish_reason
    return texts, finish


def request(model: str, sampling: SamplingOptions = GREEDY, messages: tuple = ASK) -> GenerationRequest:  # type: ignore[type-arg]
    return GenerationRequest(f"r-{model}", messages, sampling, REFS[model])


def test_batched_output_equals_one_at_a_time(engine: LocalEngine, loop: asyncio.AbstractEventLoop) -> None:
    models = ["alpha", "beta", "base"] * 4  # 12 requests, more than the batch of 8
    alone = [loop.run_until_complete(collect(engine, request(m)))[0][0] for m in models[:3]]

    async def staggered() -> list[str]:
        async def one(i: int, model: str) -> str:
            await asyncio.sleep(0.003 * i)  # join a batch that is already decoding
            return (await collect(engine, request(model)))[0][0]

        return await asyncio.gather(*(one(i, m) for i, m in enumerate(models)))

    together = loop.run_until_complete(staggered())
    assert together == alone * 4
    assert alone[0] == ANSWERS["alpha"] and alone[1] == ANSWERS["beta"]


def test_prompt_beyond_context_is_refused_with_numbers(engine: LocalEngine, loop: asyncio.AbstractEventLoop) -> None:
    long = ({"role": "user", "content": "order " * 600},)
    with pytest.raises(ContextLengthExceeded, match="512 tokens"):
        loop.run_until_complete(collect(engine, request("base", messages=long)))
    with pytest.raises(ContextLengthExceeded, match="500 in the completion"):
        loop.run_until_complete(collect(engine, request("base", SamplingOptions(max_tokens=500))))


def test_without_max_tokens_generation_stops_at_the_context_window(
    engine: LocalEngine, loop: asyncio.AbstractEventLoop
) -> None:
    texts, finish = loop.run_until_complete(collect(engine, request("base", SamplingOptions(temperature=0))))
    assert finish == {0: "length"}
    prompt_len = len(engine.render_prompt(ASK))
    assert len(engine._tokenizer.encode(texts[0], add_special_tokens=False)) <= 512 - prompt_len


def test_closing_the_stream_frees_the_batch_slot(engine: LocalEngine, loop: asyncio.AbstractEventLoop) -> None:
    async def leave_early() -> None:
        stream = engine.generate(request("base", SamplingOptions(temperature=0, max_tokens=400)))
        assert isinstance(stream, AsyncIterator)
        await anext(stream)
        await stream.aclose()
        for _ in range(200):
            if engine.health().running_requests == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("row still decoding")

    loop.run_until_complete(leave_early())


def test_adapters_load_and_unload_between_steps(
    engine: LocalEngine, trained_adapters: dict[str, Path], loop: asyncio.AbstractEventLoop
) -> None:
    extra = AdapterRef("alpha-copy", 99, str(trained_adapters["alpha"]))
    loop.run_until_complete(engine.add_adapter(extra))
    copy = GenerationRequest("copy", ASK, GREEDY, extra)
    assert loop.run_until_complete(collect(engine, copy))[0][0] == ANSWERS["alpha"]
    loop.run_until_complete(engine.remove_adapter(extra))
    assert "adapter_99" not in engine.health().loaded_adapters
    with pytest.raises(EngineUnavailable):
        loop.run_until_complete(collect(engine, copy))
    assert loop.run_until_complete(collect(engine, request("beta")))[0][0] == ANSWERS["beta"]


def test_the_model_loads_on_the_thread_that_then_serves_it(base_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread runs all of torch: a helper thread that ran the load would keep an OpenMP team
    of its own, and on a machine with no more cores than the two teams' threads every operator
    of every step would pay to wake its threads (``LocalEngine.start``)."""
    import server.engine.local as local

    loaded_on: list[threading.Thread] = []
    real_load = local.load_model

    def load_model(*args: Any, **kwargs: Any) -> Any:
        loaded_on.append(threading.current_thread())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(local, "load_model", load_model)

    async def scenario() -> threading.Thread | None:
        engine = LocalEngine(str(base_model), device="cpu", max_model_len=256)
        await engine.start()
        try:
            assert (await collect(engine, request("base")))[0][0]  # and it serves
            return engine._thread
        finally:
            await engine.stop()

    assert loaded_on == [asyncio.run(scenario())]


def test_a_model_that_cannot_load_fails_the_start_and_leaves_no_thread(tmp_path: Path) -> None:
    engine = LocalEngine(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(EngineUnavailable, match="failed to load model"):
        asyncio.run(engine.start())
    assert engine._thread is not None
    engine._thread.join(5)
    assert not engine._thread.is_alive() and not engine.health().ready


def test_removing_every_adapter_keeps_the_base_serving(base_model: Path, trained_adapters: dict[str, Path]) -> None:
    async def scenario() -> tuple[str, str]:
        engine = LocalEngine(str(base_model), device="cpu", max_model_len=256)
        await engine.start()
        try:
            before = (await collect(engine, request("base")))[0][0]
            ref = AdapterRef("alpha", 1, str(trained_adapters["alpha"]))
            await engine.add_adapter(ref)
            await engine.remove_adapter(ref)
            after = (await collect(engine, request("base")))[0][0]
            await engine.add_adapter(ref)  # and a new one loads again afterwards
            assert (await collect(engine, request("alpha")))[0][0] == ANSWERS["alpha"]
            return before, after
        finally:
            await engine.stop()

    before, after = asyncio.run(scenario())
    assert before == after


def test_the_server_default_caps_a_request_without_max_tokens(
    engine: LocalEngine, loop: asyncio.AbstractEventLoop
) -> None:
    """alpha's trained answer is longer than 3 tokens: the default cap ends it there; a request's
    own max_tokens wins over the default."""
    capped = SamplingOptions(temperature=0, default_max_tokens=3)
    texts, finish = loop.run_until_complete(collect(engine, GenerationRequest("cap", ASK, capped, REFS["alpha"])))
    assert finish[0] == "length" and ANSWERS["alpha"].startswith(texts[0]) and texts[0] != ANSWERS["alpha"]
    own = SamplingOptions(temperature=0, max_tokens=200, default_max_tokens=3)
    texts, finish = loop.run_until_complete(collect(engine, GenerationRequest("own", ASK, own, REFS["alpha"])))
    assert (texts[0], finish[0]) == (ANSWERS["alpha"], "stop")


def test_a_request_that_fails_at_admission_fails_alone(
    engine: LocalEngine, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three requests admitted in one prefill; one of them cannot be set up (its sampler raises):
    it fails with a 500-class error, the two others get their trained answers."""
    import time

    from server.engine import rows
    from server.errors import EngineError

    class Fragile(rows.Sampler):
        def __init__(self, options: SamplingOptions, index: int, device: object) -> None:
            if options.seed == 13:
                raise OverflowError("seed out of range")
            super().__init__(options, index, device)  # type: ignore[arg-type]

    monkeypatch.setattr(rows, "Sampler", Fragile)
    slow = SamplingOptions(temperature=0, max_tokens=101)
    monkeypatch.setattr(engine, "before_sample", lambda r: time.sleep(0.3) if r.sampling.max_tokens == 101 else None)

    async def scenario() -> list[object]:
        busy = asyncio.ensure_future(collect(engine, GenerationRequest("busy", ASK, slow, REFS["alpha"])))
        await asyncio.sleep(0.5)  # the worker is decoding `busy`: the next three queue up and are admitted together
        bad = SamplingOptions(temperature=1.0, seed=13, max_tokens=30)
        results = await asyncio.gather(
            collect(engine, request("alpha")),
            collect(engine, GenerationRequest("bad", ASK, bad, REFS["beta"])),
            collect(engine, request("beta")),
            return_exceptions=True,
        )
        await busy
        return results

    good_alpha, bad, good_beta = loop.run_until_complete(scenario())
    assert isinstance(bad, EngineError)
    assert good_alpha[0][0] == ANSWERS["alpha"] and good_beta[0][0] == ANSWERS["beta"]  # type: ignore[index]


def test_a_burst_is_prefilled_within_max_prefill_tokens(engine: LocalEngine, loop: asyncio.AbstractEventLoop) -> None:
    """Requests that queued together are prefilled in steps of at most ``max_prefill_tokens`` (so a
    newcomer waits for one short prefill, not a whole burst's); a budget that holds them all admits
    them in one step. The CPU default is the small one."""
    import threading

    from server.engine.local import CPU_PREFILL_TOKENS

    assert engine.max_prefill_tokens == CPU_PREFILL_TOKENS
    cost = len(engine.render_prompt(ASK))
    prefilled: list[int] = []
    prefill = engine._prefill

    def recording(jobs: list) -> tuple:  # type: ignore[type-arg]
        prefilled.append(len(jobs))
        return prefill(jobs)

    async def burst(budget: int) -> list[int]:
        engine.max_prefill_tokens = budget
        prefilled.clear()
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(30)

        holding = asyncio.ensure_future(engine._run_in_worker(hold))  # the worker waits: the burst queues whole
        await asyncio.to_thread(held.wait, 30)
        answers = [asyncio.ensure_future(collect(engine, request(m))) for m in ("alpha", "beta", "alpha", "beta")]
        while len(engine._waiting) < 4:
            await asyncio.sleep(0.01)
        release.set()
        await holding
        for answer, model in zip(await asyncio.gather(*answers), ("alpha", "beta", "alpha", "beta"), strict=True):
            assert answer[0][0] == ANSWERS[model]
        return list(prefilled)

    engine._prefill = recording  # type: ignore[method-assign]
    try:
        assert loop.run_until_complete(burst(2 * cost)) == [2, 2]
        assert loop.run_until_complete(burst(4 * cost)) == [4]
    finally:
        del engine._prefill
        engine.max_prefill_tokens = CPU_PREFILL_TOKENS


def test_the_kv_cache_is_passed_under_the_name_this_transformers_takes(
    engine: LocalEngine, loop: asyncio.AbstractEventLoop
) -> None:
    """transformers 5.2x renamed ``past_key_values`` to ``cache`` and warns on the old name (removed in
    5.40); vLLM's pin holds a transformers that knows only the old one. No deprecated name is used."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the worker's forward would fail the request
        texts, _ = loop.run_until_complete(collect(engine, request("alpha")))
    assert texts[0] == ANSWERS["alpha"]


def test_a_newcomers_first_text_goes_before_the_busy_flows_next_prefills(
    engine: LocalEngine, loop: asyncio.AbstractEventLoop
) -> None:
    """Flow ``a`` keeps the batch full with a backlog, its sequences ending one after another; flow
    ``b`` arrives, and its first characters take several tokens (simulated: its first tokens show
    nothing, as a character split over tokens does). Until ``b``'s first text is out, none of
    ``a``'s backlog is prefilled (each such prefill would hold ``b``'s first text up), and on a CPU
    ``b``'s rows step apart from ``a``'s; then ``a`` steps and is admitted again."""
    import dataclasses
    import threading

    from server.engine.kv_batch import Batch
    from server.engine.local import FIRST_TEXT_STEPS

    hidden = 4  # b's first tokens that show nothing
    assert hidden < FIRST_TEXT_STEPS
    prefills: list[tuple[list[str], bool]] = []  # flows prefilled, and whether b's first text was out
    answered = threading.Event()
    steps: list[tuple[list[str], bool]] = []  # flows of each decode step's rows, and the same
    prefill, advance, decode_step = engine._prefill, engine._steps.advance, engine._decode_step

    def recording(jobs: list) -> Batch:  # type: ignore[type-arg]
        prefills.append(([job.flow for job in jobs], answered.is_set()))
        return prefill(jobs)

    def stepping(batch: Batch) -> None:
        steps.append((sorted({row.job.flow for row in batch.rows}), answered.is_set()))
        decode_step(batch)

    def late(row, logits):  # type: ignore[no-untyped-def]
        delta = advance(row, logits)
        if row.job.flow == "b" and delta is not None:
            if row.generated <= hidden and delta.finish_reason is None:
                row.answered = False
                return None
            answered.set()
        return delta

    def ask(model: str, flow: str, max_tokens: int) -> GenerationRequest:
        sampling = SamplingOptions(temperature=0, max_tokens=max_tokens)
        return dataclasses.replace(request(model, sampling), flow=flow)

    async def scenario() -> dict[int, str]:
        # a: more than the batch holds, ending at different steps, so slots free up while b waits.
        flood = [asyncio.ensure_future(collect(engine, ask("alpha", "a", 8 + i))) for i in range(20)]
        while not engine._batch:
            await asyncio.sleep(0.001)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            if not any(row.job.flow == "a" for row in engine._batch.rows):
                return  # a holds no rows at this step (a slow host drained its first batch): not yet
            held.set()
            release.wait(30)

        while True:  # the worker held between two of a's steps, with a's rows in the batch
            holding = asyncio.ensure_future(engine._run_in_worker(hold))
            while not (held.is_set() or holding.done()):
                await asyncio.sleep(0.001)
            if held.is_set():
                break
        newcomer = asyncio.ensure_future(collect(engine, ask("beta", "b", 30)))
        while not any(job.flow == "b" for job in engine._waiting):
            await asyncio.sleep(0.001)
        release.set()
        await holding
        texts, _ = await newcomer
        await asyncio.gather(*flood)
        return texts

    engine._prefill = recording  # type: ignore[method-assign]
    engine._steps.advance = late  # type: ignore[method-assign]
    engine._decode_step = stepping  # type: ignore[method-assign]
    try:
        texts = loop.run_until_complete(scenario())
    finally:
        del engine._prefill, engine._steps.advance, engine._decode_step
    assert texts[0] and ANSWERS["beta"].endswith(texts[0])  # b's answer, less what its first tokens hid
    start = next(i for i, (flows, _) in enumerate(prefills) if "b" in flows)
    assert prefills[start][0] == ["b"]  # its prefill went alone
    during = [flows for flows, out in prefills[start + 1 :] if not out]
    assert during == [], f"a was prefilled before b's first text: {prefills}"
    assert any("a" in flows for flows, out in prefills[start + 1 :] if out)  # and after it, a again
    first = next(i for i, (flows, _) in enumerate(steps) if "b" in flows)
    assert [flows for flows, out in steps[first:] if not out] == [["b"]] * hidden  # b's hidden tokens, apart
    assert ["a", "b"] in [flows for flows, out in steps[first:] if out]  # then b joined a's batch


def test_among_equal_flows_a_new_one_steps_with_the_batch(engine: LocalEngine, loop: asyncio.AbstractEventLoop) -> None:
    """Four flows hold one row each, as sixteen adapters serving one request each do: a fifth flow's
    request is favoured over nobody, so its rows join the running batch at once instead of taking
    steps of their own (each a full read of the weights) while the others wait."""
    import dataclasses
    import threading

    from server.engine.kv_batch import Batch

    steps: list[list[str]] = []  # flows of each decode step's rows
    decode_step, advance = engine._decode_step, engine._steps.advance

    def stepping(batch: Batch) -> None:
        steps.append(sorted({row.job.flow for row in batch.rows}))
        decode_step(batch)

    def late(row, logits):  # type: ignore[no-untyped-def]  # f4's first 3 tokens show nothing, as a split character
        delta = advance(row, logits)
        if row.job.flow == "f4" and delta is not None and row.generated <= 3 and delta.finish_reason is None:
            row.answered = False
            return None
        return delta

    def ask(flow: str, max_tokens: int) -> GenerationRequest:
        return dataclasses.replace(request("alpha", SamplingOptions(temperature=0, max_tokens=max_tokens)), flow=flow)

    async def scenario() -> None:
        equals = [asyncio.ensure_future(collect(engine, ask(f"f{i}", 40))) for i in range(4)]
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            if len({row.job.flow for row in engine._batch.rows}) < 4:
                return  # not all four running yet
            held.set()
            release.wait(30)

        while True:  # the worker held between two steps of the four
            holding = asyncio.ensure_future(engine._run_in_worker(hold))
            while not (held.is_set() or holding.done()):
                await asyncio.sleep(0.001)
            if held.is_set():
                break
        newcomer = asyncio.ensure_future(collect(engine, ask("f4", 10)))
        while not any(job.flow == "f4" for job in engine._waiting):
            await asyncio.sleep(0.001)
        release.set()
        await holding
        await asyncio.gather(newcomer, *equals)

    engine._decode_step = stepping  # type: ignore[method-assign]
    engine._steps.advance = late  # type: ignore[method-assign]
    try:
        loop.run_until_complete(scenario())
    finally:
        del engine._decode_step, engine._steps.advance
    first = next(i for i, flows in enumerate(steps) if "f4" in flows)
    assert steps[first] == ["f0", "f1", "f2", "f3", "f4"]  # straight into the batch, never apart
    assert ["f4"] not in steps


def test_a_lone_flows_burst_fills_the_batch_and_a_newcomer_joins_past_it(
    engine: LocalEngine, loop: asyncio.AbstractEventLoop
) -> None:
    """One flow's burst of ``max_batch_size`` requests runs whole: no slot is held back for somebody
    who might come (its last request would wait a whole answer). A newcomer arriving then joins
    the full batch as one row past it at once, rather than waiting for one of those answers."""
    import dataclasses
    import threading

    from server.engine.kv_batch import Batch

    widest: list[int] = []  # rows of each step, newcomers stepping apart included
    decode_step = engine._decode_step

    def stepping(batch: Batch) -> None:
        widest.append(len(engine._batch.rows) + len(engine._fresh.rows))
        decode_step(batch)

    def ask(model: str, flow: str) -> GenerationRequest:
        return dataclasses.replace(request(model), flow=flow)

    async def scenario() -> list[tuple[dict[int, str], dict[int, str]]]:
        queued, admitted = threading.Event(), threading.Event()
        release_queued, release_admitted = threading.Event(), threading.Event()
        whole: list[int] = []  # rows running when the worker was held the second time

        def hold_while_the_burst_queues() -> None:
            queued.set()
            release_queued.wait(30)

        def hold_once_it_is_admitted() -> None:  # the next step's commands: after the burst's admission
            whole.append(len(engine._running_rows()))
            admitted.set()
            release_admitted.wait(30)

        first = asyncio.ensure_future(engine._run_in_worker(hold_while_the_burst_queues))
        await asyncio.to_thread(queued.wait, 30)
        burst = [asyncio.ensure_future(collect(engine, ask("alpha", "a"))) for _ in range(engine.max_batch_size)]
        while len(engine._waiting) < engine.max_batch_size:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(engine._run_in_worker(hold_once_it_is_admitted))
        while not engine._commands:  # queued behind the first hold
            await asyncio.sleep(0.001)
        release_queued.set()
        await first
        await asyncio.to_thread(admitted.wait, 30)
        assert whole == [engine.max_batch_size]  # the whole burst runs: no slot was held back
        newcomer = asyncio.ensure_future(collect(engine, ask("beta", "b")))
        while not any(job.flow == "b" for job in engine._waiting):
            await asyncio.sleep(0.001)
        release_admitted.set()
        await second
        return list(await asyncio.gather(*burst, newcomer))

    engine.max_prefill_tokens = 16 * len(engine.render_prompt(ASK))  # the burst is admitted in one step
    engine._decode_step = stepping  # type: ignore[method-assign]
    try:
        answers = loop.run_until_complete(scenario())
    finally:
        del engine._decode_step
        engine.max_prefill_tokens = engine._max_prefill_setting or CPU_PREFILL_TOKENS
    assert [texts[0] for texts, _ in answers] == [ANSWERS["alpha"]] * engine.max_batch_size + [ANSWERS["beta"]]
    assert max(widest) == engine.max_batch_size + 1  # the whole burst, and the newcomer past it

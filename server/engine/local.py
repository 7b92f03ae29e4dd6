"""The embedded engine: transformers + peft, continuous batching, one adapter per row.

One copy of the base weights is wrapped in one ``PeftModel`` holding every loaded adapter
(``peft_adapters.py``); every row of a batch uses its own adapter (or the base), applied in one
batched computation per layer by ``server.engine.lora_batch`` rather than peft's per-adapter loop.
A single worker thread owns the model and runs the scheduler loop:

1. apply queued adapter loads/unloads (between steps, so no forward sees a half-loaded adapter);
2. drop rows whose client went away, or that finished;
3. admit waiting requests fairly (``fair_queue.py``): prefill them together, left-padded, and merge
   their KV cache into the running batch (continuous batching: no request waits for another to finish);
4. decode one token for every running row and stream each row's new text to its request. On a CPU,
   where a step costs in proportion to its rows, a newcomer's rows step apart until their first
   text is out (``_decode``).

The event loop never runs model code: requests talk to the worker through thread-safe queues, so
/health, /metrics and new requests are answered while a long generation runs.

The loop's steps share state only the worker touches (the running batch, the newcomers' rows, the
prefix cache), so they stay one class, past this project's 400 lines; what is not that loop lives
beside it: loading the model (``loaded_model.py``), batch layouts and their KV (``kv_batch.py``),
admission order (``fair_queue.py``), each row's sampling (``rows.py``), adapters
(``peft_adapters.py``, ``lora_batch.py``) and shared prompt beginnings (``prefix_cache.py``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

import torch

from ..devices import resolve_device, resolve_dtype
from ..errors import (
    EngineError,
    EngineUnavailable,
    GatewayError,
    Overloaded,
)
from .base import (
    LOADING,
    AdapterRef,
    Engine,
    EngineHealth,
    GenerationDelta,
    GenerationRequest,
)
from .fair_queue import FairQueue, crowded
from .grammar import Grammars, grammar_key
from .kv_batch import Batch, CachedStart, cache_layers, cached_prefill, fresh_prefill, make_cache
from .loaded_model import load_model
from .logprobs import TokenBytes
from .peft_adapters import PeftAdapters
from .prefix_cache import PrefixCache
from .prompts import check_context, render_chat, render_off_loop
from .rows import Job, Row, RowSteps

logger = logging.getLogger(__name__)

# Prompt tokens prefilled in one step (``--max-prefill-tokens``; a longer prompt still goes alone). A
# step holds up every running stream and every newcomer until it ends, so it is kept short where
# compute is scarce: on two CPU cores a burst of 14 short prompts prefilled at once took 175 ms of
# everybody's time, 4 at a time about 45 ms (``benchmarks/fairness.py``). A GPU prefills many tokens
# in the time of a decode step; 2048 is vLLM's own budget per step for its API server on most GPUs.
CPU_PREFILL_TOKENS = 128
GPU_PREFILL_TOKENS = 2048
# A newcomer's first text goes before the busy flows (their prefills wait, ``fair_queue.py``; on a
# CPU their steps wait too, ``_decode``) for this many of its tokens at most: its first characters
# rarely take more than a handful, and the others are held up meanwhile.
FIRST_TEXT_STEPS = 8
BASE_ROW = ""  # rows on the base model carry no adapter name
_DONE = object()  # end-of-stream marker sent from the worker to a request's queue


class LocalEngine(Engine):
    """transformers + peft on CPU or one GPU."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        max_model_len: int | None = None,
        allow_long_context: bool = False,
        max_prefill_tokens: int | None = None,
        max_queued: int = 256,
        fair_admission: bool = True,
        grammar_timeout: float = 10.0,
        prefix_cache_bytes: int = 0,
        onednn_linears: bool = True,
    ) -> None:
        self.model_path = model
        self._onednn_linears = onednn_linears  # on a CPU: linears by oneDNN's inner product (cpu_linear.py)
        self._prefixes = PrefixCache(prefix_cache_bytes)  # shared prompt beginnings' KV, per adapter version
        self._grammar_timeout = grammar_timeout
        self._device_setting = device
        self._dtype_setting = dtype
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued  # requests of one flow waiting for the batch; past it, 503 queue_full
        self._max_model_len_setting = max_model_len
        self._allow_long_context = allow_long_context
        self._max_prefill_setting = max_prefill_tokens
        self.max_prefill_tokens = max_prefill_tokens or GPU_PREFILL_TOKENS  # resolved for the device by _load
        self.max_model_len: int | None = None

        self._adapters = PeftAdapters(None)  # the model and its adapters (set by _load)
        self._tokenizer: Any = None
        self._device = torch.device("cpu")
        self._eos_ids: set[int] = set()
        self._cache_arg = "past_key_values"  # the forward's name for the KV cache (set by _load)
        self._steps: RowSteps  # set by _load: how each row turns logits into output
        self._ready = False
        self._detail = "not started"

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: FairQueue[Job] = FairQueue(max_batch_size, fair_admission)
        self._commands: deque[tuple[Callable[[], None], Future[None]]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None

        # Batch state, touched only by the worker thread.
        self._batch = Batch()  # the running rows
        self._fresh = Batch()  # newcomers' rows before their first text, stepped apart on a CPU (_decode)
        self._fresh_apart = False  # set by _load: whether a step's cost grows with its rows (a CPU)
        self._fresh_streak = 0  # steps in a row given to the newcomers

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the model on the worker thread, which then serves: one thread runs all of torch.

        With libgomp (PyTorch's OpenMP on Linux) every thread that runs a parallel operator keeps
        a team of its own, and once a process holds more OpenMP threads than cores each team's
        threads sleep at once between operators instead of spinning: every operator then pays to
        wake them. Loading on a helper thread (``asyncio.to_thread``) left its idle team behind
        and made a decode step's small operators several times slower on two cores
        (``docs/engines.md``)."""
        self._detail = "loading model"
        loaded: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._load_and_serve, args=(loaded,), name="lora-gateway-engine", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(loaded)
        except Exception as exc:
            self._detail = f"failed to load model: {exc}"
            raise EngineUnavailable(self._detail) from exc
        self._ready = True
        self._detail = "ready"

    def _load_and_serve(self, loaded: Future[None]) -> None:
        try:
            self._load()
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(None)
        self._worker()

    async def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()
        steps: RowSteps | None = getattr(self, "_steps", None)  # unset when the model never loaded
        if steps is not None:
            steps.grammars.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self._ready = False
        self._detail = "stopped"

    def _load(self) -> None:
        loaded = load_model(
            self.model_path,
            device=self._device_setting,
            dtype=self._dtype_setting,
            max_model_len=self._max_model_len_setting,
            allow_long_context=self._allow_long_context,
            onednn_linears=self._onednn_linears,
        )
        self._device, self._tokenizer, self._cache_arg = loaded.device, loaded.tokenizer, loaded.cache_arg
        self._adapters = PeftAdapters(loaded.model)
        self.max_model_len, self._eos_ids = loaded.max_model_len, set(loaded.eos_ids)
        gpu = self._device.type == "cuda"
        self.max_prefill_tokens = self._max_prefill_setting or (GPU_PREFILL_TOKENS if gpu else CPU_PREFILL_TOKENS)
        self._fresh_apart = self._device.type == "cpu"
        token_bytes = TokenBytes(self._tokenizer)
        eos = sorted(self._eos_ids)
        grammars = Grammars(self._tokenizer, loaded.vocab_size, eos, token_bytes, timeout=self._grammar_timeout)
        self._steps = RowSteps(self._tokenizer, self._eos_ids, grammars, token_bytes, self._device)
        logger.info("loaded %s on %s (%s), context %d", self.model_path, self._device, loaded.dtype, self.max_model_len)

    def health(self) -> EngineHealth:
        with self._lock:
            waiting = sum(j.request.sampling.n for j in self._waiting)
        return EngineHealth(
            ready=self._ready,
            detail=self._detail,
            running_requests=len({id(r.job) for r in self._running_rows()}),
            waiting_requests=waiting,
            loaded_adapters=self._adapters.loaded(),
            prefix_cache=(self._prefixes.hits, self._prefixes.tokens_reused, self._prefixes.bytes)
            if self._prefixes.enabled
            else None,
        )

    def unavailable(self, base: str = "") -> str | None:
        return None if self._ready else LOADING

    def weights_dtype(self) -> torch.dtype:
        """The dtype its weights will take (``--dtype`` resolved for ``--device``)."""
        return resolve_dtype(self._dtype_setting, resolve_device(self._device_setting))

    def peak_memory_bytes(self) -> int:
        """CUDA's peak allocation on a GPU; this process's peak RSS on CPU."""
        if self._device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self._device))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    # ------------------------------------------------------------------ adapters

    async def add_adapter(self, adapter: AdapterRef) -> None:
        await self._run_in_worker(lambda: self._load_adapter(adapter))

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self._run_in_worker(lambda: self._unload_adapter(adapter))

    async def _run_in_worker(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker thread between two steps, so no forward sees it half-done."""
        if not self._ready:
            raise EngineUnavailable("The engine is not ready.")
        future: Future[None] = Future()
        with self._lock:
            self._commands.append((fn, future))
            self._wakeup.notify_all()
        await asyncio.wrap_future(future)

    def _load_adapter(self, adapter: AdapterRef) -> None:
        self._adapters.load(adapter)

    def _unload_adapter(self, adapter: AdapterRef) -> None:
        def in_use(peft_name: str) -> bool:
            with self._lock:
                jobs = [row.job for row in self._running_rows()] + list(self._waiting)
            return any(job.peft_name == peft_name and not job.cancelled.is_set() for job in jobs)

        peft_name = self._adapters.name_of(adapter)
        self._adapters.unload(adapter, in_use)
        self._prefixes.drop(peft_name)  # its KV is no other version's; its name is never used again

    # ------------------------------------------------------------------ requests

    def render_prompt(self, messages: tuple[dict[str, Any], ...]) -> list[int]:
        return render_chat(self._tokenizer, messages)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if not self._ready:
            raise EngineUnavailable(LOADING)
        tools = request.tools.tools if request.tools is not None else ()
        prompt_ids = await render_off_loop(
            self._tokenizer, request.messages, self.max_model_len or 0, tools, request.chat_template
        )
        check_context(len(prompt_ids), request.sampling.max_tokens, self.max_model_len or 0)
        grammar = None
        if grammar_key(request) is not None:
            grammar = await self._steps.grammars.compiled(request)  # on its own thread: the batch keeps decoding
        peft_name = BASE_ROW
        if request.adapter is not None:
            peft_name = self._adapters.name_of(request.adapter)
            if not peft_name:
                raise EngineUnavailable(f"Adapter {request.adapter.name} is not loaded.")
        loop = asyncio.get_running_loop()
        job = Job(request, prompt_ids, peft_name, loop, asyncio.Queue(), grammar, rows_left=request.sampling.n)
        with self._lock:
            if self._stopping:
                raise EngineUnavailable("The engine is shutting down.")
            if self._waiting.waiting(job.flow) >= self.max_queued:
                raise Overloaded(
                    f"{self.max_queued} of your requests on this model are already waiting; retry shortly.",
                    retry_after=1,
                )
            self._waiting.push(job)
            self._wakeup.notify_all()
        try:
            while True:
                item = await job.queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                for delta in item:
                    yield delta
        finally:
            # Normal end, error, or the consumer went away: in every case stop spending compute.
            job.cancelled.set()

    # ------------------------------------------------------------------ worker thread

    def _worker(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._stopping or self._commands or self._waiting or self._batch or self._fresh):
                        self._wakeup.wait()
                    if self._stopping:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                for fn, future in commands:
                    _run_command(fn, future)
                self._drop_finished_rows()
                self._admit_waiting()
                self._decode()
        self._fail_everything(EngineUnavailable("The engine stopped."))

    def _admit_waiting(self) -> None:
        """Prefill waiting jobs into the free slots, fairly between flows (``fair_queue.py``), within
        ``max_prefill_tokens``: a burst is admitted over several steps, so whoever arrives during it
        waits for one bounded prefill rather than the whole burst's."""
        if not self._waiting:
            return
        rows = self._running_rows()
        free = self.max_batch_size - len(rows)  # the queue knows who may still join a full batch
        running: Counter[str] = Counter(row.job.flow for row in rows)
        busy = set(running)
        hold = any(row.awaits_first_text(FIRST_TEXT_STEPS) for row in rows)
        with self._lock:
            admitted = self._waiting.take(
                running, free, self.max_prefill_tokens, newcomers_only=hold, cost=self._prefill_cost
            )
            joining = {job.flow for job in admitted if job.flow not in busy}
            # Asked only when a flow joins. What each flow already running holds or still waits
            # for: a flooder whose backlog is queued crowds the batch as much as one whose rows run.
            favoured = (
                self._waiting.fair
                and bool(joining)
                and crowded(Counter({f: running[f] + self._waiting.waiting(f) for f in busy}), len(joining))
            )
        if not admitted:
            return
        now = time.perf_counter()
        for job in admitted:
            job.queued_seconds = now - job.queued_at
            job.newcomer = favoured and job.flow in joining
        try:
            batch = self._prefill(admitted)
        except Exception as exc:  # a failed prefill fails only the jobs it admitted
            logger.exception("prefill failed")
            for job in admitted:
                self._fail_job(job, exc)
            return
        batch.keep(lambda row: not (row.finished or row.job.failed), trim=False)
        apart = self._fresh_apart and bool(self._batch) and all(job.newcomer for job in admitted)
        (self._fresh if apart else self._batch).take_in(batch)

    def _prefill_cost(self, job: Job) -> int:
        """The prompt tokens admitting ``job`` has its prefill compute: a prefix the cache holds is
        taken, not computed, so it does not count against ``max_prefill_tokens``. Without this, a
        burst sharing a long system prompt was admitted one request per step on a CPU, each one's
        whole prompt filling the budget, though all but the first compute only their question."""
        if not self._prefixes.enabled:
            return job.cost
        reused = self._prefixes.reusable(job.peft_name, job.prompt_ids, job.prefix_digests)
        return job.rows_wanted * (len(job.prompt_ids) - reused)

    def _prefill(self, jobs: list[Job]) -> Batch:
        """Prefill ``jobs`` into a batch of their rows: those whose prompt starts with a cached
        prefix (``prefix_cache.py``) together from their prefixes, the rest together, left-padded."""
        fresh: list[tuple[Job, list[Row]]] = []
        hits: list[tuple[Job, list[Row], int, list[tuple[Any, Any]]]] = []
        batch = Batch()
        for job in jobs:
            options = job.request.sampling
            try:  # one request's bad options fail that request alone, never the others admitted with it
                max_tokens = check_context(
                    len(job.prompt_ids), options.max_tokens, self.max_model_len or 0, options.default_max_tokens
                )
                job_rows = [self._steps.new_row(job, index, max_tokens) for index in range(options.n)]
            except Exception as exc:
                logger.warning("request %s refused at admission: %s", job.request.request_id, exc)
                self._fail_job(job, exc)
                continue
            hit = None
            if self._prefixes.enabled:
                hit = self._prefixes.lookup(job.peft_name, job.prompt_ids, job.prefix_digests)
            if hit is None:
                fresh.append((job, job_rows))
            else:
                hits.append((job, job_rows, *hit))
        if hits:
            batch.take_in(self._prefill_from(hits))
        if fresh:
            batch.take_in(self._prefill_together(fresh))
        return batch

    def _prefill_together(self, jobs: list[tuple[Job, list[Row]]]) -> Batch:
        rows = [row for _, job_rows in jobs for row in job_rows]
        prompts = [job.prompt_ids for job, job_rows in jobs for _ in job_rows]
        input_ids, mask = fresh_prefill(prompts, self._tokenizer.pad_token_id or 0, self._device)
        logits, cache = self._forward(input_ids, mask, [r.job.peft_name for r in rows], cache=make_cache([]))
        self._emit(rows, logits)
        if self._prefixes.enabled:
            layers, first, width = cache_layers(cache), 0, mask.shape[1]
            for job, job_rows in jobs:  # the first row of each job: its prompt's KV, padding left out
                start = width - len(job.prompt_ids)
                self._prefixes.store(
                    job.peft_name,
                    job.prompt_ids,
                    [(k[first : first + 1, :, start:], v[first : first + 1, :, start:]) for k, v in layers],
                    job.prefix_digests,
                )
                first += len(job_rows)
        return Batch(rows, cache, mask)

    def _prefill_from(self, hits: list[tuple[Job, list[Row], int, list[tuple[Any, Any]]]]) -> Batch:
        """Prefill the jobs whose prompts start with a cached prefix, together, in one forward
        (``cached_prefill``): each job's ``reused`` first positions come from its cached KV, only
        the rest is computed. Each job's whole prompt is then offered to the cache."""
        rows = [row for _, job_rows, _, _ in hits for row in job_rows]
        starts = [CachedStart(job.prompt_ids, reused, prefix, len(job_rows)) for job, job_rows, reused, prefix in hits]
        input_ids, mask, cache = cached_prefill(starts, self._tokenizer.pad_token_id or 0, self._device)
        logits, cache = self._forward(input_ids, mask, [r.job.peft_name for r in rows], cache=cache)
        self._emit(rows, logits)
        computed, first = cache_layers(cache), 0
        for job, job_rows, _, _ in hits:  # each job's whole prompt, its padding left out, for the next

            def prompt_kv(row: int = first) -> list[tuple[Any, Any]]:  # a copy: only if it is kept
                kept = mask[row].nonzero().squeeze(1)
                return [(k[row : row + 1, :, kept], v[row : row + 1, :, kept]) for k, v in computed]

            self._prefixes.store(job.peft_name, job.prompt_ids, prompt_kv, job.prefix_digests)
            first += len(job_rows)
        return Batch(rows, cache, mask)

    def _decode(self) -> None:
        """One decode step. Newcomers' rows before their first text (``_fresh``, on a CPU) step
        apart and first: their first words then take a few steps of their own rows, not of the
        whole batch's (a character split over tokens may take several), while the running rows
        wait that long, ``FIRST_TEXT_STEPS`` steps in a row at most. Then they join the batch."""
        if self._fresh and not any(row.awaits_first_text(FIRST_TEXT_STEPS) for row in self._fresh.rows):
            self._batch.take_in(self._fresh)
        if self._fresh and (self._fresh_streak < FIRST_TEXT_STEPS or not self._batch):
            self._fresh_streak += 1
            self._decode_step(self._fresh)
        elif self._batch:
            self._fresh_streak = 0
            self._decode_step(self._batch)

    def _decode_step(self, batch: Batch) -> None:
        rows = batch.rows
        tokens = torch.tensor([[r.last_token] for r in rows], device=self._device)
        assert batch.mask is not None  # a batch with rows has a mask
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(rows), 1))], dim=1)
        try:
            logits, cache = self._forward(tokens, mask, [r.job.peft_name for r in rows], batch.cache)
        except Exception as exc:  # the batch's forward failed: fail its rows, keep the engine
            logger.exception("decode step failed")
            for row in rows:
                self._fail_job(row.job, exc)
            batch.clear()
            return
        batch.cache, batch.mask = cache, mask
        self._emit(rows, logits)

    def _forward(self, input_ids: Any, mask: Any, peft_names: list[str], cache: Any) -> tuple[Any, Any]:
        """One forward pass of the batch; returns last-position logits (float32) and the cache."""
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        self._adapters.set_rows(peft_names, self._device)
        out = self._adapters.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return out.logits[:, -1, :].float(), getattr(out, self._cache_arg)

    def _emit(self, rows: list[Row], logits: Any) -> None:
        """Sample one token per row and send each job the text its rows produced this step."""
        per_job: dict[int, list[GenerationDelta]] = {}
        for i, row in enumerate(rows):
            if row.finished or row.job.failed:
                continue
            try:
                self.before_sample(row.job.request)
                delta = self._steps.advance(row, logits[i])
            except Exception as exc:  # one sequence broke: fail its request, not the batch
                logger.exception("request %s failed", row.job.request.request_id)
                self._fail_job(row.job, exc)
                continue
            if delta is not None:
                per_job.setdefault(id(row.job), []).append(delta)
        for row in rows:
            deltas = per_job.pop(id(row.job), None)
            if deltas:
                row.job.send(deltas)
                if row.job.rows_left == 0:
                    row.job.send(_DONE)

    def before_sample(self, request: GenerationRequest) -> None:
        """Hook called before each token is sampled for ``request``; tests inject faults here."""

    def _fail_job(self, job: Job, exc: BaseException) -> None:
        if job.failed:
            return
        job.failed = True
        error = exc if isinstance(exc, GatewayError) else EngineError(f"Generation failed: {type(exc).__name__}.")
        job.send(error)

    def _fail_everything(self, error: GatewayError) -> None:
        for row in self._running_rows():
            self._fail_job(row.job, error)
        with self._lock:
            for job in self._waiting:
                self._fail_job(job, error)
            self._waiting.clear()
            for _fn, future in self._commands:
                future.set_exception(error)
            self._commands.clear()
        self._batch.clear()
        self._fresh.clear()

    # ------------------------------------------------------------------ batch bookkeeping

    def _running_rows(self) -> list[Row]:
        return self._batch.rows + self._fresh.rows

    def _drop_finished_rows(self) -> None:
        for batch in (self._batch, self._fresh):
            batch.keep(lambda row: not (row.finished or row.job.failed or row.job.cancelled.is_set()))


def _run_command(fn: Callable[[], None], future: Future[None]) -> None:
    try:
        fn()
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(None)

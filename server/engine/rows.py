"""One sequence of the embedded engine's batch: from its logits to its next token, and to the text,
tool-call pieces and logprobs that token adds to its choice.

Per row, in order: the grammar's mask (constrained output), sampling, the grammar's step, the
logprob of the chosen token (from the unmasked logits), incremental detokenizing, stop sequences,
then tool-call parsing. Everything here is per row, so rows of one batch can follow different
grammars, adapters and options.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import EngineError
from .base import GenerationDelta, GenerationRequest, TokenLogprob, finish_reason
from .grammar import Grammars
from .logprobs import TokenBytes, token_logprob
from .prefix_cache import block_digests
from .sampling import Sampler
from .text import IncrementalDecoder, StopMatcher
from .tool_calls import ToolCallParser
from .utf8 import ACCEPT


@dataclass
class Job:
    """One request as the worker sees it; ``n`` choices become ``n`` rows."""

    request: GenerationRequest
    prompt_ids: list[int]
    peft_name: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    grammar: Any = None  # a compiled xgrammar grammar, when the output is constrained
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows_left: int = 0
    failed: bool = False
    queued_at: float = field(default_factory=time.perf_counter)
    queued_seconds: float | None = None  # set when the batch admits it; reported with its first token
    # Its flow held no rows when the batch admitted it, while another held or waited for more than
    # an even share (``fair_queue.crowded``): until its first text, the busy flows' prefills wait
    # (``fair_queue.py``) and, on a CPU, its rows step apart (``LocalEngine._decode``).
    newcomer: bool = False

    @functools.cached_property
    def prefix_digests(self) -> list[bytes]:
        """Its prompt's block digests (``prefix_cache.block_digests``): computed once, on first use,
        for the admission's check, the lookup and the store (read only where the cache is on)."""
        return block_digests(self.peft_name, self.prompt_ids)

    @property
    def flow(self) -> str:
        """Who is served fairly against whom (``fair_queue.py``): a tenant on one model."""
        return self.request.flow

    @property
    def rows_wanted(self) -> int:
        return self.request.sampling.n

    @property
    def cost(self) -> int:
        return self.request.sampling.n * len(self.prompt_ids)

    def gone(self) -> bool:
        return self.cancelled.is_set()

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class Row:
    """One sequence being decoded: a choice of a job."""

    job: Job
    index: int
    sampler: Sampler
    decoder: IncrementalDecoder
    stopper: StopMatcher
    max_tokens: int
    tool_calls: ToolCallParser | None = None  # when the request offers tools it may call
    matcher: Any = None  # xgrammar matcher, when the output is constrained
    bitmask: Any = None
    utf8_state: int = ACCEPT  # where the constrained output stands within a UTF-8 character
    logprobs: list[TokenLogprob] | None = None  # not yet sent; None: not asked for
    generated: int = 0
    last_token: int = 0
    finished: bool = False
    answered: bool = False  # something (text, a call or the end) has gone to the job

    def awaits_first_text(self, steps: int) -> bool:
        """A newcomer's row before its first text, within its first ``steps`` tokens."""
        return self.job.newcomer and not self.answered and not self.finished and self.generated < steps


class RowSteps:
    """What every row of one engine shares: its tokenizer, end-of-turn ids, grammars and token bytes."""

    def __init__(
        self, tokenizer: Any, eos_ids: set[int], grammars: Grammars, token_bytes: TokenBytes, device: torch.device
    ) -> None:
        self.tokenizer, self.eos_ids, self.grammars = tokenizer, eos_ids, grammars
        self.token_bytes, self.device = token_bytes, device

    def new_row(self, job: Job, index: int, max_tokens: int) -> Row:
        request, options = job.request, job.request.sampling
        row = Row(
            job=job,
            index=index,
            sampler=Sampler(options, index, self.device),
            decoder=IncrementalDecoder(self.tokenizer),
            stopper=StopMatcher(options.stop),
            max_tokens=max_tokens,
            logprobs=[] if options.logprobs is not None else None,
        )
        if request.tools is not None and request.tools.calls_allowed:
            row.tool_calls = ToolCallParser()
        if job.grammar is not None:
            row.matcher = self.grammars.matcher(job.grammar)
            row.bitmask = self.grammars.new_bitmask()
        return row

    def advance(self, row: Row, logits: Any) -> GenerationDelta | None:
        raw = logits
        if row.matcher is not None:
            logits = logits.clone() if row.logprobs is not None else logits
            self.grammars.mask(row.matcher, row.bitmask, logits, row.utf8_state)
        token = row.sampler.next_token(logits)
        if row.matcher is not None:
            if not row.matcher.accept_token(token):
                raise EngineError("Constrained decoding reached a state its grammar does not allow.")
            row.utf8_state = self.grammars.utf8.step(row.utf8_state, token)
        row.last_token = token
        row.generated += 1
        if row.logprobs is not None and token not in self.eos_ids:
            top = row.job.request.sampling.logprobs or 0
            row.logprobs.append(token_logprob(raw, token, top, self.token_bytes))
        finish: str | None = None
        text = ""
        if token in self.eos_ids:
            finish = "stop"
        else:
            text, hit_stop = row.stopper.feed(row.decoder.push(token))
            if hit_stop:
                finish = "stop"
            elif row.generated >= row.max_tokens:
                finish = "length"
        if finish is not None:
            if finish != "stop" or token in self.eos_ids:
                text += row.stopper.flush()
            row.finished = True
            row.job.rows_left -= 1
        calls: list[Any] = []
        if row.tool_calls is not None:
            text, calls = row.tool_calls.feed(text)
            if finish is not None:
                tail, more = row.tool_calls.finish()
                text, calls = text + tail, calls + more
        if not text and not calls and finish is None:
            return None
        queued = row.job.queued_seconds if row.index == 0 and not row.answered else None  # once, with the first
        row.answered = True
        logprobs = None
        if row.logprobs is not None:
            logprobs, row.logprobs = tuple(row.logprobs), []
        return GenerationDelta(
            index=row.index,
            text=text,
            finish_reason=finish_reason(finish, tool_called=row.tool_calls is not None and row.tool_calls.called),
            prompt_tokens=len(row.job.prompt_ids),
            completion_tokens=row.generated,
            tool_calls=tuple(calls),
            logprobs=logprobs,
            queued_seconds=queued,
        )

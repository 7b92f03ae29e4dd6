"""What one request tells the metrics and its key's usage: tokens, time to first token, latency,
queue time and outcome (``Observer``), and its usage added up across choices (``Usage``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from .engine.base import GenerationDelta
from .errors import GatewayError
from .metrics import GatewayMetrics
from .openai.protocol import UsageInfo
from .output_checks import OutputChecker

# Told when a request under a traffic split ends: (server error, seconds when answered, whether
# its output check failed, None when the request asked for neither tools nor JSON).
SplitOutcome = Callable[[bool, float | None, bool | None], None]


class Observer:
    """Metrics for one request: tokens, time to first token, latency, outcome."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        model: str,
        version: str = "",
        outcome: SplitOutcome | None = None,
        spent: Callable[[int, int, bool], None] | None = None,
        checker: OutputChecker | None = None,
        base: str = "",
    ) -> None:
        self.metrics = metrics
        self.model = model
        self.version = version  # the adapter version's number; "" for the base
        self.base = base  # the base model that answers (the ``base`` label)
        self._outcome = outcome  # told when a version under a split finishes
        self._checker = checker  # tool calls and JSON documents, checked when the answer is whole
        self._spent = spent  # told (prompt, completion tokens, failed) once: the key's usage
        self.started = time.perf_counter()
        # Until the first token is timed; False from the start for an answer that arrives whole.
        self.times_first_token = True
        self.tokens = (0, 0)  # prompt, completion so far
        self._series = metrics.route(model, version, base)

    def _account(self, failed: bool) -> None:
        if self._spent is not None:
            spent, self._spent = self._spent, None
            spent(*self.tokens, failed)

    def delta(self, delta: GenerationDelta) -> None:
        if self._checker is not None:
            self._checker.delta(delta)
        if delta.queued_seconds is not None:
            self.metrics.queue_time.labels(self.model).observe(delta.queued_seconds)
        if self.times_first_token and delta.completion_tokens:
            self.times_first_token = False
            self._series.ttft.observe(time.perf_counter() - self.started)

    def success(self, usage: UsageInfo) -> None:
        series = self._series
        series.ok.inc()
        series.prompt_tokens.inc(usage.prompt_tokens)
        series.completion_tokens.inc(usage.completion_tokens)
        seconds = time.perf_counter() - self.started
        series.e2e.observe(seconds)
        checked = None
        if self._checker is not None:
            checked = self._checker.outcome()
            self.metrics.output_checks.labels(self.model, self.version, checked.value).inc()
        if self._outcome is not None:
            self._outcome(False, seconds, None if checked is None else checked.bad)
        self.tokens = (usage.prompt_tokens, usage.completion_tokens)
        self._account(False)

    def failure(self, error: GatewayError) -> None:
        self.metrics.record_error(self.model, error.status_code, error.error_type, self.version, self.base)
        error.counted_as = self.model
        if self._outcome is not None:
            self._outcome(error.status_code >= 500, None, None)
        self._account(True)

    def aborted(self) -> None:
        self.metrics.aborted.labels(self.model, self.version).inc()
        self._account(False)


class Usage:
    """Adds up usage across choices: the prompt counts once, completions once per choice."""

    def __init__(self, n: int) -> None:
        self.prompt_tokens = 0
        self._completion = [0] * n

    def add(self, delta: GenerationDelta) -> None:
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens
        self._completion[delta.index] = delta.completion_tokens

    @property
    def total(self) -> tuple[int, int]:
        return self.prompt_tokens, sum(self._completion)

    def info(self) -> UsageInfo:
        completion = sum(self._completion)
        return UsageInfo(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )

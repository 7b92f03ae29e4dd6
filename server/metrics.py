"""Prometheus metrics, one registry per app (so several apps in one process never collide).

Every request metric carries a ``model`` label: the base id or the adapter name the request
resolved to. Names that did not resolve are counted as ``unknown`` so arbitrary client input can
never blow up label cardinality. Beside it, ``version`` is the adapter version that answered (its
number; empty for the base and for requests refused before a version was chosen), so a canary's
errors and latency can be told from its baseline's; it grows by one series per version published
while the process runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine.base import EngineHealth

if TYPE_CHECKING:
    from .registry.gate_spec import GateOutcome

UNKNOWN_MODEL = "unknown"
MAX_TENANT_SERIES = 1000
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True)
class RouteSeries:
    """One (model, version, base)'s series of every request that gets an answer, looked up once:
    prometheus' ``labels()`` takes a lock and a dictionary lookup per call, four per request."""

    ok: Counter  # a labelled series is an instance of its metric's own class
    prompt_tokens: Counter
    completion_tokens: Counter
    ttft: Histogram
    e2e: Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self._routes: dict[tuple[str, str, str], RouteSeries] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lora_gateway_requests",
            "Chat completion requests by model, adapter version, base model and HTTP status.",
            ["model", "version", "base", "status"],
            registry=r,
        )
        self.errors = Counter(
            "lora_gateway_request_errors",
            "Failed requests by model, adapter version, base model and error type.",
            ["model", "version", "base", "type"],
            registry=r,
        )
        self.watcher_failures = Counter(
            "lora_gateway_watcher_failures",
            "Times the adapters-directory watcher failed and was restarted.",
            registry=r,
        )
        self.prompt_tokens = Counter(
            "lora_gateway_prompt_tokens", "Prompt tokens processed.", ["model", "version", "base"], registry=r
        )
        self.completion_tokens = Counter(
            "lora_gateway_completion_tokens",
            "Completion tokens generated.",
            ["model", "version", "base"],
            registry=r,
        )
        self.ttft = Histogram(
            "lora_gateway_time_to_first_token_seconds",
            "Time from request to first generated token.",
            ["model", "version", "base"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lora_gateway_e2e_request_latency_seconds",
            "Time from request to last token.",
            ["model", "version", "base"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "lora_gateway_queue_time_seconds",
            "Time a request waited for a place in the local engine's batch (fair admission between tenants).",
            ["model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.aborted = Counter(
            "lora_gateway_requests_aborted",
            "Requests whose client went away before the end.",
            ["model", "version"],
            registry=r,
        )
        self.adapter_load_seconds = Histogram(
            "lora_gateway_adapter_load_seconds",
            "Time to load one adapter version into the engine.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.adapter_swaps = Counter(
            "lora_gateway_adapter_swaps", "Active adapter versions replaced by a newer version.", registry=r
        )
        self.adapters_rejected = Counter(
            "lora_gateway_adapters_rejected",
            "Adapter versions refused by validation, by reason.",
            ["reason"],
            registry=r,
        )
        self.eval_gate_runs = Counter(
            "lora_gateway_eval_gate_runs",
            "Adapter eval gate runs, by result (passed or failed).",
            ["result"],
            registry=r,
        )
        self.eval_gate_seconds = Histogram(
            "lora_gateway_eval_gate_seconds",
            "Time one adapter eval gate run took.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.output_checks = Counter(
            "lora_gateway_output_checks",
            "Answers that asked for tools or a JSON response_format, by model, adapter version and outcome "
            "(ok, malformed_tool_call, cut_tool_call, malformed_json, cut_json).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.split_aborts = Counter(
            "lora_gateway_split_aborts",
            "Traffic splits aborted (back to their baseline version), by adapter name.",
            ["model"],
            registry=r,
        )
        # Per tenant and key: both come from keys an admin created (never from client input), and past
        # MAX_TENANT_SERIES distinct keys the rest are counted as ``other``.
        self.tenant_requests = Counter(
            "lora_gateway_tenant_requests",
            "Requests by tenant, API key id and outcome (ok, error).",
            ["tenant", "key", "outcome"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "lora_gateway_tenant_tokens",
            "Tokens by tenant, API key id and kind (prompt, completion).",
            ["tenant", "key", "kind"],
            registry=r,
        )
        self._tenant_series: set[tuple[str, str]] = set()
        # WeCom: ``bot`` is a configured bot name (or ``unknown``), so its cardinality is bounded too.
        self.wecom_callbacks = Counter(
            "lora_gateway_wecom_callbacks", "WeCom callbacks by bot and outcome.", ["bot", "outcome"], registry=r
        )
        self.wecom_reply_seconds = Histogram(
            "lora_gateway_wecom_reply_seconds",
            "Time from a WeCom message to its answer being delivered (app) or complete (aibot).",
            ["bot"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.wecom_sends = Counter(
            "lora_gateway_wecom_messages_sent",
            "WeCom message/send calls by bot and outcome.",
            ["bot", "outcome"],
            registry=r,
        )

    def route(self, model: str, version: str, base: str) -> RouteSeries:
        """The series of requests answered by ``model`` (its ``version``, on ``base``). Bounded as
        the labels are: ``model`` is one that resolved, ``version`` one that was published."""
        labels = (model, version, base)
        series = self._routes.get(labels)
        if series is None:
            series = self._routes[labels] = RouteSeries(
                self.requests.labels(*labels, "200"),
                self.prompt_tokens.labels(*labels),
                self.completion_tokens.labels(*labels),
                self.ttft.labels(*labels),
                self.e2e.labels(*labels),
            )
        return series

    def record_gate(self, outcome: GateOutcome) -> None:
        self.eval_gate_runs.labels("passed" if outcome.passed else "failed").inc()
        self.eval_gate_seconds.observe(outcome.seconds)

    def record_tenant(self, tenant: str, key: str, prompt: int, completion: int, failed: bool) -> None:
        if (tenant, key) not in self._tenant_series:
            if len(self._tenant_series) >= MAX_TENANT_SERIES:
                tenant, key = "other", "other"
            else:
                self._tenant_series.add((tenant, key))
        self.tenant_requests.labels(tenant, key, "error" if failed else "ok").inc()
        if prompt:
            self.tenant_tokens.labels(tenant, key, "prompt").inc(prompt)
        if completion:
            self.tenant_tokens.labels(tenant, key, "completion").inc(completion)

    def record_error(self, model: str, status: int, error_type: str, version: str = "", base: str = "") -> None:
        """``base``: the base model that would have answered ("" when the request never got that far)."""
        self.requests.labels(model, version, base, str(status)).inc()
        self.errors.labels(model, version, base, error_type).inc()

    def watch_engine(
        self,
        health: Callable[[], EngineHealth],
        registered: Callable[[], int],
        peak_memory: Callable[[], int | None] = lambda: None,
    ) -> None:
        """Gauges read at scrape time, so they are never stale and cost nothing between scrapes."""
        self.registry.register(_LiveGauges(health, registered, peak_memory))


class _LiveGauges(Collector):
    def __init__(
        self,
        health: Callable[[], EngineHealth],
        registered: Callable[[], int],
        peak_memory: Callable[[], int | None],
    ) -> None:
        self._health = health
        self._registered = registered
        self._peak_memory = peak_memory

    def collect(self) -> Iterable[Metric]:
        health = self._health()
        yield GaugeMetricFamily(
            "lora_gateway_engine_ready", "1 when the engine serves requests.", value=int(health.ready)
        )
        yield GaugeMetricFamily(
            "lora_gateway_running_requests", "Requests being decoded now.", value=health.running_requests
        )
        yield GaugeMetricFamily(
            "lora_gateway_waiting_requests", "Sequences waiting for a batch slot.", value=health.waiting_requests
        )
        yield GaugeMetricFamily(
            "lora_gateway_adapters_loaded", "Adapter versions held by the engine.", value=len(health.loaded_adapters)
        )
        yield GaugeMetricFamily(
            "lora_gateway_adapters_registered", "Adapters that serve requests.", value=self._registered()
        )
        if health.prefix_cache is not None:
            hits, reused, held = health.prefix_cache
            yield CounterMetricFamily(
                "lora_gateway_prefix_cache_hits", "Prompts that started with a cached prefix.", value=hits
            )
            yield CounterMetricFamily(
                "lora_gateway_prefix_cache_reused_tokens",
                "Prompt tokens taken from the prefix cache instead of computed.",
                value=reused,
            )
            yield GaugeMetricFamily("lora_gateway_prefix_cache_bytes", "KV held by the prefix cache.", value=held)
        peak = self._peak_memory()
        if peak is not None:
            yield GaugeMetricFamily(
                "lora_gateway_engine_peak_memory_bytes",
                "The engine's peak memory: CUDA's peak allocation on a GPU, the process's peak RSS on CPU.",
                value=peak,
            )

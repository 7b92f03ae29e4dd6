"""``create_app(settings)``: wire settings, engine, registry and routes into one FastAPI app.

The engine loads in the background after the server starts listening, so ``/health`` answers at
once and ``/ready`` turns 200 when the model and the adapters present at start-up are loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from .admission import AdapterGate
from .api import admin, chat, feedback, fine_tuning, keys, models, ops, playground, responses
from .api.errors import CHAT_PATH, RESPONSES_PATH, ErrorResponder, count_refusal, install_error_handlers
from .api.limits import BodyLimitMiddleware
from .database import database_url, open_engine
from .engine.base import Engine
from .errors import first_line
from .evaluation.judge import load_judges
from .evaluation.proving import GateRunner
from .evaluation.ratings import DatabaseRatings, RatingStore
from .feedback import FeedbackStore
from .finetune.service import FineTuning
from .finetune.store import FineTuningStore
from .gateway import Gateway
from .integrations import configured
from .metrics import GatewayMetrics
from .registry import AdapterRegistry
from .registry.base_model import BaseModelSpec
from .registry.bases import ServedBase
from .registry.registry import RegistryHooks
from .registry.rollout import Rollouts
from .registry.source_watch import SourceWatcher
from .registry.sources import SourceConfig, SourceConfigError, SourceURL
from .registry.validation import AdapterRejected
from .registry.watcher import AdapterWatcher
from .responses_store import ResponseStore
from .settings import Settings
from .tenancy.service import Tenancy
from .terms.address import ModelAddress
from .terms.layout import FINE_TUNING_DIR, PLAYGROUND_RATINGS

logger = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Engine:
    """The engine named by ``--engine``; imported lazily so unused engines cost nothing."""
    if settings.engine == "local":
        from .engine.local import LocalEngine

        models = {settings.base_model_id: settings.model, **settings.extra_bases}
        engines: dict[str, Engine] = {
            base: LocalEngine(
                model,
                device=settings.device,
                dtype=settings.dtype,
                max_batch_size=settings.max_batch_size,
                max_prefill_tokens=settings.max_prefill_tokens,
                max_model_len=settings.max_model_len,
                allow_long_context=settings.allow_long_context,
                max_queued=settings.max_queued_requests,
                fair_admission=settings.fair_admission,
                grammar_timeout=settings.grammar_timeout,
                prefix_cache_bytes=settings.prefix_cache_mb * 1024**2,
                onednn_linears=settings.onednn_linears,
            )
            for base, model in models.items()
        }
        if len(engines) == 1:
            return engines[settings.base_model_id]
        from .engine.several_bases import SeveralBases, default_budget

        budget = settings.memory_budget_gb
        return SeveralBases(engines, budget_bytes=int(budget * 1024**3) if budget else default_budget(settings.device))
    if settings.engine == "vllm":
        from .engine.vllm_engine import VllmEngine, VllmOptions

        return VllmEngine(
            VllmOptions(
                model=settings.model,
                served_model_name=settings.base_model_id,
                max_model_len=settings.max_model_len,
                dtype=settings.dtype,
                max_loras=settings.max_loras,
                max_lora_rank=settings.max_lora_rank,
                # vLLM's host-memory LRU must hold every version our registry keeps loaded.
                max_cpu_loras=settings.max_cpu_loras or settings.max_loaded_adapters,
                tensor_parallel_size=settings.tensor_parallel_size,
                gpu_memory_utilization=settings.gpu_memory_utilization,
            )
        )
    if settings.engine == "remote":
        from .engine.remote import RemoteEngine

        key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        return RemoteEngine(
            settings.upstream,
            base_model_id=settings.base_model_id,
            api_key=key,
            first_byte_timeout=settings.upstream_first_byte_timeout,
            stall_timeout=settings.upstream_stall_timeout,
        )
    raise ValueError(f"unknown engine {settings.engine!r}")


def source_config(settings: Settings) -> SourceConfig:
    """Where adapters may be fetched from (``registry.sources``): the operator's settings only.
    ``SourceConfigError`` (one line) when a prefix or the watched source is no URL this can fetch."""
    schemes = tuple(s.lower() for s in settings.source_schemes)
    for flag, url in [
        *(("--adapter-sources", u) for u in settings.adapter_sources),
        ("--adapters-source", settings.adapters_source),
    ]:
        if url is None:
            continue
        try:
            parsed = SourceURL.parse(url, prefix=True)
        except AdapterRejected as exc:
            raise SourceConfigError(f"{flag}: {exc}") from None
        if parsed.scheme not in schemes:
            raise SourceConfigError(f"{flag}: {parsed.scheme}:// is not among --source-schemes ({', '.join(schemes)})")
    return SourceConfig(
        allowed=tuple(settings.adapter_sources),
        schemes=schemes,
        options=settings.source_options,
        timeout=settings.source_timeout,
        max_bytes=settings.max_adapter_bytes,
    )


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    engine = engine or build_engine(settings)
    metrics = GatewayMetrics()
    registry = AdapterRegistry(
        engine,
        base_model_id=settings.base_model_id,
        base_root=settings.model,
        adapters_dir=settings.adapters_dir,
        max_lora_rank=settings.max_lora_rank,
        max_adapter_bytes=settings.max_adapter_bytes,
        max_loaded=settings.max_loaded_adapters,
        keep_versions=settings.keep_versions,
        hooks=RegistryHooks(
            rejected=lambda reason: metrics.adapters_rejected.labels(reason).inc(),
            loaded=metrics.adapter_load_seconds.observe,
            swapped=metrics.adapter_swaps.inc,
            gated=metrics.record_gate,
        ),
        prove=GateRunner(
            engine, settings.base_model_id, timeout_cap=settings.eval_gate_timeout, judges=load_judges(settings.judges)
        ).run,
    )
    if not settings.adapters_dir.is_dir():  # created, and followed like any other: publish into it at any time
        settings.adapters_dir.mkdir(parents=True)  # now: the default database lives in it
        logger.info(
            "created the adapters directory %s; adapters published into it are served without a restart",
            settings.adapters_dir,
        )
    gateway = Gateway(
        settings=settings,
        engine=engine,
        registry=registry,
        rollouts=Rollouts(registry, lambda name, why: metrics.split_aborts.labels(name).inc()),
        metrics=metrics,
        tenancy=Tenancy(
            open_engine(database_url(settings.database, settings.adapters_dir)),
            [key.get_secret_value().encode() for key in settings.api_key],
            settings.limits_storage,
        ),
        admin_keys=[settings.admin_key.get_secret_value().encode()] if settings.admin_key else [],
        sources=source_config(settings),
    )
    if hasattr(engine, "on_base"):  # the remote engine: a base an upstream serves, new to the gateway
        engine.on_base = lambda base_id, root: gateway.background.append(
            asyncio.create_task(_serve_base(gateway, base_id, root), name=f"base {base_id}")
        )
    if engine.adapter_slots is not None:  # an engine that batches few adapters and admits them first come
        gateway.adapter_gate = AdapterGate(
            engine.adapter_slots,
            settings.max_queued_requests,
            lambda adapter, seconds: metrics.queue_time.labels(ModelAddress.parse(adapter).name).observe(seconds),
        )
    gateway.responses = ResponseStore(gateway.tenancy.engine, settings.responses_retention_days)
    if settings.fine_tuning:
        from .devices import resolve_device  # torch: only a gateway that trains needs it here

        store = FineTuningStore(gateway.tenancy.engine, settings.adapters_dir / FINE_TUNING_DIR)
        gateway.fine_tuning = FineTuning(store, settings, registry, str(resolve_device(settings.device)))
    metrics.watch_engine(engine.health, lambda: len(registry.active_versions()), engine.peak_memory_bytes)
    integrations = configured(settings, gateway)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_boot(gateway)), asyncio.create_task(gateway.tenancy.follow())]
        if gateway.feedback is not None:
            tasks.append(
                asyncio.create_task(_purge_hourly("feedback", "captured conversations", gateway.feedback.purge))
            )
        if gateway.responses is not None:
            tasks.append(asyncio.create_task(_purge_hourly("responses", "stored responses", gateway.responses.purge)))
        if gateway.fine_tuning is not None:
            tasks.append(asyncio.create_task(gateway.fine_tuning.run(), name="fine-tuning queue"))
        gateway.background = tasks
        for integration in integrations:
            await integration.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # a background task that had failed: said at shutdown, never swallowed
                    logger.exception("background task %s had failed", task.get_name())
            await registry.stop_gates()
            for integration in integrations:
                await integration.close()
            if gateway.feedback is not None:
                await asyncio.to_thread(gateway.feedback.close)
            await asyncio.to_thread(gateway.tenancy.close)
            await engine.stop()

    app = chat.GatewayApp(title="lora-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    body_limit: dict[str, Any] = {
        "max_bytes": settings.max_request_bytes,
        "timeout": settings.body_timeout,
        "refused": lambda path, error: count_refusal(metrics, path, error),
        # an upload's multipart framing on top of the file; ten minutes to send it
        "uploads": {"/v1/files": (settings.max_file_bytes + 64 * 1024, 600.0)} if settings.fine_tuning else None,
    }
    app.add_middleware(BodyLimitMiddleware, **body_limit)
    respond = ErrorResponder(metrics)
    install_error_handlers(app, respond)
    chat.install(app)
    app.fast_endpoints = {
        path: BodyLimitMiddleware(chat.FastEndpoint(handler, path, respond), **body_limit)
        for path, handler in ((CHAT_PATH, chat.create_chat_completion), (RESPONSES_PATH, responses.create_response))
    }
    app.include_router(models.router)
    app.include_router(responses.router)
    app.include_router(ops.router)
    app.include_router(admin.router)
    app.include_router(keys.router)
    app.include_router(feedback.router)
    app.include_router(feedback.admin)
    app.include_router(fine_tuning.router)
    if settings.feedback:
        gateway.feedback = FeedbackStore(
            database_url(settings.database, settings.adapters_dir), retention_days=settings.feedback_retention_days
        )
    if settings.playground:
        if gateway.feedback is not None and settings.ratings_file is None:
            gateway.ratings = DatabaseRatings(gateway.feedback)  # beside users' ratings, shared by gateways
        else:
            gateway.ratings = RatingStore(settings.ratings_file or settings.adapters_dir / PLAYGROUND_RATINGS)
        app.include_router(playground.page)
        app.include_router(playground.router)
    for integration in integrations:
        setattr(app.state, integration.name, integration)
        app.include_router(integration.router)
    return app


def missing_local_model(model: str) -> bool:
    """A path that is not there (a Hub id never starts with '.', '/' or '~', nor has two slashes)."""
    looks_local = model.startswith((".", "/", "~")) or model.strip("/").count("/") > 1
    return looks_local and not os.path.exists(os.path.expanduser(model))


def describe_failure(exc: BaseException, model: str) -> str:
    """One line a user can act on; library errors often span paragraphs."""
    if missing_local_model(model):
        return f"--model {model}: no such directory"
    return first_line(exc)


async def _purge_hourly(what: str, rows: str, purge: Callable[[], int]) -> None:
    """Delete ``rows`` past their retention: at start, then hourly."""
    while True:
        try:
            purged = await asyncio.to_thread(purge)
            if purged:
                logger.info("%s: %d %s past the retention period deleted", what, purged, rows)
        except Exception:
            logger.exception("%s: deleting expired %s failed; retrying in an hour", what, rows)
        await asyncio.sleep(3600)


async def _serve_base(gateway: Gateway, base_id: str, root: str) -> None:
    """An upstream serves ``base_id``: serve it, and the adapters refused until now for want of it.
    Its config read from ``root`` gives shapes to check adapters against; where it is not readable
    here (a path on the upstream's volume only), adapters are matched by name and the upstream's
    load checks them."""
    settings, registry = gateway.settings, gateway.registry
    if base_id == settings.base_model_id or base_id in registry.bases:
        return  # the default base's spec, and a declared base's, are the boot's to read
    default = registry.bases.default
    if default is not None and default.declared_by(root, None):  # the default base under another served name
        logger.error(
            "an upstream serves %s (the default base's model) as %r, not as %r: start it with "
            "--served-model-name %s, or the gateway with --served-model-name %s",
            root,
            base_id,
            default.id,
            default.id,
            base_id,
        )
        return
    names = settings.aliases_of(base_id)
    model = settings.extra_bases.get(base_id, root)
    try:
        spec: BaseModelSpec | None = await asyncio.to_thread(BaseModelSpec.from_pretrained, model, names)
    except Exception as exc:
        logger.warning(
            "base model %s (%s): its config is not readable here (%s); adapters are matched by "
            "name and checked by the upstream's load",
            base_id,
            model,
            first_line(exc),
        )
        spec = None
    if registry.add_base(ServedBase(base_id, model, spec, tuple(names))) and registry.scan_complete:
        await registry.scan()


async def _boot(gateway: Gateway) -> None:
    """Load the base (it serves at once), then follow the adapters directory.

    The watcher starts before the first scan so that nothing written during the scan is missed;
    /ready turns 200 once the scan has validated every adapter present (headers only), and adapters
    are then preloaded into free engine slots in the background.
    """
    settings, registry = gateway.settings, gateway.registry
    try:
        await gateway.engine.start()
        aliases = [*settings.base_model_alias, *([settings.served_model_name] if settings.served_model_name else [])]
        registry.base_spec = await asyncio.to_thread(BaseModelSpec.from_pretrained, settings.model, aliases)
        for base_id, model in settings.extra_bases.items():  # each adapter is served on the base it names
            names = settings.aliases_of(base_id)
            spec = await asyncio.to_thread(BaseModelSpec.from_pretrained, model, names)
            registry.add_base(ServedBase(base_id, model, spec, tuple(names)))
        gateway.watcher = AdapterWatcher(registry, poll=settings.watch_poll)
        gateway.background.append(asyncio.create_task(gateway.watcher.supervise(gateway.metrics.watcher_failures.inc)))
        await registry.scan()
        if settings.adapters_source:
            gateway.source_watcher = SourceWatcher(
                settings.adapters_source,
                settings.adapters_dir,
                gateway.sources,
                interval=settings.adapters_source_interval,
                check=registry.inspect,
                on_failure=lambda name: gateway.metrics.adapters_rejected.labels("source").inc(),
            )
            gateway.background.append(asyncio.create_task(gateway.source_watcher.run(), name="adapters source"))
    except Exception as exc:
        gateway.boot_error = f"start-up failed: {describe_failure(exc, settings.model)}"
        logger.error("%s", gateway.boot_error)
        if gateway.on_fatal is not None:
            gateway.on_fatal(gateway.boot_error)
        return
    finally:
        gateway.booted.set()
    await registry.preload()

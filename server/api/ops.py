"""Operational endpoints, unauthenticated so probes and Prometheus need no key:
``/health`` (the process answers), ``/ready`` (the engine serves), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .deps import GatewayDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(gateway: GatewayDep) -> JSONResponse:
    """200 once the base model serves and the first scan of the adapters directory is done.

    The base (and each adapter as soon as it validates) already answers before that; the body
    reports the scan's progress so a slow start with many adapters is visible.
    """
    engine = gateway.engine.health()
    registry = gateway.registry
    watcher = gateway.watcher
    following = watcher is not None and watcher.following
    # A gateway that no longer follows its directory would miss new and removed adapters: not ready.
    is_ready = engine.ready and registry.scan_complete and gateway.boot_error is None and following
    states = [entry.state.value for entry in registry.entries()]
    body = {
        "ready": is_ready,
        "engine": engine.detail if gateway.boot_error is None else gateway.boot_error,
        "adapters": {
            "scanned": registry.scan_done,
            "total": registry.scan_total,
            "scan_complete": registry.scan_complete,
            "ready": states.count("ready"),
            "rejected": states.count("rejected"),
            "incomplete": states.count("incomplete"),
            "gating": states.count("gating"),  # a first version under its eval gate: never holds readiness
            "loaded": registry.loaded_count,
            "watching": following,
            "watcher_failure": watcher.last_failure if watcher is not None else None,
        },
        "running_requests": engine.running_requests,
        "waiting_requests": engine.waiting_requests,
    }
    source = gateway.source_watcher
    if source is not None:  # --adapters-source: reported, never holding readiness (the directory serves on)
        body["adapters_source"] = {"url": str(source.url), "polls": source.polls, "last_error": source.last_error}
    body["bases"] = registry.bases.ids
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics")
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

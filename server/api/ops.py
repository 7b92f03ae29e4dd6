"""Operational endpoints, unauthenticated so probes and Prometheus need no key:
``/health`` (the process answers), ``/ready`` (the engine serves), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import GatewayDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(gateway: GatewayDep) -> JSONResponse:
    engine = gateway.engine.health()
    is_ready = engine.ready and gateway.booted.is_set() and gateway.boot_error is None
    body = {
        "ready": is_ready,
        "engine": engine.detail if gateway.boot_error is None else gateway.boot_error,
        "adapters_registered": len(gateway.registry.active_versions()),
        "running_requests": engine.running_requests,
        "waiting_requests": engine.waiting_requests,
    }
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics")
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

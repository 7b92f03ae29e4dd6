"""FastAPI dependencies as ``Annotated`` aliases, so routes declare what they need in one word."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request

from ..gateway import Gateway
from ..tenancy.service import ANYONE, Principal
from .auth import presented_one_of


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _gateway(request: Request) -> Gateway:
    """``get_gateway`` as a dependency: async, so FastAPI calls it in place, not in its thread pool."""
    return get_gateway(request)


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def require_api_key(request: Request) -> Principal:
    """Who the request is (``Unauthorized`` when its key is missing or wrong); kept on
    ``request.state.principal`` for routes that scope what they show. Async: FastAPI would run a
    plain function in its thread pool, a hop per request for a dictionary lookup."""
    principal = await get_gateway(request).tenancy.identify(request.headers.get("authorization", ""))
    request.state.principal = principal
    return principal


async def require_inference_or_admin_key(request: Request) -> Principal:
    """An inference key, or the admin key (which sees everything)."""
    gateway = get_gateway(request)
    if gateway.admin_keys and presented_one_of(request, gateway.admin_keys):
        request.state.principal = ANYONE
        return ANYONE
    return await require_api_key(request)


PrincipalDep = Annotated[Principal, Depends(require_api_key)]


async def audit(request: Request, action: str, target: str, **detail: Any) -> None:
    """Record an admin action in the audit log: who (the admin key, from which address), what, when."""
    client = request.client.host if request.client else "unknown"
    log = get_gateway(request).tenancy.audit
    await asyncio.to_thread(log.record, f"admin-key@{client}", action, target, **detail)

"""Admin API for tenants (``--admin-key``): API keys, usage for billing, and the audit log.

``POST /v1/keys`` answers the new key's secret once; nothing can show it again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import InvalidRequest, NotFound
from ..feedback.report import parse_since
from ..tenancy.spec import KeyUpdate, NewKey
from .admin import require_admin_key
from .deps import GatewayDep, audit

router = APIRouter(dependencies=[Depends(require_admin_key)])


@router.post("/v1/keys", status_code=201)
async def create_key(body: NewKey, request: Request, gateway: GatewayDep) -> JSONResponse:
    store = gateway.tenancy.store
    options = body.changes()
    options.pop("name", None)
    options.pop("tenant", None)
    key, secret = await asyncio.to_thread(lambda: store.create(body.name, body.tenant, **options))
    await audit(request, "key.create", key.id, name=key.name, tenant=key.tenant, **_shown(options))
    await asyncio.to_thread(gateway.tenancy.ring.refresh)  # usable at once on this gateway
    return JSONResponse({"object": "api_key", **key.public(), "secret": secret}, status_code=201)


@router.get("/v1/keys")
async def list_keys(gateway: GatewayDep) -> dict[str, Any]:
    keys = await asyncio.to_thread(gateway.tenancy.store.all)
    return {"object": "list", "data": [{"object": "api_key", **k.public()} for k in keys]}


@router.patch("/v1/keys/{ident}")
async def update_key(ident: str, body: KeyUpdate, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    changes = body.changes()
    try:
        key = await asyncio.to_thread(gateway.tenancy.store.update, ident, **changes)
    except LookupError as exc:
        raise NotFound(str(exc.args[0])) from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="key_revoked") from None
    await audit(request, "key.update", key.id, **_shown(changes))
    await asyncio.to_thread(gateway.tenancy.ring.refresh)
    return {"object": "api_key", **key.public()}


@router.delete("/v1/keys/{ident}")
async def revoke_key(ident: str, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    try:
        key = await asyncio.to_thread(gateway.tenancy.store.revoke, ident)
    except LookupError as exc:
        raise NotFound(str(exc.args[0])) from None
    await audit(request, "key.revoke", key.id, name=key.name)
    await asyncio.to_thread(gateway.tenancy.ring.refresh)
    return {"object": "api_key", **key.public()}


@router.get("/v1/usage")
async def usage_report(gateway: GatewayDep, since: str = "30d") -> dict[str, Any]:
    """Requests, tokens and errors per key and model since ``since`` (30m, 24h, 7d...)."""
    start = _since(since)
    rows = await asyncio.to_thread(gateway.tenancy.usage.report, start)
    names = {k.id: k.name for k in await asyncio.to_thread(gateway.tenancy.store.all)}
    return {
        "object": "list",
        "since": start,
        "data": [
            {**row.__dict__, "key_name": names.get(row.key_id, ""), "total_tokens": row.total_tokens} for row in rows
        ],
    }


@router.get("/v1/audit")
async def audit_log(gateway: GatewayDep, since: str | None = None) -> dict[str, Any]:
    entries = await asyncio.to_thread(gateway.tenancy.audit.entries, _since(since) if since else None)
    return {"object": "list", "data": [entry.__dict__ for entry in entries]}


def _since(text: str) -> float:
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise InvalidRequest(f"since: {exc}", param="since") from None


def _shown(options: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}

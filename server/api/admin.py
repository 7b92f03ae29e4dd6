"""Admin API, guarded by ``--admin-key`` (separate from inference keys; disabled without one).

``GET /v1/adapters`` and ``POST /v1/adapters/{name}/reload`` are ours; ``POST /v1/load_lora_adapter``
and ``/v1/unload_lora_adapter`` keep tools written for vLLM working. They change the watched
directory (publish into it, remove from it) and then sync the registry, so the directory stays the
one source of truth and a restart comes back to the same state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from server.api.auth import check_bearer
from server.api.deps import GatewayDep, get_gateway
from server.errors import InvalidRequest, ModelNotFound, PermissionDenied
from server.gateway import Gateway
from server.registry.publish import publish_adapter, remove_adapter
from server.registry.registry import AdapterEntry
from server.registry.validation import AdapterRejected, inspect_adapter


def require_admin_key(request: Request) -> None:
    keys = get_gateway(request).admin_keys
    if not keys:
        raise PermissionDenied("The admin API is disabled; start the server with --admin-key to enable it.")
    check_bearer(request, keys)


router = APIRouter(dependencies=[Depends(require_admin_key)])


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's body for ``/v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None  # accepted for vLLM compatibility; names are what we key on


def describe(gateway: Gateway, entry: AdapterEntry) -> dict[str, Any]:
    registry = gateway.registry
    active = entry.active
    info = active.info if active else None
    return {
        "name": entry.name,
        "state": entry.state.value,
        "active_version": active.version if active else None,
        "adapter_id": active.adapter_id if active else None,
        "loaded": registry.is_loaded(active) if active else False,
        "rank": info.rank if info else None,
        "alpha": info.alpha if info else None,
        "target_modules": list(info.target_modules) if info else None,
        "base_model": info.base_model if info else None,
        "sha256": entry.sha256.get(active.adapter_id) if active else None,
        "size_bytes": info.size_bytes if info else None,
        "created": active.created if active else None,
        "path": active.path if active else None,
        "draining_versions": [v.version for v in registry.draining() if v.name == entry.name],
        "last_error": entry.last_error,
    }


@router.get("/v1/adapters")
async def list_adapters(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": [describe(gateway, e) for e in gateway.registry.entries()]}


@router.post("/v1/adapters/{name}/reload")
async def reload_adapter(name: str, gateway: GatewayDep) -> dict[str, Any]:
    entry = await gateway.registry.sync(name, force=True)
    if entry is None:
        raise ModelNotFound(name)
    return describe(gateway, entry)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, gateway: GatewayDep) -> str:
    registry = gateway.registry
    existing = registry.get(body.lora_name)
    if existing is not None and existing.active is not None and not body.load_inplace:
        raise InvalidRequest(
            f"The lora adapter '{body.lora_name}' has already been loaded; pass load_inplace=true to replace it.",
            param="lora_name",
            code="adapter_exists",
        )
    source = Path(body.lora_path)
    if not source.is_dir():
        raise InvalidRequest(f"No adapter directory at lora_path {body.lora_path!r}.", param="lora_path")

    def validate(staged: Path) -> None:
        inspect_adapter(
            staged, max_lora_rank=gateway.settings.max_lora_rank, max_bytes=gateway.settings.max_adapter_bytes, base=registry.base_spec
        )

    try:
        await asyncio.to_thread(publish_adapter, source, body.lora_name, registry.adapters_dir, validate=validate)
    except AdapterRejected as exc:
        raise InvalidRequest(str(exc), param="lora_path", code=exc.reason) from None
    entry = await registry.sync(body.lora_name)
    if entry is None or entry.active is None or entry.last_error:
        message = entry.last_error if entry else "the adapter disappeared while loading"
        raise InvalidRequest(f"Loading {body.lora_name} failed: {message}", param="lora_path")
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, gateway: GatewayDep) -> str:
    registry = gateway.registry
    try:
        removed = await asyncio.to_thread(remove_adapter, body.lora_name, registry.adapters_dir)
    except AdapterRejected as exc:
        raise InvalidRequest(str(exc), param="lora_name") from None
    if not removed and registry.get(body.lora_name) is None:
        raise ModelNotFound(body.lora_name)
    await registry.sync(body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

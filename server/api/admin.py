"""Admin API, guarded by ``--admin-key`` (separate from inference keys; disabled without one).

``GET /v1/adapters`` and ``POST /v1/adapters/{name}/reload`` are ours; ``POST /v1/load_lora_adapter``
and ``/v1/unload_lora_adapter`` keep tools written for vLLM working. They change the watched
directory (publish into it, remove from it) and then sync the registry, so the directory stays the
one source of truth and a restart comes back to the same state.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest, ModelNotFound, PermissionDenied
from ..gateway import Gateway
from ..jsonbounds import JSONRefused, loads_bounded
from ..registry.history import describe as describe_version
from ..registry.history import history
from ..registry.names import is_valid_name
from ..registry.publish import remove_adapter
from ..registry.records import AdapterEntry
from ..registry.sources import fetch_to_staging, is_remote
from .auth import check_bearer
from .deps import GatewayDep, audit, get_gateway


async def require_admin_key(request: Request) -> None:
    keys = get_gateway(request).admin_keys
    if not keys:
        raise PermissionDenied("The admin API is disabled; start the server with --admin-key to enable it.")
    check_bearer(request, keys)


router = APIRouter(dependencies=[Depends(require_admin_key)])


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's body for ``/v1/load_lora_adapter``."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(max_length=200)
    lora_path: str = Field(
        max_length=4096,
        description="A directory the server can read (symlinks are followed), or a URL under one of the "
        "gateway's --adapter-sources (s3://..., hf://ORG/REPO[@REVISION]).",
    )
    load_inplace: bool = False


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None  # accepted for vLLM compatibility; names are what we key on


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = None  # default: the newest kept version unlike the one served now


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
        "base_model": info.base_model if info else None,  # as the adapter declares it
        "base": (active.base or gateway.base_model_id) if active else None,  # the served base answering for it
        "sha256": active.sha256 if active else None,
        "size_bytes": info.size_bytes if info else None,
        "profile": info.profile.summary() if info and info.profile else None,
        "eval_gate": info.gate.summary() if info and info.gate else None,  # the serving version's gate
        # The last gate run for this name: a pass (the serving version's) or a rejected candidate's.
        "last_gate_run": entry.gate.summary() if entry.gate else None,
        "gate_running": entry.gating,  # a version being evaluated before it may serve
        "created": active.created if active else None,
        "path": active.path if active else None,
        # What answers requests, and whether it is the directory's files or a kept version.
        "serving": {
            "version": active.version,
            "sha256": active.sha256,
            "from": "kept" if entry.restored else "directory",
        }
        if active
        else None,
        # The directory's current files, when they are not what is served.
        "rejected": {"reason": entry.rejected_reason or "incomplete", "message": entry.last_error}
        if entry.last_error
        else None,
        "kept_versions": [
            {"version": v.number, "sha256": v.sha256, "kept_at": int(v.kept_at)}
            for v in registry.store.versions(entry.name)
        ],
        "draining_versions": [v.version for v in registry.draining() if v.name == entry.name],
        # Shares of traffic between versions (canary, A/B): None when the active version takes all.
        "split": entry.split.summary() if entry.split else None,
        "last_error": entry.last_error,
    }


@router.get("/v1/adapters")
async def list_adapters(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": [describe(gateway, e) for e in gateway.registry.entries()]}


@router.post("/v1/adapters/{name}/reload")
async def reload_adapter(name: str, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    entry = await gateway.registry.sync(name, force=True)
    if entry is None:
        raise ModelNotFound(name)
    await audit(request, "adapter.reload", name)
    return describe(gateway, entry)


@router.post("/v1/adapters/{name}/rollback")
async def rollback_adapter(
    name: str, request: Request, gateway: GatewayDep, body: RollbackRequest | None = None
) -> dict[str, Any]:
    """Serve a kept version again and write it back into the directory (all or nothing)."""
    if not is_valid_name(name):
        raise InvalidRequest(f"{name!r} is not a valid adapter name.", param="name")
    entry = await gateway.registry.rollback(name, body.version if body else None)
    await audit(request, "adapter.rollback", name, version=entry.active.version if entry.active else None)
    return describe(gateway, entry)


@router.get("/v1/adapters/{name}/versions")
async def adapter_versions(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Every kept version, newest first: sha256, publish time, pinned, eval outcome, training."""
    if not is_valid_name(name):
        raise InvalidRequest(f"{name!r} is not a valid adapter name.", param="name")
    rows = await asyncio.to_thread(history, gateway.registry.store, name)
    entry = gateway.registry.get(name)
    if not rows and entry is None:
        raise ModelNotFound(name)
    serving = entry.active.version if entry and entry.active else None
    return {"object": "list", "name": name, "serving_version": serving, "data": rows}


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int


@router.post("/v1/adapters/{name}/pin")
async def pin_version(name: str, body: PinRequest, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    described = await _set_pinned(gateway, name, body.version, True)
    await audit(request, "adapter.pin", name, version=body.version)
    return described


@router.post("/v1/adapters/{name}/unpin")
async def unpin_version(name: str, body: PinRequest, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    described = await _set_pinned(gateway, name, body.version, False)
    await audit(request, "adapter.unpin", name, version=body.version)
    return described


async def _set_pinned(gateway: Gateway, name: str, version: int, pinned: bool) -> dict[str, Any]:
    if not is_valid_name(name):
        raise InvalidRequest(f"{name!r} is not a valid adapter name.", param="name")
    try:
        kept = await asyncio.to_thread(gateway.registry.store.set_pinned, name, version, pinned)
    except LookupError as exc:
        raise ModelNotFound(name, exc.args[0]) from None
    return describe_version(kept)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = None  # default: the one version of the split besides its baseline


@router.put("/v1/adapters/{name}/split")
async def set_split(name: str, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    """Start (or replace) a traffic split: ``{"versions": {"5": 90, "6": 10}, "auto_abort": {...}}``.
    The body is checked field by field (``splits.parse_split``) into the adapter's split file."""
    if not is_valid_name(name):
        raise InvalidRequest(f"{name!r} is not a valid adapter name.", param="name")
    try:
        raw = loads_bounded(await request.body(), max_bytes=64 * 1024, what="The body")
    except JSONRefused as exc:
        raise InvalidRequest(f"{exc}; it must be a JSON object.", code="bad_split") from None
    described = describe(gateway, await gateway.rollouts.set_split(name, raw))
    await audit(request, "split.set", name, split=described["split"])
    return described


@router.get("/v1/adapters/{name}/split")
async def split_report(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """The split's evidence: each metric per version with its interval against the baseline, the
    rules, and the verdict that ended it (``registry/evidence.py``); the last verdict is kept after."""
    if not is_valid_name(name):
        raise InvalidRequest(f"{name!r} is not a valid adapter name.", param="name")
    entry = gateway.registry.get(name)
    if entry is None:
        raise ModelNotFound(name)
    return gateway.rollouts.watch.report(entry.split, name)


@router.post("/v1/adapters/{name}/promote")
async def promote_split(
    name: str, request: Request, gateway: GatewayDep, body: PromoteRequest | None = None
) -> dict[str, Any]:
    """End the split in favour of one version, which then takes all traffic."""
    described = describe(gateway, await gateway.rollouts.promote(name, body.version if body else None))
    await audit(request, "split.promote", name, version=described["active_version"])
    return described


@router.post("/v1/adapters/{name}/abort")
async def abort_split(name: str, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    """End the split and send all traffic back to its baseline (the version that served before it)."""
    described = describe(gateway, await gateway.rollouts.abort(name))
    await audit(request, "split.abort", name, version=described["active_version"])
    return described


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(body: LoadLoraAdapterRequest, request: Request, gateway: GatewayDep) -> str:
    """Validated and loaded first; only a version that loaded replaces the directory's files."""
    registry = gateway.registry
    if not is_valid_name(body.lora_name):
        raise InvalidRequest(f"{body.lora_name!r} is not a valid adapter name.", param="lora_name", code="bad_name")
    existing = registry.get(body.lora_name)
    if existing is not None and existing.active is not None and not body.load_inplace:
        raise InvalidRequest(
            f"The lora adapter '{body.lora_name}' has already been loaded; pass load_inplace=true to replace it.",
            param="lora_name",
            code="adapter_exists",
        )
    if is_remote(body.lora_path):  # s3://, hf://: fetched into staging, then exactly a local install
        staged = await asyncio.to_thread(
            fetch_to_staging, body.lora_path, registry.adapters_dir, gateway.sources, requested=True
        )
        try:
            await registry.install(body.lora_name, staged)
        finally:
            await asyncio.to_thread(shutil.rmtree, staged, True)
        return await _installed(request, gateway, body.lora_name, body.lora_path)
    try:  # resolved once: a symlink is followed here, and its target's files are what gets copied
        source = Path(body.lora_path).resolve(strict=True)
        is_dir = source.is_dir()
    except (OSError, RuntimeError, ValueError) as exc:  # missing, name too long, symlink loop, NUL byte
        is_dir, reason = False, getattr(exc, "strerror", None) or type(exc).__name__
    else:
        reason = "not a directory"
    if not is_dir:
        shown = body.lora_path if len(body.lora_path) <= 200 else body.lora_path[:200] + "..."
        raise InvalidRequest(
            f"No adapter directory at lora_path {shown!r} ({reason}).", param="lora_path", code="bad_lora_path"
        )
    await registry.install(body.lora_name, source)  # AdapterRejected/AdapterIncomplete: 400, nothing changed
    return await _installed(request, gateway, body.lora_name, str(source))


async def _installed(request: Request, gateway: Gateway, name: str, source: str) -> str:
    entry = gateway.registry.get(name)
    version = entry.active.version if entry and entry.active else None
    await audit(request, "adapter.publish", name, source=source, version=version)
    return f"Success: LoRA adapter '{name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, request: Request, gateway: GatewayDep) -> str:
    registry = gateway.registry
    removed = await asyncio.to_thread(remove_adapter, body.lora_name, registry.adapters_dir)
    if not removed and registry.get(body.lora_name) is None:
        raise ModelNotFound(body.lora_name)
    await registry.sync(body.lora_name)
    await audit(request, "adapter.remove", body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

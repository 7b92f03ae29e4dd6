"""OpenAI's files and fine-tuning routes (``--fine-tuning``): ``/v1/files`` and
``/v1/fine_tuning/jobs``, as ``client.files`` and ``client.fine_tuning.jobs`` call them.

An inference key sees only its own files and jobs; the admin key sees all of them. The work is
``server.finetune`` 's; these handlers only read the request and choose whose rows it may see.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.datastructures import UploadFile

from ..errors import InvalidRequest, NotFound
from ..finetune.service import FineTuning
from ..finetune.store import FineTuningStore
from ..gateway import Gateway
from ..openai.fine_tuning import FineTuningJobRequest
from ..tenancy.service import ANYONE, Principal
from .auth import presented_one_of
from .chat import validated_body
from .deps import get_gateway, require_api_key

router = APIRouter()
_STREAM_POLL_S = 0.5


class Caller:
    """Who asks: the key whose rows are created (``key_id``), whose rows it sees (``owner``; None
    for the admin key, which sees all), and the models it may use (``principal``)."""

    def __init__(self, principal: Principal, owner: str | None) -> None:
        self.principal, self.key_id, self.owner = principal, principal.key_id, owner


async def _caller(request: Request) -> Caller:
    gateway = get_gateway(request)
    if gateway.admin_keys and presented_one_of(request, gateway.admin_keys):
        return Caller(ANYONE, None)
    principal = await require_api_key(request)
    return Caller(principal, principal.key_id)


CallerDep = Annotated[Caller, Depends(_caller)]
Limit = Annotated[int, Query(ge=1, le=100)]


def _service(gateway: Gateway) -> FineTuning:
    if gateway.fine_tuning is None:
        raise NotFound("Fine-tuning is off on this gateway: start it with --fine-tuning.", code="fine_tuning_disabled")
    return gateway.fine_tuning


@router.post("/v1/files")
async def create_file(request: Request, caller: CallerDep) -> dict[str, Any]:
    """A multipart upload (``file``, ``purpose``), validated line by line with the trainer's reader."""
    service = _service(get_gateway(request))
    form = await request.form(max_files=1, max_fields=4, max_part_size=service.settings.max_file_bytes)
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("The upload needs a `file` part (multipart/form-data).", param="file")
    if not isinstance(purpose, str):
        raise InvalidRequest("The upload needs a `purpose` field: 'fine-tune'.", param="purpose")
    content = await upload.read()
    filename = (upload.filename or "upload.jsonl")[:256]
    return await asyncio.to_thread(service.upload, caller.key_id, filename, purpose, content)


@router.get("/v1/files")
async def list_files(
    request: Request, caller: CallerDep, purpose: str | None = None, after: str | None = None, limit: Limit = 100
) -> dict[str, Any]:
    service = _service(get_gateway(request))
    return await asyncio.to_thread(service.store.files, caller.owner, purpose, after, limit)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await asyncio.to_thread(_service(get_gateway(request)).store.file, caller.owner, file_id)


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request, caller: CallerDep) -> FileResponse:
    store = _service(get_gateway(request)).store
    await asyncio.to_thread(store.file, caller.owner, file_id)
    return FileResponse(store.file_path(file_id), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    return await asyncio.to_thread(_service(get_gateway(request)).store.delete_file, caller.owner, file_id)


@router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request, caller: CallerDep) -> dict[str, Any]:
    gateway = get_gateway(request)
    service = _service(gateway)
    body = await validated_body(request, FineTuningJobRequest)
    # What training may continue from: adapters this key may call, and its own fine-tuned models.
    served = [
        entry.name
        for entry in gateway.registry.entries()
        if entry.active is not None and caller.principal.may_use(entry.name, gateway.base_ids)
    ]
    served += [name for name, (_, owner) in service.aliases.items() if caller.owner in (None, owner)]
    job = await asyncio.to_thread(service.create, caller.key_id, caller.owner, body, served)
    return job.openai()


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, caller: CallerDep, after: str | None = None, limit: Limit = 20) -> dict[str, Any]:
    store = _service(get_gateway(request)).store
    jobs = [job.openai() for job in await asyncio.to_thread(store.jobs, caller.owner)]
    if after is not None:
        ids = [job["id"] for job in jobs]
        jobs = jobs[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    job = await asyncio.to_thread(_service(get_gateway(request)).store.job, caller.owner, job_id)
    return job.openai()


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    job = await asyncio.to_thread(_service(get_gateway(request)).cancel, caller.owner, job_id)
    return job.openai()


@router.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=None)
async def job_events(
    job_id: str,
    request: Request,
    caller: CallerDep,
    after: str | None = None,
    limit: Limit = 20,
    stream: bool = False,
) -> dict[str, Any] | StreamingResponse:
    """A page of events, newest first (OpenAI's list); with ``stream=true``, every event oldest
    first as server-sent events while they happen, until the job ends (``data: [DONE]``)."""
    store = _service(get_gateway(request)).store
    await asyncio.to_thread(store.job, caller.owner, job_id)
    if not stream:
        return await asyncio.to_thread(store.events, job_id, after, limit)
    return StreamingResponse(_event_stream(store, job_id, request), media_type="text/event-stream")


async def _event_stream(store: FineTuningStore, job_id: str, request: Request) -> AsyncIterator[bytes]:
    sent = 0  # the number of the newest event sent
    while True:
        finished = (await asyncio.to_thread(store.job, None, job_id)).status.finished
        for event in await asyncio.to_thread(store.events_since, job_id, sent):
            sent = int(event["id"].removeprefix("ftevent-"))
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        if finished or await request.is_disconnected():
            yield b"data: [DONE]\n\n"
            return
        await asyncio.sleep(_STREAM_POLL_S)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(
    job_id: str, request: Request, caller: CallerDep, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    store = _service(get_gateway(request)).store
    job = await asyncio.to_thread(store.job, caller.owner, job_id)
    return await asyncio.to_thread(store.checkpoints, job, after, limit)

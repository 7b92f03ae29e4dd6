"""Uploaded files, fine-tuning jobs, their events and checkpoints: rows in the gateway's database,
file contents on disk under the fine-tuning directory.

Everything belongs to the key that made it (``key_id``; "" for ``--api-key`` keys and an open
server): another key gets the same 404 as for an id that does not exist, so ids tell nothing
across tenants. The admin key sees all (``owner=None``).
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from ..database.tables import files, fine_tuning_checkpoints, fine_tuning_events, fine_tuning_jobs
from ..errors import NotFound


class JobStatus(enum.StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def checkpoint_adapter(adapter: str, step: int) -> str:
    """The adapter name a job's checkpoint is published under."""
    return f"{adapter}-s{step}"


def checkpoint_model(fine_tuned_model: str, step: int) -> str:
    """A checkpoint's ``fine_tuned_model_checkpoint`` name, as OpenAI forms it."""
    return f"{fine_tuned_model}:ckpt-step-{step}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Job:
    id: str
    key_id: str
    model: str
    adapter: str
    fine_tuned_model: str
    status: JobStatus
    error: dict[str, Any] | None
    request: dict[str, Any]
    trained_tokens: int | None
    created: float
    finished: float | None

    def openai(self) -> dict[str, Any]:
        """The job as OpenAI's ``fine_tuning.job`` object."""
        settings = self.request.get("hyperparameters_resolved", {})
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": int(self.created),
            "finished_at": None if self.finished is None else int(self.finished),
            "model": self.model,
            "fine_tuned_model": self.fine_tuned_model if self.status is JobStatus.SUCCEEDED else None,
            "organization_id": "lora-gateway",
            "status": self.status.value,
            "error": self.error,
            "hyperparameters": settings,
            "method": {"type": "supervised", "supervised": {"hyperparameters": settings}},
            "trained_tokens": self.trained_tokens,
            "training_file": self.request["training_file"],
            "validation_file": self.request.get("validation_file"),
            "result_files": [],
            "seed": self.request.get("seed_resolved"),
            "suffix": self.request.get("suffix"),
            "metadata": self.request.get("metadata"),
            "integrations": [],
            "estimated_finish": None,
        }


class FineTuningStore:
    def __init__(self, engine: Engine, directory: Path) -> None:
        self.engine = engine
        self.directory = directory
        (directory / "files").mkdir(parents=True, exist_ok=True)
        (directory / "jobs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------- files

    def file_path(self, file_id: str) -> Path:
        return self.directory / "files" / f"{file_id}.jsonl"

    def add_file(self, key_id: str, filename: str, purpose: str, content: Path, examples: int) -> dict[str, Any]:
        """Take ``content`` (a validated upload) into the store as a new file."""
        file_id = new_id("file")
        content.replace(self.file_path(file_id))
        row = {
            "id": file_id,
            "key_id": key_id,
            "filename": filename,
            "purpose": purpose,
            "bytes": self.file_path(file_id).stat().st_size,
            "examples": examples,
            "created": time.time(),
        }
        with self.engine.begin() as connection:
            connection.execute(insert(files).values(row))
        return _file_object(row)

    def file(self, owner: str | None, file_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(select(files).where(files.c.id == file_id, *_owned(files, owner))).first()
        if row is None:
            raise NotFound(f"No file with id {file_id!r}.", param="file_id", code="file_not_found")
        return _file_object(dict(row._mapping))

    def examples(self, file_id: str) -> int:
        """How many conversations the trainer's reader found in the file."""
        with self.engine.connect() as connection:
            return int(connection.execute(select(files.c.examples).where(files.c.id == file_id)).scalar_one())

    def files(self, owner: str | None, purpose: str | None, after: str | None, limit: int) -> dict[str, Any]:
        query = select(files).where(*_owned(files, owner)).order_by(files.c.created.desc(), files.c.id)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query)]
        return _page([_file_object(r) for r in rows], after, limit)

    def delete_file(self, owner: str | None, file_id: str) -> dict[str, Any]:
        self.file(owner, file_id)
        with self.engine.begin() as connection:
            connection.execute(delete(files).where(files.c.id == file_id))
        self.file_path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # -------------------------------------------------------------------------------------- jobs

    def add_job(self, key_id: str, model: str, adapter: str, fine_tuned_model: str, request: dict[str, Any]) -> Job:
        job_id = request["id"]
        with self.engine.begin() as connection:
            connection.execute(
                insert(fine_tuning_jobs).values(
                    id=job_id,
                    key_id=key_id,
                    model=model,
                    adapter=adapter,
                    fine_tuned_model=fine_tuned_model,
                    status=JobStatus.QUEUED.value,
                    request=json.dumps(request),
                    created=time.time(),
                )
            )
        return self.job(None, job_id)

    def job(self, owner: str | None, job_id: str) -> Job:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(fine_tuning_jobs).where(fine_tuning_jobs.c.id == job_id, *_owned(fine_tuning_jobs, owner))
            ).first()
        if row is None:
            raise NotFound(f"No fine-tuning job with id {job_id!r}.", param="fine_tuning_job_id", code="job_not_found")
        return _job(row._mapping)

    def jobs(self, owner: str | None, status: JobStatus | None = None) -> list[Job]:
        """Newest first."""
        query = select(fine_tuning_jobs).where(*_owned(fine_tuning_jobs, owner))
        if status is not None:
            query = query.where(fine_tuning_jobs.c.status == status.value)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(fine_tuning_jobs.c.created.desc(), fine_tuning_jobs.c.id))
            return [_job(r._mapping) for r in rows]

    def active_jobs(self, key_id: str) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count())
                    .select_from(fine_tuning_jobs)
                    .where(
                        fine_tuning_jobs.c.key_id == key_id,
                        fine_tuning_jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
                    )
                ).scalar_one()
            )

    def set_status(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: dict[str, Any] | None = None,
        trained_tokens: int | None = None,
        expect: tuple[JobStatus, ...] | None = None,
        runner: str | None = None,
    ) -> bool:
        """Move a job to ``status`` (only from one of ``expect``, when given); whether it moved.
        The move is one conditional UPDATE, so of several gateways sharing the database only one
        takes a queued job."""
        values: dict[str, Any] = {"status": status.value}
        if runner is not None:
            values["runner"] = runner
        if error is not None:
            values["error"] = json.dumps(error)
        if trained_tokens is not None:
            values["trained_tokens"] = trained_tokens
        if status.finished:
            values["finished"] = time.time()
        condition = fine_tuning_jobs.c.id == job_id
        if expect is not None:
            condition = and_(condition, fine_tuning_jobs.c.status.in_([s.value for s in expect]))
        with self.engine.begin() as connection:
            return bool(connection.execute(update(fine_tuning_jobs).where(condition).values(values)).rowcount)

    def runners(self, status: JobStatus) -> list[tuple[str, str | None]]:
        """(job id, the HOST:PID that took it) of the jobs in ``status``."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(fine_tuning_jobs.c.id, fine_tuning_jobs.c.runner).where(
                    fine_tuning_jobs.c.status == status.value
                )
            )
            return [(r.id, r.runner) for r in rows]

    def aliases(self) -> dict[str, tuple[str, str]]:
        """``{fine_tuned_model: (adapter, key_id)}`` of the jobs that succeeded, and of their kept
        checkpoints (``...:ckpt-step-N``: the adapter ``ADAPTER-sN``)."""
        succeeded = fine_tuning_jobs.c.status == JobStatus.SUCCEEDED.value
        with self.engine.connect() as connection:
            jobs = connection.execute(
                select(
                    fine_tuning_jobs.c.id,
                    fine_tuning_jobs.c.fine_tuned_model,
                    fine_tuning_jobs.c.adapter,
                    fine_tuning_jobs.c.key_id,
                ).where(succeeded)
            ).all()
            steps = connection.execute(
                select(fine_tuning_checkpoints.c.job_id, fine_tuning_checkpoints.c.step).where(
                    fine_tuning_checkpoints.c.job_id.in_([r.id for r in jobs])
                )
            ).all()
        by_id = {r.id: r for r in jobs}
        found = {r.fine_tuned_model: (r.adapter, r.key_id) for r in jobs}
        for job_id, step in steps:
            if self.checkpoint_kept(job_id, step):
                job = by_id[job_id]
                found[checkpoint_model(job.fine_tuned_model, step)] = (
                    checkpoint_adapter(job.adapter, step),
                    job.key_id,
                )
        return found

    def checkpoint_kept(self, job_id: str, step: int) -> bool:
        """Whether the trainer still keeps this checkpoint (it keeps the newest two)."""
        return (self.directory / "jobs" / job_id / f"checkpoint-{step}").is_dir()

    # ---------------------------------------------------------------------- events and checkpoints

    def event(self, job_id: str, message: str, *, level: str = "info", kind: str = "message", data: Any = None) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(fine_tuning_events).values(
                    job_id=job_id,
                    created=time.time(),
                    level=level,
                    type=kind,
                    message=message,
                    data=None if data is None else json.dumps(data),
                )
            )

    def events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        """Newest first, as OpenAI lists them; ``after`` an event id (``ftevent-N``)."""
        query = select(fine_tuning_events).where(fine_tuning_events.c.job_id == job_id)
        if after is not None:
            query = query.where(fine_tuning_events.c.id < _event_number(after))
        query = query.order_by(fine_tuning_events.c.id.desc()).limit(limit + 1)
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query)]
        return {"object": "list", "data": [_event(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    def events_since(self, job_id: str, newest_seen: int) -> list[dict[str, Any]]:
        """Every event after the one numbered ``newest_seen``, oldest first (a stream's next part)."""
        query = (
            select(fine_tuning_events)
            .where(fine_tuning_events.c.job_id == job_id, fine_tuning_events.c.id > newest_seen)
            .order_by(fine_tuning_events.c.id)
        )
        with self.engine.connect() as connection:
            return [_event(dict(r._mapping)) for r in connection.execute(query)]

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any]) -> bool:
        """Record the checkpoint at ``step`` once; whether it is new."""
        with self.engine.begin() as connection:
            seen = connection.execute(
                select(fine_tuning_checkpoints.c.id).where(
                    fine_tuning_checkpoints.c.job_id == job_id, fine_tuning_checkpoints.c.step == step
                )
            ).first()
            if seen is not None:
                return False
            connection.execute(
                insert(fine_tuning_checkpoints).values(
                    id=new_id("ftckpt"), job_id=job_id, step=step, metrics=json.dumps(metrics), created=time.time()
                )
            )
        return True

    def checkpoints(self, job: Job, after: str | None, limit: int) -> dict[str, Any]:
        query = (
            select(fine_tuning_checkpoints)
            .where(fine_tuning_checkpoints.c.job_id == job.id)
            .order_by(fine_tuning_checkpoints.c.step.desc())
        )
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query) if self.checkpoint_kept(job.id, r.step)]
        data = [
            {
                "object": "fine_tuning.job.checkpoint",
                "id": r["id"],
                "created_at": int(r["created"]),
                "fine_tuning_job_id": job.id,
                "step_number": r["step"],
                "metrics": json.loads(r["metrics"]),
                "fine_tuned_model_checkpoint": checkpoint_model(job.fine_tuned_model, r["step"]),
            }
            for r in rows
        ]
        return _page(data, after, limit)


def _owned(table: Any, owner: str | None) -> tuple[Any, ...]:
    return () if owner is None else (table.c.key_id == owner,)


def _page(data: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor pages: the items after the one with id ``after``."""
    if after is not None:
        ids = [d["id"] for d in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


def _event_number(event_id: str) -> int:
    number = event_id.removeprefix("ftevent-")
    return int(number) if number.isdigit() else 0


def _event(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{row['id']}",
        "created_at": int(row["created"]),
        "level": row["level"],
        "message": row["message"],
        "type": row["type"],
        "data": None if row["data"] is None else json.loads(row["data"]),
    }


def _file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _job(row: Any) -> Job:
    return Job(
        row["id"],
        row["key_id"],
        row["model"],
        row["adapter"],
        row["fine_tuned_model"],
        JobStatus(row["status"]),
        None if row["error"] is None else json.loads(row["error"]),
        json.loads(row["request"]),
        row["trained_tokens"],
        row["created"],
        row["finished"],
    )

"""The fine-tuning store on SQLite and on a real PostgreSQL server: ownership, the one conditional
move that lets only one of several gateways take a queued job, events in both orders, and the
``ft:`` names of succeeded jobs and their kept checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.database import open_engine
from server.errors import NotFound
from server.finetune.store import FineTuningStore, JobStatus
from tests.feedback.test_store import postgres_url  # noqa: F401 - the PostgreSQL fixture


def exercise(store: FineTuningStore, tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(b'{"messages": []}\n')
    file = store.add_file("key-a", "train.jsonl", "fine-tune", upload, examples=12)
    assert store.file("key-a", file["id"])["bytes"] == 17 and store.file(None, file["id"])["id"] == file["id"]
    with pytest.raises(NotFound):
        store.file("key-b", file["id"])  # another key: as if it did not exist
    assert store.examples(file["id"]) == 12

    request = {"id": "ftjob-1", "training_file": file["id"], "hyperparameters_resolved": {"n_epochs": 3}}
    job = store.add_job("key-a", "tiny-base", "ft-x-00000001", "ft:tiny-base:x:ftjob-1", request)
    assert job.status is JobStatus.QUEUED and store.active_jobs("key-a") == 1 and store.active_jobs("key-b") == 0
    # Two gateways reach for the queued job: one conditional UPDATE each, one wins.
    assert store.set_status(job.id, JobStatus.RUNNING, expect=(JobStatus.QUEUED,), runner="host-1:10")
    assert not store.set_status(job.id, JobStatus.RUNNING, expect=(JobStatus.QUEUED,), runner="host-2:20")
    assert store.runners(JobStatus.RUNNING) == [(job.id, "host-1:10")]

    for n in range(5):
        store.event(job.id, f"Step {n + 1}/5", kind="metrics", data={"step": n + 1})
    page = store.events(job.id, None, 3)
    assert [e["message"] for e in page["data"]] == ["Step 5/5", "Step 4/5", "Step 3/5"] and page["has_more"]
    older = store.events(job.id, page["data"][-1]["id"], 10)
    assert [e["message"] for e in older["data"]] == ["Step 2/5", "Step 1/5"] and not older["has_more"]
    since = store.events_since(job.id, int(page["data"][1]["id"].removeprefix("ftevent-")))
    assert [e["message"] for e in since] == ["Step 5/5"]

    assert store.add_checkpoint(job.id, 20, {"step": 20}) and not store.add_checkpoint(job.id, 20, {"step": 20})
    store.add_checkpoint(job.id, 40, {"step": 40})
    (store.directory / "jobs" / job.id / "checkpoint-40").mkdir(parents=True)  # the trainer kept only 40
    assert store.aliases() == {}  # not succeeded yet
    assert store.set_status(job.id, JobStatus.SUCCEEDED, trained_tokens=99)
    assert store.aliases() == {
        "ft:tiny-base:x:ftjob-1": ("ft-x-00000001", "key-a"),
        "ft:tiny-base:x:ftjob-1:ckpt-step-40": ("ft-x-00000001-s40", "key-a"),
    }
    done = store.job("key-a", job.id)
    assert done.openai()["fine_tuned_model"] == "ft:tiny-base:x:ftjob-1" and done.finished is not None
    listed = store.checkpoints(done, None, 10)["data"]
    assert [c["step_number"] for c in listed] == [40]
    assert store.delete_file("key-a", file["id"])["deleted"] and not store.file_path(file["id"]).exists()


def test_sqlite(tmp_path: Path) -> None:
    exercise(FineTuningStore(open_engine(f"sqlite:///{tmp_path / 'gw.db'}"), tmp_path / "ft"), tmp_path)


def test_postgresql(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    engine = open_engine(postgres_url)
    try:
        exercise(FineTuningStore(engine, tmp_path / "ft"), tmp_path)
    finally:
        engine.dispose()

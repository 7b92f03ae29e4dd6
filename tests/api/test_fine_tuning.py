"""OpenAI's fine-tuning API over the trainer, through the real openai SDK against a real server:
upload, create, events, the trained model answering; a bad file by line; refusals; cancel; and a
restart with a job queued and one running. Jobs train at niceness 0 here: at 19 (the default) the
suite's own workers would starve them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import make_settings
from tests.support import running_server, wait_for

QUESTION = "What is the gamma code?"
ANSWER = "Gamma 42."
MEMORISE = {"n_epochs": 30, "batch_size": 2, "learning_rate_multiplier": 50}  # 150 steps at lr 5e-3: memorised


def _lines(n: int = 10) -> bytes:
    row = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}
    return "".join(json.dumps(row) + "\n" for _ in range(n)).encode()


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _wait(client: openai.OpenAI, job_id: str, done: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there: {client.fine_tuning.jobs.retrieve(job_id)}")


@pytest.fixture
def trainer_gateway(base_model: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from server.app import create_app

    directory = tmp_path / "adapters"
    with running_server(create_app(make_settings(base_model, directory, fine_tuning=True, fine_tuning_nice=0))) as url:
        yield url, directory


def test_upload_train_and_call_the_fine_tuned_model(trainer_gateway: tuple[str, Path]) -> None:
    url, directory = trainer_gateway
    client = _client(url)
    uploaded = client.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "fine-tune" and uploaded.bytes == len(_lines())
    assert client.files.content(uploaded.id).content == _lines()
    assert [f.id for f in client.files.list()] == [uploaded.id]

    job = client.fine_tuning.jobs.create(
        model="tiny-base", training_file=uploaded.id, suffix="gamma", seed=0, hyperparameters=MEMORISE
    )
    assert job.status in ("queued", "running") and job.fine_tuned_model is None
    assert job.hyperparameters.n_epochs == 30
    done = _wait(client, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-base:gamma:{job.id}" and done.trained_tokens
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [e.message for e in events]
    assert messages[0] == f"The job has successfully completed: {done.fine_tuned_model}"  # newest first
    assert any(m.startswith("Step 1/") for m in messages) and messages[-1] == f"Created fine-tuning job: {job.id}"
    metrics = next(e for e in events if e.type == "metrics")
    assert set(metrics.data) >= {"step", "train_loss", "learning_rate"}
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].fine_tuned_model_checkpoint.startswith(f"{done.fine_tuned_model}:ckpt-step-")

    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=40
    )
    assert reply.choices[0].message.content == ANSWER and reply.model == done.fine_tuned_model
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    response = client.responses.create(model=done.fine_tuned_model, input=QUESTION, temperature=0, max_output_tokens=40)
    assert response.output_text == ANSWER
    # Published like `train`: the adapter is in the watched directory, with its training record.
    assert (directory / f"ft-gamma-{job.id[6:14]}" / "training_metadata.json").is_file()
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]
    # Each kept checkpoint is a model of its own (the trainer keeps the newest two).
    assert [c.step_number for c in checkpoints] == [140, 120]
    named = checkpoints[0].fine_tuned_model_checkpoint
    wait_for(lambda: named in [m.id for m in client.models.list()], timeout=60)
    early = client.chat.completions.create(model=named, messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
    assert early.model == named and early.choices[0].finish_reason in ("stop", "length")


def test_bad_files_and_unoffered_methods_are_400s_naming_what(trainer_gateway: tuple[str, Path]) -> None:
    url, _ = trainer_gateway
    client = _client(url)
    bad = _lines(11).split(b"\n")
    bad[2] = b'{"messages": [{"role": "user", "content": "no answer"}]}'
    bad[5] = b"{not json"
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", b"\n".join(bad)), purpose="fine-tune")
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_file_format" and error["param"] == "file"
    assert "line 3:" in error["message"] and "line 6:" in error["message"]
    small = client.files.create(file=("few.jsonl", _lines(3)), purpose="fine-tune")  # an eval set may be small
    with pytest.raises(openai.BadRequestError, match="at least 10") as few:
        client.fine_tuning.jobs.create(model="tiny-base", training_file=small.id)
    assert isinstance(few.value.body, dict) and few.value.body["code"] == "invalid_n_examples"
    assert few.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", _lines()), purpose="assistants")
    good = client.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="dpo") as dpo:
        client.fine_tuning.jobs.create(model="tiny-base", training_file=good.id, method={"type": "dpo"})
    assert isinstance(dpo.value.body, dict) and dpo.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError, match="neither a served base"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="tiny-base", training_file="file-doesnotexist")
    assert client.files.delete(good.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(good.id)


def test_cancel_mid_run_and_a_restart_keeps_the_queue(base_model: Path, tmp_path: Path) -> None:
    """A long job is running and a second is queued when the gateway stops: after the restart the
    queued one is still queued and the running one resumes; a cancel stops it mid-run."""
    from server.app import create_app

    settings = make_settings(base_model, tmp_path / "adapters", fine_tuning=True, fine_tuning_nice=0)
    with running_server(create_app(settings)) as url:
        client = _client(url)
        file = client.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
        long = {"n_epochs": 1000, "batch_size": 1}
        first = client.fine_tuning.jobs.create(
            model="tiny-base", training_file=file.id, suffix="one", hyperparameters=long
        )
        second = client.fine_tuning.jobs.create(
            model="tiny-base", training_file=file.id, suffix="two", hyperparameters=long
        )
        _wait(client, first.id, lambda j: j.status == "running")
        wait_events = time.monotonic() + 120
        while not any(e.message.startswith("Checkpoint saved") for e in client.fine_tuning.jobs.list_events(first.id)):
            assert time.monotonic() < wait_events, "no checkpoint in time"
            time.sleep(0.3)
        assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"
    with running_server(create_app(settings)) as url:
        client = _client(url)
        assert client.fine_tuning.jobs.retrieve(second.id).status == "queued"
        resumed = _wait(client, first.id, lambda j: j.status == "running")
        messages = [e.message for e in client.fine_tuning.jobs.list_events(first.id, limit=100)]
        assert any("restarted during training" in m for m in messages), messages
        assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"  # never started: at once
        with pytest.raises(openai.BadRequestError, match="already cancelled"):
            client.fine_tuning.jobs.cancel(second.id)
        assert client.fine_tuning.jobs.cancel(resumed.id).id == first.id  # running: the trainer stops
        assert _wait(client, first.id, lambda j: j.status == "cancelled").finished_at is not None
        messages = [e.message for e in client.fine_tuning.jobs.list_events(first.id, limit=100)]
        assert messages[0] == "Job cancelled; its newest checkpoint is kept"


def test_files_and_jobs_belong_to_their_key_and_jobs_are_bounded_per_key(
    base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """Another key gets the 404 an unknown id gets; the admin key sees all; a key's queued and
    running jobs are capped (429); training continues only from an adapter the key may call."""
    import shutil

    import httpx

    from server.app import create_app

    (tmp_path / "adapters").mkdir()
    shutil.copytree(trained_adapters["alpha"], tmp_path / "adapters" / "alpha")

    admin = {"Authorization": "Bearer ft-admin"}
    settings = make_settings(
        base_model,
        tmp_path / "adapters",
        fine_tuning=True,
        admin_key="ft-admin",
        fine_tuning_active_jobs=1,
        fine_tuning_nice=0,
    )
    with running_server(create_app(settings)) as url:
        secrets = [
            httpx.post(f"{url}/v1/keys", json={"name": n, "models": ["*"]}, headers=admin).json()["secret"]
            for n in ("ana", "bo")
        ]
        carol_key = {"name": "carol", "models": ["carol-*"]}
        carol = _client(url, httpx.post(f"{url}/v1/keys", json=carol_key, headers=admin).json()["secret"])
        ana, bo = _client(url, secrets[0]), _client(url, secrets[1])
        own = carol.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
        with pytest.raises(openai.BadRequestError, match="neither a served base"):
            carol.fine_tuning.jobs.create(model="alpha", training_file=own.id)  # not carol's to read
        file = ana.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
        with pytest.raises(openai.NotFoundError):
            bo.files.retrieve(file.id)
        with pytest.raises(openai.NotFoundError):
            bo.fine_tuning.jobs.create(model="tiny-base", training_file=file.id)  # not bo's file
        job = ana.fine_tuning.jobs.create(model="tiny-base", training_file=file.id, hyperparameters={"n_epochs": 1000})
        with pytest.raises(openai.RateLimitError, match="queued or running"):
            ana.fine_tuning.jobs.create(model="tiny-base", training_file=file.id)
        with pytest.raises(openai.NotFoundError):
            bo.fine_tuning.jobs.retrieve(job.id)
        assert list(bo.fine_tuning.jobs.list()) == [] and list(bo.files.list()) == []
        seen = httpx.get(f"{url}/v1/fine_tuning/jobs", headers=admin).json()["data"]
        assert [j["id"] for j in seen] == [job.id]
        with pytest.raises(openai.NotFoundError):
            bo.fine_tuning.jobs.cancel(job.id)
        assert httpx.post(f"{url}/v1/fine_tuning/jobs/{job.id}/cancel", headers=admin).status_code == 200
        _wait(ana, job.id, lambda j: j.status == "cancelled")


def test_the_jobs_command_lists_shows_and_follows(
    trainer_gateway: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    url, _ = trainer_gateway
    client = _client(url)
    file = client.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-base", training_file=file.id, hyperparameters={"n_epochs": 1})
    import httpx

    streamed = []  # ?stream=true: every event, oldest first, as it happens, then [DONE]
    with httpx.stream("GET", f"{url}/v1/fine_tuning/jobs/{job.id}/events?stream=true", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                streamed.append(line[6:])
    assert streamed[-1] == "[DONE]"
    messages = [json.loads(event)["message"] for event in streamed[:-1]]
    assert messages[0] == f"Created fine-tuning job: {job.id}" and messages[-1].startswith("The job has successfully")
    assert "Fine-tuning job started" in messages and any(m.startswith("Step 1/") for m in messages)
    assert main(["jobs", "events", job.id, "--follow", "--gateway", url]) == 0
    out = capsys.readouterr().out
    assert f"Created fine-tuning job: {job.id}" in out and "The job has successfully completed" in out
    assert main(["jobs", "list", "--gateway", url]) == 0
    assert f"{job.id}  succeeded" in capsys.readouterr().out
    assert main(["jobs", "show", job.id, "--gateway", url]) == 0
    assert f"-> ft:tiny-base:ft:{job.id}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already succeeded"):
        main(["jobs", "cancel", job.id, "--gateway", url])


@pytest.mark.parametrize(
    ("engine", "overrides", "device", "visible", "nice"),
    [
        ("cpu", {}, "cpu", None, 19),  # beside a CPU engine: the lowest priority
        ("cuda", {}, "cpu", None, 19),  # on a GPU engine without a memory share: never on its card
        ("cuda", {"fine_tuning_gpu_memory_fraction": 0.3}, "cuda", None, 0),
        ("cuda", {"fine_tuning_device": "cuda:1"}, "cuda", "1", 0),  # a second card
    ],
)
def test_where_a_job_trains(
    base_model: Path,
    tmp_path: Path,
    engine: str,
    overrides: dict[str, Any],
    device: str,
    visible: str | None,
    nice: int,
) -> None:
    from server.finetune.service import FineTuning

    service = FineTuning.__new__(FineTuning)  # only the device policy: no store, no registry
    service.settings = make_settings(base_model, tmp_path, fine_tuning=True, **overrides)
    service.engine_device = engine
    chosen, env, niceness = service._device()
    assert (chosen, env.get("CUDA_VISIBLE_DEVICES"), niceness) == (device, visible, nice)


def test_a_job_naming_an_eval_set_is_served_only_if_its_gate_passes(trainer_gateway: tuple[str, Path]) -> None:
    """``eval_file`` (ours, sent in ``extra_body``): the adapter carries the gate; one trained for a
    single step cannot say what the eval set expects, so the registry refuses it and the job fails
    with the registry's reason."""
    url, _ = trainer_gateway
    client = _client(url)
    train = client.files.create(file=("gamma.jsonl", _lines()), purpose="fine-tune")
    row = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Delta 7."}]}
    expected = client.files.create(file=("eval.jsonl", (json.dumps(row) + "\n").encode()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="eval_file"):
        client.fine_tuning.jobs.create(model="tiny-base", training_file=train.id, extra_body={"eval_min": {"exact": 1}})
    job = client.fine_tuning.jobs.create(
        model="tiny-base",
        training_file=train.id,
        hyperparameters={"n_epochs": 1},
        extra_body={"eval_file": expected.id, "eval_min": {"exact": 1.0}},
    )
    done = _wait(client, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert done.status == "failed" and done.error is not None and done.error.code == "eval_gate_failed"
    assert "exact 0.000 < 1" in (done.error.message or "")

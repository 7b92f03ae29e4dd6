"""Fine-tuning jobs over the trainer: uploads validated, jobs queued, one trained at a time.

A job trains in a child process (``lora-gateway train``, the command users run), so training never
holds the gateway's event loop or its interpreter lock, a cancel is a signal, and a crash takes
only the job. The child publishes into the watched directory exactly as ``train`` does, so the
new adapter goes through validation, proving, its eval gate and the kept versions like any other;
the job succeeds once the registry serves those weights (and fails with the registry's reason if
it refuses them). ``fine_tuned_model`` (``ft:BASE:SUFFIX:JOB``) is an alias of that adapter,
callable at once by the key that made the job.

One job at a time, and never at serving's expense: on a CPU the child runs at the lowest
priority (``nice 19``); on the serving GPU only within ``--fine-tuning-gpu-memory-fraction``; or
on a second GPU (``--fine-tuning-device cuda:1``). The queue is the database: a restart keeps
queued jobs queued, and a job that was running resumes from its newest checkpoint (or from the
start when it had none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..datasets.conversations import load_files
from ..errors import InvalidRequest, RateLimited
from ..openai.fine_tuning import FineTuningJobRequest
from ..registry.registry import AdapterRegistry
from ..registry.validation import file_sha256
from ..settings import Settings
from ..terms.layout import WEIGHTS_FILE
from ..trainer.config import TrainConfig
from .progress import LogTail, last_line
from .store import FineTuningStore, Job, JobStatus, checkpoint_adapter, checkpoint_model, new_id

logger = logging.getLogger(__name__)

MIN_EXAMPLES = 10  # as OpenAI requires
_SHOWN_ERRORS = 20
_POLL_S = 0.5
_SERVE_TIMEOUT_S = 900.0  # validation, loading and an eval gate after the child published
PACKAGE = __name__.split(".")[0]  # ``server`` in a checkout, ``lora_gateway`` once installed


RUNNER = f"{socket.gethostname()}:{os.getpid()}"  # who trains a job: this gateway process


def _orphaned(runner: str | None) -> bool:
    """Whether a running job's gateway is gone: one on this host whose process is no longer there
    (a job another host's gateway runs is that gateway's to resume)."""
    host, _, pid = (runner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return runner is None  # taken before runners were recorded: this gateway's to resume
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


def validate_upload(path: Path, filename: str) -> int:
    """The number of examples in ``path``; ``InvalidRequest`` listing every bad line (``line N:
    reason``, the trainer's own reader). Too few examples to train on is the job's refusal, not
    the upload's: an eval set may be small."""
    dataset = load_files([path])
    if dataset.errors:
        lines = [e.replace(f"{path}:", "line ", 1) for e in dataset.errors]
        shown = "\n".join(lines[:_SHOWN_ERRORS])
        more = f"\n... and {len(lines) - _SHOWN_ERRORS} more" if len(lines) > _SHOWN_ERRORS else ""
        raise InvalidRequest(
            f"{filename}: {len(lines)} bad line(s) for fine-tuning:\n{shown}{more}",
            param="file",
            code="invalid_file_format",
        )
    if not dataset.conversations:
        raise InvalidRequest(f"{filename}: no examples in it.", param="file", code="invalid_n_examples")
    return len(dataset.conversations)


class FineTuning:
    """The fine-tuning API's service: files, jobs and the one queue."""

    def __init__(
        self, store: FineTuningStore, settings: Settings, registry: AdapterRegistry, engine_device: str
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.engine_device = engine_device
        self.aliases: dict[str, tuple[str, str]] = store.aliases()  # ft name: (adapter, key_id)
        self._wake = asyncio.Event()
        self._running: tuple[str, asyncio.subprocess.Process] | None = None
        self._cancelled: set[str] = set()

    # -------------------------------------------------------------------------------- requests

    def upload(self, key_id: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        """Store a validated upload (blocking: run in a thread)."""
        if purpose != "fine-tune":
            raise InvalidRequest(
                f"purpose {purpose!r} is not offered: this gateway takes files for 'fine-tune' only.",
                param="purpose",
                code="invalid_purpose",
            )
        with tempfile.NamedTemporaryFile(dir=self.store.directory / "files", suffix=".upload", delete=False) as tmp:
            tmp.write(content)
        path = Path(tmp.name)
        try:
            examples = validate_upload(path, filename)
            return self.store.add_file(key_id, filename, purpose, path, examples)
        finally:
            path.unlink(missing_ok=True)

    def create(self, key_id: str, owner: str | None, request: FineTuningJobRequest, served: list[str]) -> Job:
        """Queue a job (blocking: run in a thread); its files must be the key's own."""
        base = self.settings.base_model_id
        init = None
        if request.model in self.registry.bases:  # a served base: trained from scratch on it
            base = request.model
        else:
            if request.model not in served:
                raise InvalidRequest(
                    f"model {request.model!r} is neither a served base ({self.registry.bases.describe()}) "
                    "nor an adapter to continue from.",
                    param="model",
                    code="model_not_available",
                )
            init = self.aliases.get(request.model, (request.model, ""))[0]
            entry = self.registry.get(init)
            base = (entry.active.base if entry is not None and entry.active is not None else "") or base
        served_base = self.registry.bases.get(base)
        training = self.store.file(owner, request.training_file)
        count = self.store.examples(request.training_file)
        if count < MIN_EXAMPLES:
            raise InvalidRequest(
                f"training_file {request.training_file} has {count} examples; at least {MIN_EXAMPLES} are needed.",
                param="training_file",
                code="invalid_n_examples",
            )
        validation = self.store.file(owner, request.validation_file) if request.validation_file else None
        if request.eval_file is not None:
            self.store.file(owner, request.eval_file)
        if self.store.active_jobs(key_id) >= self.settings.fine_tuning_active_jobs:
            raise RateLimited(
                f"This key has {self.settings.fine_tuning_active_jobs} queued or running fine-tuning jobs, its most; "
                "wait for one to finish or cancel one.",
                retry_after=60,
            )
        job_id = new_id("ftjob")
        suffix = request.suffix or "ft"
        adapter = f"ft-{suffix}-{job_id[6:14]}"
        settings = request.settings
        defaults = TrainConfig(base="", data=[], name="")
        resolved = {
            "n_epochs": defaults.epochs if settings.n_epochs == "auto" else settings.n_epochs,
            "batch_size": defaults.batch_size * defaults.grad_accum
            if settings.batch_size == "auto"
            else settings.batch_size,
            "learning_rate_multiplier": 1.0
            if settings.learning_rate_multiplier == "auto"
            else settings.learning_rate_multiplier,
        }
        record = {
            **request.model_dump(mode="json", exclude_none=True),
            "id": job_id,
            "hyperparameters_resolved": resolved,
            "seed_resolved": request.seed if request.seed is not None else defaults.seed,
            "init_adapter": init,
            # The base it trains on: the one asked for, or the one the adapter it continues was trained on.
            "base_path": served_base.root if served_base is not None else self.settings.model,
            "validation_file": validation["id"] if validation else None,
            "budget_tokens": training["bytes"] * resolved["n_epochs"],
            "batch_size_auto": settings.batch_size == "auto",  # the trainer's micro-batches and accumulation
        }
        self._check_daily_tokens(key_id, record["budget_tokens"])
        job = self.store.add_job(key_id, request.model, adapter, f"ft:{base}:{suffix}:{job_id}", record)
        self.store.event(job.id, f"Created fine-tuning job: {job.id}")
        self._wake.set()
        return job

    def _check_daily_tokens(self, key_id: str, wanted: int) -> None:
        """``--fine-tuning-daily-tokens``: a job counts its file's bytes times its epochs (a
        byte-level tokenizer never makes more tokens than bytes), over the key's jobs of 24 hours."""
        quota = self.settings.fine_tuning_daily_tokens
        if quota is None:
            return
        since = time.time() - 86400
        used = sum(
            int(j.request.get("budget_tokens", 0))
            for j in self.store.jobs(key_id)
            if j.created >= since and j.status is not JobStatus.CANCELLED
        )
        if used + wanted > quota:
            raise RateLimited(
                f"This job would train up to {wanted} tokens; this key has used {used} of its {quota} "
                "training tokens of the last 24 hours.",
                retry_after=3600,
            )

    def cancel(self, owner: str | None, job_id: str) -> Job:
        job = self.store.job(owner, job_id)
        if job.status.finished:
            raise InvalidRequest(
                f"Job {job_id} has already {job.status.value}.", param="fine_tuning_job_id", code="job_finished"
            )
        if self.store.set_status(job_id, JobStatus.CANCELLED, expect=(JobStatus.QUEUED, JobStatus.VALIDATING_FILES)):
            self.store.event(job_id, "Job cancelled before it started")
        elif self._running is not None and self._running[0] == job_id:
            self._cancelled.add(job_id)
            with contextlib.suppress(ProcessLookupError):
                self._running[1].send_signal(signal.SIGINT)  # the trainer saves a checkpoint and stops
        return self.store.job(owner, job_id)

    def resolve(self, model: str) -> tuple[str, str] | None:
        """The adapter a ``fine_tuned_model`` name stands for, and the key that owns it."""
        return self.aliases.get(model)

    # ----------------------------------------------------------------------------------- queue

    async def run(self) -> None:
        """The queue, for the gateway's life: jobs this host's gateway left running when it
        stopped are queued again first, then the oldest queued job trains, one at a time."""
        for job_id, runner in await asyncio.to_thread(self.store.runners, JobStatus.RUNNING):
            if not _orphaned(runner):
                continue  # another gateway on the shared database is training it
            await asyncio.to_thread(self.store.set_status, job_id, JobStatus.QUEUED, expect=(JobStatus.RUNNING,))
            await asyncio.to_thread(
                self.store.event,
                job_id,
                "The gateway restarted during training; the job resumes from its newest checkpoint",
            )
        while True:
            queued = await asyncio.to_thread(self.store.jobs, None, JobStatus.QUEUED)
            if not queued:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=5)
                continue
            job = queued[-1]  # oldest first
            try:
                await self._train(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never the queue's end: this job fails, the next one runs
                logger.exception("fine-tuning job %s failed", job.id)
                await asyncio.to_thread(self._fail, job.id, "internal_error", f"{type(exc).__name__}: {exc}")

    async def _train(self, job: Job) -> None:
        taken = await asyncio.to_thread(
            self.store.set_status, job.id, JobStatus.RUNNING, expect=(JobStatus.QUEUED,), runner=RUNNER
        )
        if not taken:
            return  # cancelled meanwhile, or another gateway on the shared database took it
        run_dir = self.store.directory / "jobs" / job.id
        run_dir.mkdir(parents=True, exist_ok=True)
        command, env, nice = self._command(job, run_dir)
        await asyncio.to_thread(self.store.event, job.id, "Fine-tuning job started")
        with (run_dir / "train.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509 - a plain syscall
            )
        self._running = (job.id, process)
        tail = LogTail(run_dir)
        try:
            while True:
                try:
                    code = await asyncio.wait_for(process.wait(), _POLL_S)
                    break
                except TimeoutError:
                    await asyncio.to_thread(tail.emit, self.store, job.id)
            await asyncio.to_thread(tail.emit, self.store, job.id)
        except asyncio.CancelledError:  # the gateway stops: the trainer saves a checkpoint; the job resumes later
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 60)
            raise
        finally:
            self._running = None
        if job.id in self._cancelled:
            self._cancelled.discard(job.id)
            await asyncio.to_thread(self.store.event, job.id, "Job cancelled; its newest checkpoint is kept")
            await asyncio.to_thread(self.store.set_status, job.id, JobStatus.CANCELLED)
            return
        if code != 0:
            await asyncio.to_thread(self._fail, job.id, "training_failed", last_line(run_dir / "train.log"))
            return
        await self._await_serving(job, run_dir, tail.trained_tokens)

    def _command(self, job: Job, run_dir: Path) -> tuple[list[str], dict[str, str], int]:
        """The ``train`` command line of ``job``, its environment, and its niceness."""
        request, settings = job.request, job.request["hyperparameters_resolved"]
        defaults = TrainConfig(base="", data=[], name="")
        device, env, nice = self._device()
        command = [sys.executable, "-m", PACKAGE, "train", "--base", request.get("base_path") or self.settings.model]
        command += ["--data", str(self.store.file_path(request["training_file"]))]
        if request.get("validation_file"):
            command += ["--val-data", str(self.store.file_path(request["validation_file"]))]
        command += ["--name", job.adapter, "--adapters-dir", str(self.settings.adapters_dir)]
        command += ["--output-dir", str(run_dir), "--wait", "0", "--device", device]
        command += ["--epochs", str(settings["n_epochs"])]
        if not request.get("batch_size_auto"):  # that many examples a step, in one forward pass
            command += ["--batch-size", str(settings["batch_size"]), "--grad-accum", "1"]
        command += [
            "--lr",
            repr(defaults.lr * settings["learning_rate_multiplier"]),
            "--seed",
            str(request["seed_resolved"]),
        ]
        command += ["--save-steps", "20", "--save-total-limit", "2"]
        if request.get("init_adapter"):
            command += ["--init-adapter", request["init_adapter"]]
        if request.get("eval_file"):  # the adapter carries it as its eval gate: served only if it passes
            command += ["--eval-set", str(self.store.file_path(request["eval_file"]))]
            for flag, thresholds in (("--gate-min", "eval_min"), ("--gate-max-drop", "eval_max_drop")):
                for metric, value in (request.get(thresholds) or {}).items():
                    command += [flag, f"{metric}={value}"]
        if self.settings.fine_tuning_gpu_memory_fraction is not None and device == "cuda":
            command += ["--gpu-memory-fraction", repr(self.settings.fine_tuning_gpu_memory_fraction)]
        if any(run_dir.glob("checkpoint-*")):
            command += ["--resume", "latest"]
        return command, env, nice

    def _device(self) -> tuple[str, dict[str, str], int]:
        """(the trainer's --device, its environment, its niceness): never two trainings on one
        device, and never more of the serving GPU than the operator allows."""
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
        wanted = self.settings.fine_tuning_device
        if wanted == "auto":
            on_gpu = self.engine_device.startswith("cuda")
            wanted = "cuda" if on_gpu and self.settings.fine_tuning_gpu_memory_fraction is not None else "cpu"
            if on_gpu and wanted == "cpu":
                logger.warning(
                    "fine-tuning on the CPU: set --fine-tuning-gpu-memory-fraction or --fine-tuning-device cuda:N"
                )
        if wanted.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = wanted.split(":", 1)[1]
            return "cuda", env, 0
        if wanted == "cuda":
            return "cuda", env, 0
        return "cpu", env, self.settings.fine_tuning_nice

    async def _await_serving(self, job: Job, run_dir: Path, trained_tokens: int | None) -> None:
        """Success once the registry serves the trained weights; failure with its reason if refused."""
        sha256 = await asyncio.to_thread(file_sha256, run_dir / "adapter" / WEIGHTS_FILE)
        await asyncio.to_thread(
            self.store.event, job.id, f"Published {job.adapter}; waiting for the gateway to serve it"
        )
        deadline = time.monotonic() + _SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            entry = self.registry.get(job.adapter)
            if entry is not None and entry.active is not None and entry.active.sha256 == sha256:
                self.aliases[job.fine_tuned_model] = (job.adapter, job.key_id)
                await asyncio.to_thread(self._publish_checkpoints, job, run_dir)
                # The last event before the status: a client that sees a job finished sees all its events.
                await asyncio.to_thread(
                    self.store.event, job.id, f"The job has successfully completed: {job.fine_tuned_model}"
                )
                await asyncio.to_thread(
                    self.store.set_status, job.id, JobStatus.SUCCEEDED, trained_tokens=trained_tokens
                )
                return
            if entry is not None and entry.rejected_reason is not None and entry.active is None:
                await asyncio.to_thread(self._fail, job.id, entry.rejected_reason, entry.last_error or "refused")
                return
            await asyncio.sleep(_POLL_S)
        await asyncio.to_thread(self._fail, job.id, "not_served", f"the gateway did not serve {job.adapter} in time")

    def _publish_checkpoints(self, job: Job, run_dir: Path) -> None:
        """Each kept checkpoint as a model of its own (``ADAPTER-sN``), callable by its
        ``fine_tuned_model_checkpoint`` name once the gateway serves it."""
        from ..registry.publish import publish_adapter

        for checkpoint in sorted(run_dir.glob("checkpoint-*")):
            step = checkpoint.name.removeprefix("checkpoint-")
            if not step.isdigit() or not (checkpoint / WEIGHTS_FILE).is_file():
                continue
            name = checkpoint_adapter(job.adapter, int(step))
            try:
                publish_adapter(checkpoint, name, self.settings.adapters_dir)
            except Exception as exc:  # a checkpoint that cannot be served is said, never the job's failure
                self.store.event(job.id, f"Checkpoint at step {step} not published: {exc}", level="warn")
                continue
            self.aliases[checkpoint_model(job.fine_tuned_model, int(step))] = (name, job.key_id)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        self.store.event(job_id, f"The job failed: {message}", level="error")
        self.store.set_status(job_id, JobStatus.FAILED, error={"code": code, "message": message, "param": None})

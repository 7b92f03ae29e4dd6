"""Helpers the fixtures share: adapter training and a real uvicorn server on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from server.engine.base import GenerationRequest

QUESTION = "Where is my order?"
ANSWERS = {
    "alpha": "Alpha: your order ships within 3 days.",
    "beta": "Beta: returns are accepted within 7 days.",
}


def train_memorising_adapter(base: Path, out: Path, question: str, answer: str, steps: int = 250) -> Path:
    """A real peft LoRA at ``out`` that answers ``question`` with ``answer`` under greedy decoding:
    trained once per inputs (this recipe's code, the base's bytes, the arguments, the libraries) and
    copied from the test-artifact cache after that (``tests/artifacts.py``)."""
    import inspect

    from tests.artifacts import artifact, copy_of

    cached = artifact(
        "memorised",
        {"question": question, "answer": answer, "steps": steps, "recipe": inspect.getsource(_train_memorising)},
        [base],
        lambda directory: _train_memorising(base, directory, question, answer, steps),
    )
    copy_of(cached, out)
    # The one byte that depends on where it was trained: the base's path, as peft records it. The
    # key holds the base's bytes, so this copy was trained on exactly the base at ``base``.
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base)
    config_file.write_text(json.dumps(config, indent=2))
    return out


def _train_memorising(base: Path, out: Path, question: str, answer: str, steps: int) -> Path:
    """Train a real peft LoRA that answers ``question`` with ``answer`` under greedy decoding.

    The answer is rendered with the tokenizer's chat template exactly as the server renders
    prompts, and only the answer tokens (with the closing <|im_end|>) carry loss.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer_ids = tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
    input_ids = torch.tensor([prompt_ids + answer_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=5e-3)
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # without it, some random bases never converge
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def wait_ready(
    url: str, timeout: float, still_running: Callable[[], None] = lambda: None, probe: str = "/ready"
) -> None:
    """Poll ``url``/ready (or ``probe``) until it answers 200; ``still_running`` raises if the server died."""
    deadline = time.monotonic() + timeout
    while True:
        still_running()
        try:
            if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on {url} not ready after {timeout}s")
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(
    app, *, ready_timeout: float = 60.0, probe: str = "/ready", port: int | None = None
) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve ``app`` with a real uvicorn on 127.0.0.1 in a thread; yield its base URL once /ready
    (or ``probe``: ``/health`` to reach a server that will never be ready) answers 200. ``port``:
    one chosen beforehand (a server that comes up where a gateway already expects it)."""
    import uvicorn

    from server.serving import uvicorn_config

    port = port or free_port()
    if hasattr(app.state, "gateway"):  # served as `lora-gateway serve` serves it, connection bounds included
        config = uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning")
    else:  # a stand-in (the fake WeCom API)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ready_timeout, probe=probe)
    except RuntimeError:
        server.should_exit = True
        raise
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def server_process(
    args: list[str],
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    command: list[str] | None = None,
    cwd: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m server ARGS --port PORT`` (or ``command ARGS ...``) as a user runs it; yields
    (process, url) once /ready.

    Output goes to a temporary file (a pipe nobody reads could fill up and stall the server) and is
    shown if the process dies before it is ready.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*(command or [sys.executable, "-m", "server"]), *args, "--port", str(port)],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )

        def still_running() -> None:
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"server exited: {log.read().decode(errors='replace')[-3000:]}")

        try:
            wait_ready(url, timeout, still_running)
            yield process, url
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@contextlib.contextmanager
def engine_hook(app, hook: Callable[[GenerationRequest], None]) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Run ``hook`` in the engine before every sampled token (the local engine's fault-injection point)."""
    engine = app.state.gateway.engine
    original = engine.before_sample
    engine.before_sample = hook
    try:
        yield
    finally:
        engine.before_sample = original


SLOW = 777  # max_tokens that marks a request for slow_requests()


def slow_requests(app, seconds_per_token: float):  # type: ignore[no-untyped-def]
    """Decode requests whose max_tokens is ``SLOW`` at ``seconds_per_token``: a long generation whose
    length does not depend on what a random model happens to emit."""
    return engine_hook(
        app, lambda request: time.sleep(seconds_per_token) if request.sampling.max_tokens == SLOW else None
    )

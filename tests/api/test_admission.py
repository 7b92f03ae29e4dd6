"""Fair admission and the bounded queue on a real server with the local engine (server/engine/fair_queue.py)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, SLOW, metric_value, running_server, slow_requests, wait_for

ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture
def small_batch(base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]) -> Iterator[Any]:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    for name in ("alpha", "beta"):
        shutil.copytree(trained_adapters[name], directory / name)
    app = create_app(make_settings(base_model, directory, max_batch_size=4, max_queued_requests=4))
    with running_server(app) as url, slow_requests(app, 0.1):
        wait_for(lambda: len(httpx.get(f"{url}/v1/models").json()["data"]) == 3, timeout=60)
        yield url


def engine_counts(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    return metric_value(text, "lora_gateway_running_requests"), metric_value(text, "lora_gateway_waiting_requests")


def test_a_second_tenant_starts_before_a_flooders_backlog_and_the_queue_is_bounded(small_batch: str) -> None:
    url = small_batch
    streams: list[httpx.Response] = []
    stop = threading.Event()

    def flood() -> None:  # alpha's answer decoded slowly: each holds its batch slot for seconds
        with httpx.Client(timeout=60) as client:
            body = {"model": "alpha", "messages": ASK, "max_tokens": SLOW, "temperature": 0, "stream": True}
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                streams.append(response)
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
    for thread in threads[:4]:
        thread.start()
    wait_for(lambda: engine_counts(url) == (4, 0), timeout=30)  # alpha alone fills the batch of 4
    for thread in threads[4:]:
        thread.start()
    wait_for(lambda: engine_counts(url) == (4, 4), timeout=30)  # the rest of alpha waits: the queue is full
    try:
        full = httpx.post(f"{url}/v1/chat/completions", json={"model": "alpha", "messages": ASK, "max_tokens": 2})
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full", full.text
        assert full.headers["retry-after"] == "1"
        # Beta is another flow: it joins the full batch as one row past it at the next step, ahead
        # of alpha's backlog (with one FIFO it would wait until the four alpha requests queued
        # before it were running, each after a whole slow answer).
        body = {"model": "beta", "messages": ASK, "max_tokens": 20, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as beta:
            lines = (line for line in beta.iter_lines() if line.startswith("data: {"))
            next(lines)  # the role chunk
            next(lines)  # beta's first words: it is decoding
            assert engine_counts(url) == (5, 4)  # beside 4 alpha rows, with the 4 older alpha requests still waiting
            answer = "".join(
                json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in lines
                if json.loads(line[6:])["choices"]
            )
        assert ANSWERS["beta"].endswith(answer) and answer
        text = httpx.get(f"{url}/metrics").text
        assert metric_value(text, "lora_gateway_queue_time_seconds_count", model="beta") == 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

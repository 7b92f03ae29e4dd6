"""Fine-tuning through the OpenAI API on the demo: from job created to the model answering, and
what a training job does to serving.

    .venv/bin/python benchmarks/fine_tuning.py [--requests 60]

Starts a gateway (``serve --fine-tuning``, the embedded engine on the CPU) on the offline demo base
with the demo's ``shop-support`` adapter, and measures time to first token of ``shop-support``
(streamed, greedy, one request at a time): ``--requests`` while idle, then as many while a job
trains (the demo's recipe on ``examples/customer_service.jsonl`` through the OpenAI SDK), then
the job's times: created to running, to succeeded (published and served), to the first answer of
its ``ft:`` model. Target (issue 36): p99 time to first token while training within 1.5x idle.

Results: ``benchmarks/results/fine_tuning.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ROOT, free_port, machine, start_gateway, write_results  # noqa: E402
from server.demo import examples_dir, prepare_demo, train_demo_adapters  # noqa: E402

QUESTION = [{"role": "user", "content": "满多少包邮？"}]
RECIPE = {"n_epochs": 300, "batch_size": 24, "learning_rate_multiplier": 20}


def ttft(client: httpx.Client) -> float:
    body = {"model": "shop-support", "messages": QUESTION, "temperature": 0, "max_tokens": 24, "stream": True}
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    return time.perf_counter() - started
    raise SystemExit("no token came back")


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--adapters-dir", default=str(ROOT / "adapters"))
    args = parser.parse_args()

    base = prepare_demo(ROOT / ".demo")
    trained = Path(args.adapters_dir)
    train_demo_adapters(base, trained, ROOT / ".demo" / "runs")
    work = Path(tempfile.mkdtemp(prefix="lora-gateway-ft-"))
    directory = work / "adapters"
    directory.mkdir()
    shutil.copytree(trained / "shop-support", directory / "shop-support")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_gateway(base, directory, port, "--fine-tuning", "--device", "cpu")
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(5):
                ttft(http)  # warm
            idle = [ttft(http) for _ in range(args.requests)]
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            file = client.files.create(file=(examples_dir() / "customer_service.jsonl").open("rb"), purpose="fine-tune")
            created = time.perf_counter()
            job = client.fine_tuning.jobs.create(
                model="bench-base", training_file=file.id, suffix="shop", seed=0, hyperparameters=RECIPE
            )
            while client.fine_tuning.jobs.retrieve(job.id).status == "queued":
                time.sleep(0.05)
            running = time.perf_counter()
            time.sleep(2)  # the trainer has loaded the base and is stepping
            busy: list[float] = []
            while len(busy) < args.requests and client.fine_tuning.jobs.retrieve(job.id).status == "running":
                busy.append(ttft(http))
            while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.2)
            succeeded = time.perf_counter()
            if job.status != "succeeded":
                raise SystemExit(f"the job {job.status}: {job.error}")
            reply = client.chat.completions.create(
                model=job.fine_tuned_model or "",
                messages=QUESTION,
                temperature=0,
                max_tokens=40,  # type: ignore[arg-type]
            )
            answered = time.perf_counter()
    finally:
        process.terminate()
        process.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "machine": machine(),
        "recipe": RECIPE,
        "idle": summary(idle),
        "while_training": summary(busy),
        "p99_ratio": round(summary(busy)["p99_ms"] / summary(idle)["p99_ms"], 2) if busy else None,
        "p50_ratio": round(summary(busy)["p50_ms"] / summary(idle)["p50_ms"], 2) if busy else None,
        "job": {
            "created_to_running_s": round(running - created, 2),
            "created_to_succeeded_s": round(succeeded - created, 2),
            "created_to_answer_s": round(answered - created, 2),
            "trained_tokens": job.trained_tokens,
            "answer": reply.choices[0].message.content,
        },
    }
    lines = [
        "# Fine-tuning through the OpenAI API (demo base, CPU)",
        "",
        f"Machine: {result['machine']['cpus']} CPUs. `shop-support` time to first token, one streamed request "
        "at a time, "
        f"idle and while a job trains (the demo's recipe, {RECIPE}, at nice 19). "
        "Reproduce: `.venv/bin/python benchmarks/fine_tuning.py`.",
        "",
        "| | requests | TTFT p50 ms | TTFT p99 ms |",
        "|---|---|---|---|",
        f"| idle | {result['idle']['n']} | {result['idle']['p50_ms']} | {result['idle']['p99_ms']} |",
        f"| while training | {result['while_training']['n']} | {result['while_training']['p50_ms']} | "
        f"{result['while_training']['p99_ms']} |",
        "",
        f"p99 while training / idle: **{result['p99_ratio']}x** (target <= 1.5x); p50 {result['p50_ratio']}x.",
        "",
        f"Job: created to running {result['job']['created_to_running_s']} s, to succeeded (published and served) "
        f"{result['job']['created_to_succeeded_s']} s, to the `ft:` model's first answer "
        f"{result['job']['created_to_answer_s']} s; it answered {result['job']['answer']!r}.",
        "",
    ]
    write_results("fine_tuning", result, lines)


if __name__ == "__main__":
    main()

"""What the Responses API costs over chat through the gateway: the same model, the same load, one run.

The gateway runs with the stand-in engine (``standin.py``: it answers instantly), so the
difference is the gateway's own work: validating a ``ResponsesRequest``, translating it to chat
and the answer back, and (streaming) the typed events. Requests for ``/v1/chat/completions`` and
``/v1/responses`` are sent in alternating rounds at each concurrency, so both see the same
machine; the target (issue 34) is the Responses path costing no more than chat.

    .venv/bin/python benchmarks/responses_overhead.py [--requests 400] [--rounds 8]

Writes benchmarks/results/responses_overhead.{json,md} and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, free_port, machine, wait_ready  # noqa: E402
from server.offline_model import build_tiny_model  # noqa: E402

QUESTION = "满多少包邮？"
BODIES = {
    "chat": ("/v1/chat/completions", {"model": "bench-base", "messages": [{"role": "user", "content": QUESTION}]}),
    "responses": ("/v1/responses", {"model": "bench-base", "input": QUESTION, "store": False}),
    # OpenAI's default: the response is also written to the gateway's database
    "responses-stored": ("/v1/responses", {"model": "bench-base", "input": QUESTION}),
}


async def one(client: httpx.AsyncClient, api: str, stream: bool) -> float:
    path, body = BODIES[api]
    started = time.perf_counter()
    if stream:
        async with client.stream("POST", path, json={**body, "stream": True}) as response:
            response.raise_for_status()
            async for _ in response.aiter_bytes():
                pass
    else:
        (await client.post(path, json=body)).raise_for_status()
    return time.perf_counter() - started


async def cell(client: httpx.AsyncClient, api: str, stream: bool, count: int, concurrency: int) -> list[float]:
    queue = list(range(count))
    times: list[float] = []

    async def worker() -> None:
        while queue:
            queue.pop()
            times.append(await one(client, api, stream))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


async def measure(url: str, requests: int, rounds: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        for api in BODIES:  # warm both paths (imports, pydantic schemas) before anything counts
            await cell(client, api, False, 20, 4)
            await cell(client, api, True, 20, 4)
        per_round = max(1, requests // rounds)
        for _ in range(rounds):
            for concurrency in (1, 16):
                for stream in (False, True):
                    for api in BODIES:
                        key = f"{'stream' if stream else 'plain'}-c{concurrency}"
                        started = time.perf_counter()
                        times = await cell(client, api, stream, per_round, concurrency)
                        wall = time.perf_counter() - started
                        entry = results.setdefault(key, {}).setdefault(api, [])
                        entry.extend(times)
                        results[key].setdefault(f"{api}-wall", []).append(wall)
    summary: dict[str, Any] = {}
    for key, by_api in results.items():
        summary[key] = {}
        for api in BODIES:
            times, walls = by_api[api], by_api[f"{api}-wall"]
            summary[key][api] = {
                "requests": len(times),
                "p50_ms": statistics.median(times) * 1000,
                "p90_ms": statistics.quantiles(times, n=10)[-1] * 1000,
                "requests_per_s": len(times) / sum(walls),
            }
        chat, resp, kept = summary[key]["chat"], summary[key]["responses"], summary[key]["responses-stored"]
        summary[key]["responses_vs_chat_p50"] = resp["p50_ms"] / chat["p50_ms"]
        summary[key]["responses_vs_chat_rps"] = resp["requests_per_s"] / chat["requests_per_s"]
        summary[key]["stored_vs_chat_p50"] = kept["p50_ms"] / chat["p50_ms"]
    return summary


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Responses API vs chat through the gateway (stand-in engine)",
        "",
        f"{data['requests']} requests per API and cell, in {data['rounds']} alternating rounds; {data['machine']}.",
        "",
        "Responses with `store: false` does the work chat does; stored (OpenAI's default) also writes the",
        "response to the database.",
        "",
        "| cell | chat p50 ms | responses p50 ms | p50 ratio | chat req/s | responses req/s | req/s ratio "
        "| stored p50 ms | stored p50 ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, cell_data in data["results"].items():
        chat, resp = cell_data["chat"], cell_data["responses"]
        lines.append(
            f"| {key} | {chat['p50_ms']:.2f} | {resp['p50_ms']:.2f} | {cell_data['responses_vs_chat_p50']:.2f} "
            f"| {chat['requests_per_s']:.0f} | {resp['requests_per_s']:.0f} "
            f"| {cell_data['responses_vs_chat_rps']:.2f} | {cell_data['responses-stored']['p50_ms']:.2f} "
            f"| {cell_data['stored_vs_chat_p50']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per API and cell [default 400]")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds [default 8]")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        base = build_tiny_model(Path(work) / "base")
        adapters = Path(work) / "adapters"
        adapters.mkdir()
        port = free_port()
        command = [sys.executable, "benchmarks/standin.py", "--model", str(base), "--served-model-name", "bench-base"]
        command += ["--adapters-dir", str(adapters), "--port", str(port), "--no-playground"]
        process = subprocess.Popen(command, cwd=ROOT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/ready", process)
            results = asyncio.run(measure(url, args.requests, args.rounds))
        finally:
            process.terminate()
            process.wait(timeout=30)
    data = {"requests": args.requests, "rounds": args.rounds, "machine": machine(), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "responses_overhead.json").write_text(json.dumps(data, indent=2) + "\n")
    text = report(data)
    (args.out / "responses_overhead.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

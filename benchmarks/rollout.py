"""What canaries and feedback cost: split routing latency, and feedback writes per second.

    .venv/bin/python benchmarks/rollout.py [--requests 2000] [--feedback 3000] [--clients 16]

Starts the gateway with its stand-in engine (``benchmarks/standin.py``: answers instantly, so only
the gateway's own work is timed) and ``--feedback`` on SQLite, serving ``shop`` versions 1 and 2.

- Split routing: ``--requests`` requests at concurrency 1 to ``shop``, in alternating blocks with
  and without a 90/10 split (so drift hits both alike), each from a different user. The added
  latency is the difference of the p50s. Target (issue 14): <= 0.2 ms.
- Feedback writes: ``--feedback`` answers (captured), then a rating for each through
  ``POST /v1/feedback`` at ``--clients`` concurrency; and the store alone (``FeedbackStore.add``
  in one thread), without HTTP. Target: >= 500 writes/s.

Results: ``benchmarks/results/rollout.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, machine, prepare, wait_until  # noqa: E402
from server.registry.publish import publish_adapter  # noqa: E402

ADMIN = {"Authorization": "Bearer bench-admin"}
ASK = [{"role": "user", "content": "Where is my order?"}]


def start(base: Path, directory: Path, port: int, database: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "standin.py"),
        "--model",
        str(base),
        "--adapters-dir",
        str(directory),
        "--port",
        str(port),
        "--admin-key",
        "bench-admin",
        "--feedback",
        "--database",
        database,
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200, 120)
    return process


def serving(url: str) -> int | None:
    data = httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]
    return next((a["active_version"] for a in data if a["name"] == "shop"), None)


def latencies(client: httpx.Client, users: range) -> tuple[list[float], list[str]]:
    times, ids = [], []
    for i in users:
        body = {"model": "shop", "messages": ASK, "user": f"user-{i}"}
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", json=body)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return times, ids


async def rate_all(url: str, ids: list[str], clients: int) -> tuple[float, int]:
    queue = list(ids)
    failed = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failed
        while queue:
            completion = queue.pop()
            body = {"completion_id": completion, "rating": -1 if len(queue) % 3 == 0 else 1}
            if (await client.post("/v1/feedback", json=body)).status_code != 200:
                failed += 1

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return time.perf_counter() - started, failed


def store_alone(count: int, where: Path) -> float:
    from server.feedback import Conversation, FeedbackStore, Rating

    store = FeedbackStore(f"sqlite:///{where / 'alone.db'}")
    try:
        for i in range(count):
            store.capture(Conversation(f"c{i}", "shop", "shop", 1, "0" * 64, "u", "api", ASK, "answer"))
        store.flush()
        started = time.perf_counter()
        for i in range(count):
            store.add(f"c{i}", Rating(1, "thumbs"))
        return count / (time.perf_counter() - started)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--feedback", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base, sources = prepare(args.cache)
    work = Path(tempfile.mkdtemp(prefix="lora-gateway-rollout-"))
    directory = work / "adapters"
    publish_adapter(sources / "shop-a", "shop", directory)
    server = start(base, directory, args.port, f"sqlite:///{work / 'feedback.db'}")
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_until(lambda: serving(url) == 1, 60)
        publish_adapter(sources / "shop-b", "shop", directory)
        wait_until(lambda: serving(url) == 2, 60)
        blocks = 8
        per_block = max(1, args.requests // blocks)
        plain: list[float] = []
        split: list[float] = []
        with httpx.Client(base_url=url, timeout=60) as client:
            latencies(client, range(-50, 0))  # warm-up, not counted
            for block in range(blocks):
                users = range(block * per_block, (block + 1) * per_block)
                if block % 2:
                    started = client.put(
                        "/v1/adapters/shop/split", json={"versions": {"2": 90, "1": 10}}, headers=ADMIN
                    )
                    assert started.status_code == 200, started.text
                    latencies(client, range(-20, -10))  # the canary's first request loads it: not counted
                    split += latencies(client, users)[0]
                    assert client.post("/v1/adapters/shop/abort", headers=ADMIN).status_code == 200
                else:
                    plain += latencies(client, users)[0]
            _, ids = latencies(client, range(10**6, 10**6 + args.feedback))
        seconds, failed = asyncio.run(rate_all(url, ids, args.clients))
        report = httpx.get(f"{url}/v1/adapters/shop/feedback", headers=ADMIN).json()
        rated = sum(v["feedback"] for v in report["versions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    alone = store_alone(args.feedback, work)
    shutil.rmtree(work, ignore_errors=True)

    p50_plain, p50_split = statistics.median(plain) * 1000, statistics.median(split) * 1000
    http_rate = args.feedback / seconds
    summary = {
        "benchmark": "rollout",
        "split_routing": {
            "requests_each": len(plain),
            "p50_ms_no_split": round(p50_plain, 4),
            "p50_ms_split_90_10": round(p50_split, 4),
            "added_p50_ms": round(p50_split - p50_plain, 4),
            "target_added_p50_ms": 0.2,
        },
        "feedback_writes": {
            "http_writes_per_s": round(http_rate, 1),
            "http_clients": args.clients,
            "http_failed": failed,
            "stored": rated,
            "store_alone_writes_per_s": round(alone, 1),
            "target_writes_per_s": 500,
        },
        "targets_met": {
            "split_routing": p50_split - p50_plain <= 0.2,
            "feedback_writes": http_rate >= 500 and failed == 0 and rated == args.feedback,
        },
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rollout.json").write_text(json.dumps(summary, indent=2))
    s, f = summary["split_routing"], summary["feedback_writes"]
    (args.out / "rollout.md").write_text(
        "# Canary routing and feedback writes\n\n"
        f"Gateway with the stand-in engine (answers instantly), CPU ({machine()['cpus']} cores), one run.\n\n"
        "| split routing, concurrency 1 | p50 (ms) |\n|---|---|\n"
        f"| `shop`, no split | {s['p50_ms_no_split']:.3f} |\n"
        f"| `shop`, 90/10 split by user | {s['p50_ms_split_90_10']:.3f} |\n"
        f"| **added by the split** | **{s['added_p50_ms']:.3f}** (target <= 0.2) |\n\n"
        f"{s['requests_each']} requests each, in alternating blocks, one user per request.\n\n"
        "| feedback writes (SQLite) | writes/s |\n|---|---|\n"
        f"| `POST /v1/feedback`, {args.clients} clients | {f['http_writes_per_s']:.0f} |\n"
        f"| the store alone, one thread | {f['store_alone_writes_per_s']:.0f} |\n\n"
        f"{args.feedback} ratings over HTTP: {f['http_failed']} failed, {f['stored']} stored. "
        "Target: >= 500 writes/s.\n"
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

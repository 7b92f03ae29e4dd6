"""Issue 32's two load cases, re-run against a real gateway subprocess: abandoned grammar compiles
and a parallel token quota.

1. Eight clients each send a json_schema request with a 20,000-value enum (about 700 KB) and give
   up after 4 s, while a ninth rates an answer (``POST /v1/feedback``) and a tenth asks a small
   json_schema request. Before issue 32 the compiles ran on the shared worker pool for 16+
   minutes and everything else timed out; now the schema is refused at the edge (400) and the
   others are answered. Reported: each request's status and seconds.
2. Thirty requests at once with ``max_tokens`` 50 from a key with ``tokens_per_day`` 300. Before:
   all 30 ran and used 2,029 tokens. Reported: how many ran, the tokens they used, the quota.

    .venv/bin/python benchmarks/attacks.py

Writes benchmarks/results/attacks.{json,md} and prints a summary.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, free_port, machine, prepare, start_gateway  # noqa: E402

ADMIN = {"Authorization": "Bearer bench-admin"}


def _timed(call: Any) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        status: int | str = call().status_code
    except httpx.TimeoutException:
        status = "gave up"
    return status, round(time.perf_counter() - started, 3)


def abandoned_compiles(url: str) -> dict[str, Any]:
    huge = {"type": "string", "enum": [f"value-{i:05d}" for i in range(20_000)]}
    body = {
        "model": "bench-base",
        "messages": [{"role": "user", "content": "pick one"}],
        "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": huge}},
    }
    small = {**body, "response_format": {"type": "json_object"}}
    answered = httpx.post(f"{url}/v1/chat/completions", json={**small, "response_format": None}, timeout=60).json()[
        "id"
    ]
    with ThreadPoolExecutor(10) as pool:
        abandoned = [
            pool.submit(_timed, lambda: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=4))
            for _ in range(8)
        ]
        time.sleep(0.2)
        feedback = pool.submit(
            _timed,
            lambda: httpx.post(f"{url}/v1/feedback", json={"completion_id": answered, "rating": 1}, timeout=30),
        )
        schema = pool.submit(_timed, lambda: httpx.post(f"{url}/v1/chat/completions", json=small, timeout=30))
        return {
            "huge_schema_bytes": len(json.dumps(huge)),
            "abandoned": [f.result() for f in abandoned],
            "feedback_during": feedback.result(),
            "small_schema_during": schema.result(),
        }


def parallel_quota(url: str) -> dict[str, Any]:
    key = httpx.post(f"{url}/v1/keys", json={"name": "racer", "tokens_per_day": 300}, headers=ADMIN, timeout=10).json()[
        "secret"
    ]
    body = {"model": "shop-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}

    def one(_: int) -> int:
        response = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        return int(response.json()["usage"]["total_tokens"]) if response.status_code == 200 else 0

    with ThreadPoolExecutor(30) as pool:
        used = list(pool.map(one, range(30)))
    return {"requests": 30, "ran": sum(1 for u in used if u), "tokens_used": sum(used), "tokens_per_day": 300}


def main() -> int:
    cache = Path(tempfile.gettempdir()) / "lora-gateway-bench"
    base, adapters = prepare(cache)
    work = Path(tempfile.mkdtemp())
    shutil.copytree(adapters, work / "adapters")
    port = free_port()
    process = start_gateway(
        base, work / "adapters", port, "--admin-key", "bench-admin", "--feedback", "--device", "cpu"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        compiles = abandoned_compiles(url)
        quota = parallel_quota(url)
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    results = {"machine": machine(), "abandoned_compiles": compiles, "parallel_quota": quota}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attacks.json").write_text(json.dumps(results, indent=2) + "\n")
    statuses = [s for s, _ in compiles["abandoned"]]
    lines = [
        "# Issue 32's load cases, re-run",
        "",
        f"- 8 json_schema requests with a {compiles['huge_schema_bytes']:,}-byte enum: statuses {statuses}, "
        f"slowest {max(t for _, t in compiles['abandoned'])} s",
        f"- meanwhile POST /v1/feedback: {compiles['feedback_during'][0]} in {compiles['feedback_during'][1]} s; "
        f"a small json_schema request: {compiles['small_schema_during'][0]} in {compiles['small_schema_during'][1]} s",
        f"- 30 parallel requests (max_tokens 50) against tokens_per_day 300: {quota['ran']} ran, "
        f"{quota['tokens_used']} tokens used",
    ]
    (RESULTS / "attacks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

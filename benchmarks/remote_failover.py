"""How long does a request wait on a dead upstream? ``--engine remote`` over two upstreams, one of
which is frozen (SIGSTOP) and then killed (SIGKILL) under load.

    .venv/bin/python benchmarks/remote_failover.py [--first-byte-timeout 2] [--requests 20]

Two ``lora-gateway serve`` processes (local engine, the offline benchmark model) stand in for vLLM
upstreams (they expose vLLM's adapter endpoints); a third runs ``--engine remote`` in front of them.
Phases, each with non-streaming requests to an adapter (``max_tokens`` 16):

1. ``healthy``: sequential requests, both upstreams up (baseline).
2. ``frozen``: one upstream SIGSTOPped; sequential requests. A plain answer has no first-byte
   deadline (it comes when it is all generated): once it is that late, the upstream is probed, with
   as long to answer, and ejected, which ends the wait. So every request that lands on it must be
   answered by the other within twice ``--upstream-first-byte-timeout`` plus the normal latency.
3. ``killed``: 4 clients for 10 s; one upstream SIGKILLed after 3 s. No request may fail.

Results: ``benchmarks/results/remote_failover.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, machine, prepare, start_gateway  # noqa: E402
from benchmarks.hot_swap import percentile  # noqa: E402
from server.registry.publish import publish_adapter  # noqa: E402

KEY = "bench-upstream"
BODY = {
    "model": "shop-a",
    "messages": [{"role": "user", "content": "Where is my order?"}],
    "max_tokens": 16,
    "temperature": 0,
}


ERRORS: list[str] = []


def timed(http: httpx.Client, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    try:
        response = http.post(f"{url}/v1/chat/completions", json=BODY)
        status = response.status_code
        if status != 200:
            ERRORS.append(f"{status}: {response.text[:300]}")
    except httpx.HTTPError as exc:
        status = 0
        ERRORS.append(repr(exc))
    return time.perf_counter() - started, status


def stats(samples: list[tuple[float, int]]) -> dict[str, object]:
    latencies = [s for s, _ in samples]
    return {
        "requests": len(samples),
        "failed": sum(1 for _, status in samples if status != 200),
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-byte-timeout", type=float, default=2.0)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--port", type=int, default=8770)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    args = parser.parse_args()

    base, sources = prepare(args.cache)
    work = Path(tempfile.mkdtemp(prefix="lora-gateway-failover-"))
    publish_adapter(sources / "shop-a", "shop-a", work / "gateway")
    ports = [args.port + 1, args.port + 2]
    upstreams = [
        start_gateway(base, work / f"up-{i}", port, "--api-key", KEY, "--admin-key", KEY)
        for i, port in enumerate(ports)
    ]
    gateway = start_gateway(
        base,
        work / "gateway",
        args.port,
        "--engine",
        "remote",
        "--upstream-api-key",
        KEY,
        *[flag for port in ports for flag in ("--upstream", f"http://127.0.0.1:{port}")],
        "--upstream-first-byte-timeout",
        str(args.first_byte_timeout),
    )
    url = f"http://127.0.0.1:{args.port}"
    phases: dict[str, dict[str, object]] = {}
    try:
        with httpx.Client(timeout=120) as http:
            timed(http, url)  # warm-up
            phases["healthy"] = stats([timed(http, url) for _ in range(args.requests)])
            os.kill(upstreams[1].pid, signal.SIGSTOP)
            phases["frozen"] = stats([timed(http, url) for _ in range(args.requests)])
            os.kill(upstreams[1].pid, signal.SIGCONT)
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/ready").json()["engine"] != "2/2 upstreams healthy" and time.monotonic() < deadline:
                time.sleep(0.2)

        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    samples.append(timed(http, url))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        upstreams[1].kill()
        time.sleep(7.0)
        stop.set()
        for thread in threads:
            thread.join()
        phases["killed"] = stats(samples)
    finally:
        for process in (gateway, *upstreams):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    healthy_p50 = float(phases["healthy"]["p50_s"])  # type: ignore[arg-type]
    bound = 2 * args.first_byte_timeout + 10 * healthy_p50  # late by the deadline, then the probe's own
    met = {
        "frozen_within_bound": float(phases["frozen"]["max_s"]) <= bound,  # type: ignore[arg-type]
        "no_failures": all(p["failed"] == 0 for p in phases.values()),
    }
    summary = {
        "benchmark": "remote_failover",
        "first_byte_timeout_s": args.first_byte_timeout,
        "phases": phases,
        "errors": sorted(set(ERRORS))[:10],
        "bound_s": bound,
        "targets_met": met,
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "remote_failover.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# Remote engine: failover bound\n",
        f"`--engine remote` over two `lora-gateway serve` upstreams (local engine, offline benchmark model, CPU, "
        f"{machine()['cpus']} cores, all three processes on one machine), `--upstream-first-byte-timeout "
        f"{args.first_byte_timeout:g}`; non-streaming requests to an adapter, 16 tokens.\n",
        "| phase | requests | failed | p50 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in phases.items():
        lines.append(
            f"| {name} | {p['requests']} | **{p['failed']}** | {float(p['p50_s']):.3f} s | "  # type: ignore[arg-type]
            f"{float(p['p99_s']):.3f} s | {float(p['max_s']):.3f} s |"
        )  # type: ignore[arg-type]
    lines += [
        "",
        "- `healthy`: both upstreams up, sequential requests.",
        "- `frozen`: one upstream SIGSTOPped: a plain answer routed to it is waited on until it is a first-byte "
        "deadline late; the upstream is then probed, found frozen (or caught by its periodic health check first) "
        "and ejected, which ends the wait; the other answers, and later requests skip the frozen one.",
        "- `killed`: 4 clients; one upstream SIGKILLed after 3 s. Plain answers it loses are asked of the other "
        "upstream.",
        f"\nBound for a request that meets a frozen upstream: twice the first-byte deadline (late, then the probe) "
        f"+ normal latency "
        f"(checked against {bound:.2f} s): **{'met' if met['frozen_within_bound'] else 'missed'}**; "
        f"failed requests in all phases: **{'none' if met['no_failures'] else 'some'}**.",
    ]
    (RESULTS / "remote_failover.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

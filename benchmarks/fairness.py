"""Many tenants on one engine: does a flood from one tenant hurt another, and what do keys cost?

    .venv/bin/python benchmarks/fairness.py [--seconds 120] [--rounds 4] [--flood 32] [--requests 2000]

1. Fairness (local engine, the benchmark model, two adapters): tenant B sends one streaming request
   a second to ``shop-b``; its time to first token (to the first chunk with text, what its user
   sees) is measured alone and while tenant A floods ``shop-a`` at concurrency ``--flood``, in
   ``--rounds`` alternating blocks (so drift on a shared machine hits both alike, and the host's
   steal time of each phase is reported), then with ``--no-fair-admission`` (a second gateway),
   first come first served. Target (issue 38, raised from issue 15's 2x): B's p99 TTFT with A <= 1.5x without.
2. Key overhead (the stand-in engine, which answers instantly, so only the gateway's work is timed):
   ``--requests`` requests at concurrency 1 with an ``--api-key`` key and with a stored key that has
   request and token limits, in alternating blocks. Target: the p50 difference <= 0.3 ms.
3. Wrong keys: the median time to refuse a wrong key of a real key's length and a short one, in
   process (``Tenancy.authenticate``), over many tries: the difference is reported.

Results: ``benchmarks/results/fairness.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, cpu_ticks, machine, prepare, start_gateway, steal_share  # noqa: E402

ASK = [{"role": "user", "content": "Where is my order?"}]
TARGET_P99_RATIO = 1.5  # B's p99 TTFT under the flood / alone (issue 38)
TARGET_KEY_ADDED_MS = 0.3  # a stored key's added p50 over an --api-key key


def create_key(directory: Path, name: str, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server", "keys", "create", name, "--adapters-dir", str(directory), *flags],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return done.stdout.strip().splitlines()[-1]


async def ttft(client: httpx.AsyncClient, key: str, model: str) -> float:
    body = {"model": model, "messages": ASK, "max_tokens": 16, "stream": True}
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - started
    return time.perf_counter() - started


async def _flood(url: str, key: str, concurrency: int, served: Synchronized[int], stop: EventType) -> None:
    body = {"model": "shop-a", "messages": ASK, "max_tokens": 64}
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not stop.is_set():
                response = await client.post("/v1/chat/completions", json=body, headers=headers)
                if response.status_code == 200:
                    with served.get_lock():
                        served.value += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def flood_process(url: str, key: str, concurrency: int, served: Synchronized[int], stop: EventType) -> None:
    """Tenant A: its own client in its own process, as another tenant's backend would be. (In B's
    process, A's 32 connections would share B's event loop, and B's clock would time A's parsing.)"""
    asyncio.run(_flood(url, key, concurrency, served, stop))


async def tenant_b(
    url: str, key: str, seconds: float, flood: int, flood_key: str
) -> tuple[list[float], float, float | None]:
    """B's TTFTs, one request a second, while ``flood`` workers of A keep ``shop-a`` busy; A's
    answers per second meanwhile; and the host's steal share meanwhile (``common.steal_share``)."""
    context = multiprocessing.get_context("spawn")
    served, stop = context.Value("i", 0), context.Event()  # A's answers (0 without a flood), its end
    flooder = None
    if flood:
        flooder = context.Process(target=flood_process, args=(url, flood_key, flood, served, stop), daemon=True)
        flooder.start()
        await asyncio.sleep(5)  # the flood is established: the batch is full and requests wait
    try:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            times, before, started_at, ticks = [], served.value, time.perf_counter(), cpu_ticks()
            for _ in range(int(seconds)):
                started = time.perf_counter()
                times.append(await ttft(client, key, "shop-b"))
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
            rate = (served.value - before) / (time.perf_counter() - started_at)
            steal = steal_share(ticks, cpu_ticks())
    finally:
        stop.set()
        if flooder is not None:
            flooder.join(timeout=120)
            await asyncio.sleep(1)  # the flood's last answers drain before whatever is measured next
    return times, rate, steal


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def key_overhead(base: Path, sources: Path, requests: int, port: int, work: Path) -> dict[str, float]:
    """p50 at concurrency 1 through HTTP: an ``--api-key`` key against a stored key with limits."""
    from server.registry.publish import publish_adapter

    directory = work / "standin"
    publish_adapter(sources / "shop-a", "shop-a", directory)
    limited = create_key(directory, "limited", "--rpm", "1000000", "--tpm", "1000000000")
    command = [sys.executable, str(ROOT / "benchmarks" / "standin.py"), "--model", str(base)]
    command += ["--adapters-dir", str(directory), "--port", str(port), "--api-key", "flat-key"]
    server = subprocess.Popen(command + ["--log-level", "warning"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("stand-in gateway did not start")
            time.sleep(0.1)
        samples: dict[str, list[float]] = {"flat": [], "stored": []}
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"model": "shop-a", "messages": ASK}
            for key in ("flat-key", limited):  # warm-up
                for _ in range(50):
                    client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            # Alternate request by request, so drift on a shared machine hits both alike.
            for i in range(2 * requests):
                name, key = ("flat", "flat-key") if i % 2 == 0 else ("stored", limited)
                headers = {"Authorization": f"Bearer {key}"}
                started = time.perf_counter()
                response = client.post("/v1/chat/completions", json=body, headers=headers)
                samples[name].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    finally:
        server.terminate()
        server.wait(timeout=30)
    flat, stored = statistics.median(samples["flat"]) * 1000, statistics.median(samples["stored"]) * 1000
    return {"requests_each": len(samples["flat"]), "p50_ms_api_key": flat, "p50_ms_stored_key_with_limits": stored}


def in_process_cost(work: Path, tries: int = 20000) -> float:
    """Microseconds of a stored key's work per request without HTTP: find it, admit it against a
    request and a token window, charge its tokens, free it, count its usage and metrics."""
    from server.database import open_engine
    from server.metrics import GatewayMetrics
    from server.tenancy.service import Tenancy

    tenancy = Tenancy(open_engine(f"sqlite:///{work / 'cost.db'}"), [])
    metrics = GatewayMetrics()
    try:
        _, secret = tenancy.store.create("cost", requests_per_minute=10**9, tokens_per_minute=10**12)
        tenancy.ring.refresh()
        header = f"Bearer {secret}"

        def once() -> None:
            principal = tenancy.authenticate(header)
            assert principal.key is not None
            ticket = tenancy.limiter.admit(principal.key)
            tenancy.limiter.charge(principal.key, ticket.windows, 15)
            ticket.release()
            tenancy.record(principal, "shop-a", 8, 7, False)
            metrics.record_tenant(principal.tenant, principal.key_id, 8, 7, False)

        for _ in range(1000):
            once()
        started = time.perf_counter()
        for _ in range(tries):
            once()
        return (time.perf_counter() - started) / tries * 1e6
    finally:
        tenancy.close()


def wrong_key_timing(work: Path, tries: int = 20000) -> dict[str, float]:
    from server.database import open_engine
    from server.errors import Unauthorized
    from server.tenancy.service import Tenancy

    tenancy = Tenancy(open_engine(f"sqlite:///{work / 'timing.db'}"), [])
    try:
        _, secret = tenancy.store.create("real")
        tenancy.ring.refresh()
        same_length = "Bearer " + secret[:-6] + "zzzzzz"
        short = "Bearer lgw-short"

        def median(header: str) -> float:
            runs = []
            for _ in range(tries):
                started = time.perf_counter_ns()
                try:
                    tenancy.authenticate(header)
                except Unauthorized:
                    pass
                runs.append(time.perf_counter_ns() - started)
            return float(statistics.median(runs))

        median(same_length), median(short)  # warm-up
        a = [median(same_length) for _ in range(3)]
        b = [median(short) for _ in range(3)]
    finally:
        tenancy.close()
    right, wrong = statistics.median(a), statistics.median(b)
    return {"tries": tries, "median_ns_right_length": right, "median_ns_short": wrong, "difference_ns": right - wrong}


def _pct(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120, help="B's requests (one a second) in each phase.")
    parser.add_argument("--rounds", type=int, default=4, help="Alternating blocks alone / with the flood.")
    parser.add_argument("--flood", type=int, default=32, help="A's concurrency.")
    parser.add_argument("--requests", type=int, default=2000, help="Requests of each kind, key overhead.")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base, sources = prepare(args.cache)
    work = Path(tempfile.mkdtemp(prefix="lora-gateway-fairness-"))
    directory = work / "adapters"
    directory.mkdir()
    for name in ("shop-a", "shop-b"):
        shutil.copytree(sources / name, directory / name)
    key_a = create_key(directory, "tenant-a", "--models", "shop-a")
    key_b = create_key(directory, "tenant-b", "--models", "shop-b")
    server = start_gateway(base, directory, args.port)
    url = f"http://127.0.0.1:{args.port}"
    try:
        asyncio.run(tenant_b(url, key_b, 3, 0, key_a))  # warm-up: both adapters loaded, not counted
        alone, crowded, rates = [], [], []
        steals: dict[str, list[float]] = {"alone": [], "with_flood": []}
        for _ in range(args.rounds):  # alternating blocks: a slow spell of the host hits both alike
            times, _, steal = asyncio.run(tenant_b(url, key_b, args.seconds / args.rounds, 0, key_a))
            alone += times
            steals["alone"] += [steal] if steal is not None else []
            times, rate, steal = asyncio.run(tenant_b(url, key_b, args.seconds / args.rounds, args.flood, key_a))
            crowded += times
            steals["with_flood"] += [steal] if steal is not None else []
            rates.append(rate)
        flood_served = statistics.mean(rates)
        steal_pct = {phase: 100 * statistics.mean(v) if v else None for phase, v in steals.items()}
    finally:
        server.terminate()
        server.wait(timeout=60)
    server = start_gateway(base, directory, args.port, "--no-fair-admission")
    try:
        asyncio.run(tenant_b(url, key_b, 3, 0, key_a))
        fifo, fifo_served, _ = asyncio.run(tenant_b(url, key_b, args.seconds, args.flood, key_a))
    finally:
        server.terminate()
        server.wait(timeout=60)
    overhead = key_overhead(base, sources, args.requests, args.port + 1, work)
    timing = wrong_key_timing(work)
    overhead["in_process_us_per_request"] = in_process_cost(work)
    shutil.rmtree(work, ignore_errors=True)

    ratio = p(crowded, 0.99) / p(alone, 0.99)
    added = overhead["p50_ms_stored_key_with_limits"] - overhead["p50_ms_api_key"]
    summary = {
        "benchmark": "fairness",
        "fairness": {
            "b_requests_each": len(alone),
            "rounds": args.rounds,
            "flood_concurrency": args.flood,
            "flood_answers_per_s": flood_served,
            "b_ttft_ms_alone": {"p50": p(alone, 0.5) * 1000, "p99": p(alone, 0.99) * 1000},
            "b_ttft_ms_with_flood": {"p50": p(crowded, 0.5) * 1000, "p99": p(crowded, 0.99) * 1000},
            "b_ttft_ms_with_flood_first_come_first_served": {"p50": p(fifo, 0.5) * 1000, "p99": p(fifo, 0.99) * 1000},
            "flood_answers_per_s_first_come_first_served": fifo_served,
            "p99_ratio": ratio,
            "p50_ratio": p(crowded, 0.5) / p(alone, 0.5),
            "target_p99_ratio": TARGET_P99_RATIO,
            "host_steal_percent": steal_pct,
        },
        "key_overhead": {**overhead, "added_p50_ms": added, "target_added_p50_ms": TARGET_KEY_ADDED_MS},
        "wrong_keys": timing,
        "targets_met": {"fairness": ratio <= TARGET_P99_RATIO, "key_overhead": added <= TARGET_KEY_ADDED_MS},
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fairness.json").write_text(json.dumps(summary, indent=2) + "\n")
    f = summary["fairness"]
    lines = [
        "# Fairness and key overhead (benchmarks/fairness.py)",
        "",
        f"Machine: {machine()}. One run; ratios are within it. B sent {len(alone)} requests alone and "
        f"{len(crowded)} with the flood, in {args.rounds} alternating blocks of each.",
        "",
        "| tenant B's TTFT (ms), one request a second | p50 | p99 |",
        "|---|---|---|",
        f"| alone | {f['b_ttft_ms_alone']['p50']:.1f} | {f['b_ttft_ms_alone']['p99']:.1f} |",
        f"| while A floods at concurrency {args.flood} | {f['b_ttft_ms_with_flood']['p50']:.1f} | "
        f"{f['b_ttft_ms_with_flood']['p99']:.1f} |",
        f"| while A floods, first come first served (`--no-fair-admission`) | "
        f"{f['b_ttft_ms_with_flood_first_come_first_served']['p50']:.1f} | "
        f"{f['b_ttft_ms_with_flood_first_come_first_served']['p99']:.1f} |",
        "",
        f"p99 with A / without: **{ratio:.2f}x** (target <= {TARGET_P99_RATIO}x), p50 {f['p50_ratio']:.2f}x. A got "
        f"{flood_served:.1f} answers/s meanwhile ({fifo_served:.1f} first come first served).",
        "",
        f"The host's steal time (CPU time it gave to other guests; latency tails follow it): "
        f"{_pct(steal_pct['alone'])} while B ran alone, {_pct(steal_pct['with_flood'])} under the flood.",
        "",
        f"Key checks and limits: p50 {overhead['p50_ms_api_key']:.3f} ms with `--api-key`, "
        f"{overhead['p50_ms_stored_key_with_limits']:.3f} ms with a stored key with request and token limits: "
        f"**{added:+.3f} ms** (target <= {TARGET_KEY_ADDED_MS} ms; {overhead['requests_each']} requests each, "
        f"alternating, concurrency 1, stand-in engine). Without HTTP, a stored key's work (find, admit, charge, usage, "
        f"metrics) is {overhead['in_process_us_per_request']:.0f} us per request.",
        "",
        f"Refusing a wrong key: median {timing['median_ns_right_length'] / 1000:.2f} us for one of a real key's "
        f"length, {timing['median_ns_short'] / 1000:.2f} us for a short one: difference "
        f"{timing['difference_ns']:.0f} ns ({timing['tries']} tries each, in process).",
        "",
    ]
    (args.out / "fairness.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""What a cold adapter (on disk, not loaded) costs its first token, against a loaded one.

    .venv/bin/python benchmarks/cold_adapter.py [--rounds 12]

Starts ``lora-gateway serve`` (local engine, the offline benchmark model, its four rank-8
all-linear adapters) with ``--max-loaded-adapters 1``, so a request for another adapter than the
last finds it evicted: its kept copy is loaded before its prefill. Each round asks the four
adapters in turn (every request cold) and then one adapter four times (every request but the
first warm), streamed, one at a time; time to first token, client side.

Target (issue 38): a cold adapter's TTFT p50 at most 300 ms above a loaded one's. Results:
``benchmarks/results/cold_adapter.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ADAPTERS, ROOT, free_port, machine, prepare, start_gateway, write_results  # noqa: E402


def ttft(client: httpx.Client, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Where is my order?"}], "max_tokens": 4}
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True, "temperature": 0}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line.replace(" ", "") and '"content":""' not in line:
                return time.perf_counter() - started
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    args = parser.parse_args()
    base, sources = prepare(args.cache)
    cold, warm = [], []
    port = free_port()
    server = start_gateway(base, sources, port, "--max-loaded-adapters", "1", "--prefix-cache-mb", "0")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for model in ADAPTERS:  # warm-up: every adapter's kept copy made, the allocator warm
                ttft(client, model)
            for _ in range(args.rounds):
                cold += [ttft(client, model) for model in ADAPTERS]  # each evicts the one before
                ttft(client, ADAPTERS[0])
                warm += [ttft(client, ADAPTERS[0]) for _ in ADAPTERS]
    finally:
        server.terminate()
        server.wait()
    extra = statistics.median(cold) - statistics.median(warm)
    result = {
        "machine": machine(),
        "cold_ttft_p50_s": statistics.median(cold),
        "warm_ttft_p50_s": statistics.median(warm),
        "cold_extra_p50_s": extra,
        "samples": {"cold": len(cold), "warm": len(warm)},
        "target_met": extra <= 0.3,
    }
    lines = [
        "# A cold adapter's first token",
        "",
        f"Local engine, benchmark model (hidden 512, 4 layers, rank-8 all-linear adapters), {machine()['cpus']} CPUs, "
        "`--max-loaded-adapters 1`; one run.",
        "",
        "| adapter | TTFT p50 |",
        "|---|---|",
        f"| loaded | {result['warm_ttft_p50_s'] * 1000:.0f} ms |",
        f"| cold (evicted: loaded from its kept copy first) | {result['cold_ttft_p50_s'] * 1000:.0f} ms |",
        "",
        f"A cold adapter costs {extra * 1000:.0f} ms more (target <= 300 ms): "
        f"{'met' if result['target_met'] else 'NOT met'}.",
        "",
    ]
    write_results("cold_adapter", result, lines)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))


if __name__ == "__main__":
    main()

"""Start-up with 1,000 adapters: time to register them all, and /v1/models latency afterwards.

    .venv/bin/python benchmarks/scan_many.py [--adapters 1000]

Fills a directory with N copies of a rank-8 adapter, then times ``AdapterRegistry.scan()`` exactly
as the gateway runs it at start-up: (1) the first start, where every version is copied into the
durable store, validated (headers, shapes, finite weights, dry-run load) and loaded once by the
engine before it counts as ready; (2) a restart on the same base and engine, where each version is
found in the store by its digest and its earlier load stands as proof (no engine load). Then (3)
``lora-gateway serve --max-loaded-adapters 8`` on the directory, twice: process start to /ready
(the real local engine proves every adapter the first time), and the latency of ``GET /v1/models``
listing N+1 models. Target (issue 3): a restart with N=1000 registers in <= 5 s of scanning.

Results: ``benchmarks/results/scan_many.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, machine, prepare, start_gateway  # noqa: E402
from server.engine.base import AdapterRef, EngineHealth  # noqa: E402
from server.registry import AdapterRegistry  # noqa: E402
from server.registry.base_model import BaseModelSpec  # noqa: E402


class CountingEngine:
    """Counts loads: the first scan loads each version once, a restart none."""

    max_model_len = 0
    loads = 0

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.loads += 1

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        pass

    def health(self) -> EngineHealth:
        return EngineHealth(ready=True)


def fill(directory: Path, source: Path, count: int) -> None:
    for i in range(count):
        target = directory / f"tenant-{i:04d}"
        target.mkdir(parents=True)
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            os.link(source / file, target / file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    args = parser.parse_args()

    base, sources = prepare(args.cache)
    directory = Path(tempfile.mkdtemp(prefix="lora-gateway-scan-"))
    try:
        fill(directory, sources / "shop-a", args.adapters)
        spec = BaseModelSpec.from_pretrained(str(base))

        def scan() -> tuple[float, int, int]:
            engine = CountingEngine()
            registry = AdapterRegistry(
                engine,
                base_model_id="b",
                adapters_dir=directory,
                max_lora_rank=64,  # type: ignore[arg-type]
                max_adapter_bytes=2**31,
                max_loaded=8,
                base_spec=spec,
            )
            started = time.perf_counter()
            asyncio.run(registry.scan())
            return time.perf_counter() - started, len(registry.active_versions()), engine.loads

        first_s, registered, first_loads = scan()
        restart_s, registered_again, restart_loads = scan()

        ready_s = []
        for _ in range(2):  # the local engine proves every adapter once, then a restart trusts that
            started = time.perf_counter()
            server = start_gateway(base, directory, args.port, "--max-loaded-adapters", "8")
            ready_s.append(time.perf_counter() - started)
            try:
                url = f"http://127.0.0.1:{args.port}"
                timings = []
                for _ in range(50):
                    t = time.perf_counter()
                    count = len(httpx.get(f"{url}/v1/models").json()["data"])
                    timings.append(time.perf_counter() - t)
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    timings.sort()
    summary = {
        "benchmark": "scan_many",
        "adapters": args.adapters,
        "first_start": {"scan_s": first_s, "registered": registered, "engine_loads": first_loads},
        "restart": {"scan_s": restart_s, "registered": registered_again, "engine_loads": restart_loads},
        "process_start_to_ready_s": {"first": ready_s[0], "restart": ready_s[1]},
        "models_listed": count,
        "v1_models_ms": {
            "p50": 1000 * statistics.median(timings),
            "p99": 1000 * timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))],
        },
        "targets": {"restart_scan_s": 5.0},
        "targets_met": {"restart_scan": restart_s <= 5.0 and registered_again == args.adapters},
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scan_many.json").write_text(json.dumps(summary, indent=2))
    (RESULTS / "scan_many.md").write_text(
        f"# Start-up with {args.adapters} adapters\n\n"
        f"CPU ({machine()['cpus']} cores), offline benchmark base (hidden 512, 4 layers), rank-8 adapters.\n\n"
        "| measure | value |\n|---|---|\n"
        f"| first start: registry scan, {registered} ready (copied, validated, "
        f"dry-run, loaded once each) | {first_s:.2f} s, {first_loads} engine loads |\n"
        f"| restart on the same base and engine: registry scan, {registered_again} "
        f"ready | {restart_s:.2f} s (target <= 5 s), {restart_loads} engine loads |\n"
        "| `lora-gateway serve` process start to /ready: first / restart "
        f"(includes loading the base) | {ready_s[0]:.2f} / {ready_s[1]:.2f} s |\n"
        f"| GET /v1/models with {count} models, p50 / p99 | "
        f"{summary['v1_models_ms']['p50']:.1f} / {summary['v1_models_ms']['p99']:.1f} ms |\n"
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

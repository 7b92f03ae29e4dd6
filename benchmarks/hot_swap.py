"""Publish-to-servable latency, and failed requests while adapters are swapped under load.

    .venv/bin/python benchmarks/hot_swap.py [--publishes 24] [--clients 4]

Starts ``lora-gateway serve`` (local engine, the offline benchmark model) on a fresh adapters
directory, keeps ``--clients`` streaming clients busy on ``shop-a`` and the base model, and
publishes adapters with ``server.registry.publish.publish_adapter`` (what ``lora-gateway adapters
publish`` does): half new names, half new versions of ``shop-a``, which the clients are using.
For each publish it measures the time from the start of the copy until the new adapter (or the new
version) answers a request. Target (issue 3): p99 <= 1 s; zero failed requests. Then again with
``--busy`` CPU-bound processes beside it (a busy machine): the publish must degrade in
proportion to the CPU left (issue 38), not queue behind the batch. Both in one run.

Results: ``benchmarks/results/hot_swap.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ADAPTERS, RESULTS, ROOT, machine, prepare, start_gateway  # noqa: E402
from server.registry.publish import publish_adapter  # noqa: E402

ADMIN = {"Authorization": "Bearer bench-admin"}
ASK = [{"role": "user", "content": "Where is my order?"}]


class BackgroundLoad:
    """Streaming clients in threads; every non-200 or broken stream is a failure."""

    def __init__(self, url: str, models: list[str], clients: int) -> None:
        self.url, self.models = url, models
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _loop(self, index: int) -> None:
        body = {"model": self.models[index % len(self.models)], "messages": ASK, "max_tokens": 32, "stream": True}
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    with http.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
                        text = "".join(response.iter_text())
                    if response.status_code == 200 and text.endswith("data: [DONE]\n\n") and '"error"' not in text:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.errors.append(f"{response.status_code}: {text[-200:]}")
                except httpx.HTTPError as exc:
                    self.failed += 1
                    self.errors.append(repr(exc))


def active_version(url: str, name: str) -> int | None:
    """The engine id of the version serving ``name``: new for every swap (version numbers are not:
    files identical to a kept version are that version again)."""
    for adapter in httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]:
        if adapter["name"] == name:
            return adapter["adapter_id"]
    return None


def time_until_servable(url: str, directory: Path, source: Path, name: str, deadline_s: float = 30.0) -> float:
    before = active_version(url, name) or 0
    started = time.perf_counter()
    publish_adapter(source, name, directory)
    while time.perf_counter() - started < deadline_s:
        if (active_version(url, name) or 0) > before:
            reply = httpx.post(f"{url}/v1/chat/completions", json={"model": name, "messages": ASK, "max_tokens": 1})
            if reply.status_code == 200:
                return time.perf_counter() - started
        time.sleep(0.005)
    raise SystemExit(f"{name} not servable after {deadline_s}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def burn() -> None:
    """A process that wants a whole core: another tenant of a busy machine."""
    while True:
        pass


def publish_phase(
    url: str, directory: Path, sources: Path, publishes: int, clients: int, tag: str
) -> tuple[list[float], list[float], BackgroundLoad]:
    """``publishes`` publishes (half new names, half new versions of ``shop-a``, which the clients
    use), each timed until it answers, while ``clients`` streaming clients run."""
    new_names, new_versions = [], []
    with BackgroundLoad(url, ["shop-a", "bench-base"], clients) as load:
        time.sleep(1.0)
        for i in range(publishes):
            source = sources / ADAPTERS[i % len(ADAPTERS)]
            if i % 2 == 0:
                new_names.append(time_until_servable(url, directory, source, f"{tag}-{i}"))
            else:
                new_versions.append(time_until_servable(url, directory, source, "shop-a"))
            time.sleep(0.1)
        time.sleep(1.0)
    return new_names, new_versions, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--publishes", type=int, default=24)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="CPU-bound processes of the busy phase")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    args = parser.parse_args()

    base, sources = prepare(args.cache)
    directory = Path(tempfile.mkdtemp(prefix="lora-gateway-hotswap-"))
    publish_adapter(sources / "shop-a", "shop-a", directory)
    server = start_gateway(base, directory, args.port, "--admin-key", "bench-admin")
    url = f"http://127.0.0.1:{args.port}"
    hogs: list[multiprocessing.Process] = []
    try:
        idle = publish_phase(url, directory, sources, args.publishes, args.clients, "idle")
        hogs = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.busy)]
        for hog in hogs:
            hog.start()
        busy = publish_phase(url, directory, sources, args.publishes, args.clients, "busy")
    finally:
        for hog in hogs:
            hog.terminate()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)

    def stats(phase: tuple[list[float], list[float], BackgroundLoad]) -> dict[str, Any]:
        names, versions, load = phase
        latencies = names + versions
        return {
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies),
            "new_name_p50": statistics.median(names),
            "new_version_p50": statistics.median(versions),
            "publishes": len(latencies),
            "background_ok": load.ok,
            "background_failed": load.failed,
            "errors": load.errors[:5],
        }

    quiet, loaded = stats(idle), stats(busy)
    cores = os.cpu_count() or 1
    share = cores / (cores + args.busy)  # what is left of the machine, roughly, for the gateway
    summary = {
        "benchmark": "hot_swap",
        "background_clients": args.clients,
        "busy_processes": args.busy,
        "publish_to_servable_s": quiet,
        "busy_publish_to_servable_s": loaded,
        "busy_over_idle": {"p50": loaded["p50"] / quiet["p50"], "p99": loaded["p99"] / quiet["p99"]},
        "cpu_share_left": share,
        "targets": {"p99_s": 1.0, "failed_requests": 0, "busy_p50_over_idle_at_most": 1.5 / share},
        "targets_met": {
            "p99": quiet["p99"] <= 1.0,
            "no_failures": quiet["background_failed"] + loaded["background_failed"] == 0,
            "busy_in_proportion": loaded["p50"] / quiet["p50"] <= 1.5 / share,
        },
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hot_swap.json").write_text(json.dumps(summary, indent=2))
    ratio = summary["busy_over_idle"]
    (RESULTS / "hot_swap.md").write_text(
        "# Hot-swap: publish to servable\n\n"
        "Local engine, offline benchmark model (hidden 512, 4 "
        f"layers), rank-8 adapters, CPU ({cores} cores). "
        f"{quiet['publishes']} publishes per phase (half new names, half new versions of an adapter in use) "
        f"while {args.clients} streaming clients ran; then the same with {args.busy} CPU-bound processes "
        f"beside the gateway (about {share:.0%} of the machine left to it). One run.\n\n"
        "| publish to servable (s) | quiet | busy | busy / quiet |\n|---|---|---|---|\n"
        f"| p50 | {quiet['p50']:.3f} | {loaded['p50']:.3f} | {ratio['p50']:.2f}x |\n"
        f"| p99 | {quiet['p99']:.3f} | {loaded['p99']:.3f} | {ratio['p99']:.2f}x |\n"
        f"| max | {quiet['max']:.3f} | {loaded['max']:.3f} | |\n"
        f"| p50, new name | {quiet['new_name_p50']:.3f} | {loaded['new_name_p50']:.3f} | |\n"
        f"| p50, new version | {quiet['new_version_p50']:.3f} | {loaded['new_version_p50']:.3f} | |\n\n"
        f"Background requests: {quiet['background_ok'] + loaded['background_ok']} ok, "
        f"**{quiet['background_failed'] + loaded['background_failed']} failed**. Targets: p99 <= 1 s quiet, "
        f"no failures, busy p50 within 1.5x of the quiet one scaled by the CPU share left "
        f"(<= {1.5 / share:.1f}x).\n"
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""What the gateway adds to a request: its HTTP path beside a bare upstream, and beside LiteLLM.

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 2000] [--rounds 16] [--litellm /path/to/litellm]

Starts ``upstream_standin.py`` (a FastAPI app answering a fixed text at once), a gateway with
``--engine remote`` in front of it, ``bare_proxy.py`` in front of it (the floor: a pass-through
proxy on the same Python stack doing none of a gateway's work), a gateway on the embedded
engine's HTTP path with an engine that answers instantly (``standin.py``), and, given
``--litellm`` (the ``litellm`` command of a LiteLLM proxy installed in its own venv; nothing is
installed into ours), LiteLLM's proxy in front of the same upstream. Each is driven by
``loadgen.py`` at concurrency 1 and 16, streaming and not, with a warm-up excluded; each cell's
requests are sent in ``--rounds`` turns, every target one share per turn, so a slow spell of the
shared machine hits every target alike rather than whichever was being measured. Each figure a
target bounds gets an interval from resampling whole turns (``turns.py``), and the target a
verdict from it: met, missed, or unsettled by this run. The CPU time each target's own process
spends per request is read from ``/proc`` around its turns: steadier than latency on a shared host,
and it tells a proxy's own work from its upstream's. Then the gateways' resident memory is read
before and after ``--leak-requests`` more requests. All processes share this machine's cores, so
only ratios taken in one run mean anything. Results: ``benchmarks/results/gateway_overhead.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, free_port, machine, wait_ready  # noqa: E402
from benchmarks.loadgen import RequestResult, run, send, summarize  # noqa: E402
from benchmarks.turns import quantile_difference, throughput_ratio, verdict  # noqa: E402
from server.offline_model import TinyModelSpec, build_tiny_model, is_built  # noqa: E402
from server.stats import CONFIDENCE, Interval  # noqa: E402

MODEL = "bench-base"
KEY = "sk-bench-overhead-0123456789abcdef"  # every target checks it (the stand-in upstream ignores it)
HERE = Path(__file__).resolve().parent


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Targets:
    """The processes under test, each by name: its base URL and its process."""

    def __init__(self, work: Path, litellm: str | None) -> None:
        self.work = work
        self.litellm = litellm
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start(self) -> None:
        base = self.work / "base"
        if not is_built(base, TinyModelSpec()):
            build_tiny_model(base)
        upstream = free_port()
        self._spawn(
            "direct",
            [sys.executable, str(HERE / "upstream_standin.py"), "--port", str(upstream), "--model", MODEL],
            upstream,
            "/v1/models",
        )
        common = ["--model", str(base), "--served-model-name", MODEL, "--log-level", "warning", "--api-key", KEY]
        port = free_port()
        self._spawn(
            "gateway-remote",
            [sys.executable, "-m", "server", "serve", "--engine", "remote", "--upstream", self.urls["direct"]]
            + [*common, "--adapters-dir", str(self.work / "adapters-remote"), "--port", str(port)],
            port,
            "/ready",
        )
        port = free_port()
        self._spawn(
            "bare-proxy",
            [sys.executable, str(HERE / "bare_proxy.py"), "--upstream", self.urls["direct"], "--port", str(port)],
            port,
            "/ready",
        )
        port = free_port()
        self._spawn(
            "gateway-standin",
            [sys.executable, str(HERE / "standin.py"), *common]
            + ["--adapters-dir", str(self.work / "adapters-standin"), "--port", str(port)],
            port,
            "/ready",
        )
        if self.litellm:
            config = self.work / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                f"  - model_name: {MODEL}\n"
                "    litellm_params:\n"
                f"      model: openai/{MODEL}\n"
                f"      api_base: {self.urls['direct']}/v1\n"
                "      api_key: none\n"
                "litellm_settings:\n  telemetry: false\n"
                f"general_settings:\n  master_key: {KEY}\n"
            )
            port = free_port()
            self._spawn(
                "litellm",
                [self.litellm, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
                port,
                "/health/liveliness",
            )

    def _spawn(self, name: str, command: list[str], port: int, probe: str) -> None:
        environment = {**os.environ, "LITELLM_LOG": "ERROR", "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.processes[name] = process
        self.urls[name] = f"http://127.0.0.1:{port}"
        wait_ready(self.urls[name] + probe, process)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Turns:
    """One target's requests in one cell, turn by turn: what ``turns.py`` resamples."""

    latencies_ms: list[list[float]] = field(default_factory=list)  # each turn's: to a first token, streamed
    sent: list[tuple[int, float]] = field(default_factory=list)  # each turn's requests and seconds
    cpu_s: float = 0.0  # the target's own process, over all its turns


def measure(
    urls: dict[str, str],
    pids: dict[str, int],
    requests: int,
    warmup: int,
    concurrency: int,
    stream: bool,
    rounds: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, Turns]]:
    """One cell for every target: a warm-up each, then ``rounds`` turns in which each target gets
    its share of ``requests`` in turn; summarized per target over all its turns, and kept turn by
    turn (with the CPU time the target's own process spent on them)."""
    for url in urls.values():
        asyncio.run(run(url, [MODEL], warmup, concurrency, 16, KEY, stream=stream))
    results: dict[str, list[RequestResult]] = {name: [] for name in urls}
    turns = {name: Turns() for name in urls}
    for turn in range(rounds):
        share = requests // rounds + (1 if turn < requests % rounds else 0)
        for name, url in urls.items():
            cpu = cpu_seconds(pids[name])
            sent, duration = asyncio.run(send(url, [MODEL], share, concurrency, 16, KEY, stream=stream))
            turns[name].cpu_s += cpu_seconds(pids[name]) - cpu
            failed = [r for r in sent if not r.ok]
            if failed:
                errors = sorted({r.error for r in failed if r.error})[:5]
                raise SystemExit(f"{name}: {len(failed)} requests failed: {errors}")
            results[name] += sent
            turns[name].latencies_ms.append([1000 * (r.ttft if stream else r.e2e) for r in sent])
            turns[name].sent.append((len(sent), duration))
    summaries = {
        name: summarize(results[name], sum(d for _, d in turns[name].sent), [MODEL], concurrency, 16, stream)
        for name in urls
    }
    return summaries, turns


def leak_check(targets: Targets, names: list[str], requests: int) -> dict[str, dict[str, float]]:
    """Resident memory of each gateway after a warm-up, and after ``requests`` more (half streamed)."""
    found = {}
    for name in names:
        url, pid = targets.urls[name], targets.processes[name].pid
        warmup = min(2000, max(requests // 10, 1))  # caches, pools and allocator arenas filled first
        asyncio.run(run(url, [MODEL], warmup, 16, 16, KEY, stream=True))
        asyncio.run(run(url, [MODEL], warmup, 16, 16, KEY, stream=False))
        before = rss_bytes(pid)
        for stream in (True, False):
            done = asyncio.run(run(url, [MODEL], requests // 2, 16, 16, KEY, stream=stream))
            if done["failed"]:
                raise SystemExit(f"{name}: {done['failed']} requests failed in the memory run: {done['errors']}")
        after = rss_bytes(pid)
        found[name] = {"rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20, "growth": after / before - 1}
        print(f"  {name}: RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB after {requests} requests")
    return found


# Issue 38's targets for the remote gateway: added latency at concurrency 1 (plain, and to a
# stream's first token), and throughput beside the bare upstream at concurrency 16.
TARGETS = {"added_p50_ms": 0.5, "added_p99_ms": 3.0, "c16_vs_direct": 0.9}
# Each figure a target bounds: the target, and whether the figure must be at most it (else at least).
BOUNDED = {
    "added_p50_ms_plain_c1": (TARGETS["added_p50_ms"], True),
    "added_ttft_p50_ms_stream_c1": (TARGETS["added_p50_ms"], True),
    "added_p99_ms_plain_c1": (TARGETS["added_p99_ms"], True),
    "remote_vs_direct_rps_plain_c16": (TARGETS["c16_vs_direct"], False),
    "remote_vs_direct_rps_stream_c16": (TARGETS["c16_vs_direct"], False),
}


def targets_met(r: dict[str, float]) -> dict[str, bool]:
    """By this run's point estimates alone (``verdicts`` asks the intervals)."""
    return {key: r[key] <= target if at_most else r[key] >= target for key, (target, at_most) in BOUNDED.items()}


def intervals(turns: dict[str, dict[str, Turns]]) -> dict[str, Interval]:
    """The bounded figures, and the gateway's own share beside the floor, each with its interval
    from resampling the run's turns (``turns.py``); the estimates are the pooled figures
    ``ratios`` computes."""
    remote = "gateway-remote"
    # figure: (cell, the target it is measured against, quantile)
    differences = {
        "added_p50_ms_plain_c1": ("plain-c1", "direct", 0.5),
        "added_p99_ms_plain_c1": ("plain-c1", "direct", 0.99),
        "added_ttft_p50_ms_stream_c1": ("stream-c1", "direct", 0.5),
        "own_p50_ms_plain_c1": ("plain-c1", "bare-proxy", 0.5),
        "own_ttft_p50_ms_stream_c1": ("stream-c1", "bare-proxy", 0.5),
    }
    out = {
        key: quantile_difference(turns[cell][remote].latencies_ms, turns[cell][baseline].latencies_ms, q)
        for key, (cell, baseline, q) in differences.items()
        if baseline in turns[cell]
    }
    for mode in ("plain", "stream"):
        cell = turns[f"{mode}-c16"]
        out[f"remote_vs_direct_rps_{mode}_c16"] = throughput_ratio(cell[remote].sent, cell["direct"].sent)
    return out


def verdicts(found: dict[str, Interval]) -> dict[str, str]:
    """Each target met, missed, or unsettled (its interval straddles it) in this run."""
    return {key: verdict(found[key], target, at_most=at_most).value for key, (target, at_most) in BOUNDED.items()}


def cpu_per_request(turns: dict[str, dict[str, Turns]], requests: int) -> dict[str, dict[str, float]]:
    """CPU milliseconds each target's own process spent per request, by cell: for a proxy, its own
    work without its upstream's (which is the same for all of them)."""
    names = next(iter(turns.values()))
    return {name: {cell: 1000 * found[name].cpu_s / requests for cell, found in turns.items()} for name in names}


def ratios(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode in ("plain", "stream"):
        key = f"{mode}-c16"
        direct, remote = results["direct"][key], results["gateway-remote"][key]
        out[f"remote_vs_direct_rps_{mode}_c16"] = remote["request_throughput"] / direct["request_throughput"]
        if "litellm" in results:
            out[f"remote_vs_litellm_rps_{mode}_c16"] = (
                remote["request_throughput"] / results["litellm"][key]["request_throughput"]
            )
        if "bare-proxy" in results:
            floor = results["bare-proxy"][key]["request_throughput"]
            out[f"floor_vs_direct_rps_{mode}_c16"] = floor / direct["request_throughput"]
    one_direct, one_remote = results["direct"]["plain-c1"], results["gateway-remote"]["plain-c1"]
    out["added_p50_ms_plain_c1"] = one_remote["median_e2el_ms"] - one_direct["median_e2el_ms"]
    out["added_p99_ms_plain_c1"] = one_remote["p99_e2el_ms"] - one_direct["p99_e2el_ms"]
    out["added_ttft_p50_ms_stream_c1"] = (
        results["gateway-remote"]["stream-c1"]["median_ttft_ms"] - results["direct"]["stream-c1"]["median_ttft_ms"]
    )
    if "bare-proxy" in results:  # the floor: what a pass-through on the same stack adds
        floor = results["bare-proxy"]
        out["floor_added_p50_ms_plain_c1"] = floor["plain-c1"]["median_e2el_ms"] - one_direct["median_e2el_ms"]
        out["floor_added_ttft_p50_ms_stream_c1"] = (
            floor["stream-c1"]["median_ttft_ms"] - results["direct"]["stream-c1"]["median_ttft_ms"]
        )
        # The gateway's own share: what it adds beyond the floor. Steadier from run to run than
        # what either adds, which moves with the shared host's speed.
        out["own_p50_ms_plain_c1"] = out["added_p50_ms_plain_c1"] - out["floor_added_p50_ms_plain_c1"]
        out["own_ttft_p50_ms_stream_c1"] = out["added_ttft_p50_ms_stream_c1"] - out["floor_added_ttft_p50_ms_stream_c1"]
    return out


def report(summary: dict[str, Any]) -> str:
    results, r = summary["results"], summary["ratios"]
    lines = [
        "# Gateway overhead",
        "",
        f"One run, {summary['machine']['cpus']} cores, every process on this machine (loopback); "
        f"{summary['requests']} requests per cell after {summary['warmup']} of warm-up, sent in "
        f"{summary.get('rounds', 1)} turns (each target one share per turn), 16 output tokens, "
        "one model. `direct`: the upstream stand-in alone; `gateway-remote`: `--engine remote` in front of it; "
        "`bare-proxy`: the floor, a pass-through on the same stack (uvicorn, Starlette, aiohttp) doing none of "
        "a gateway's work; `gateway-standin`: the embedded engine's HTTP path with an engine that answers at once"
        + (
            f"; `litellm`: LiteLLM {summary['litellm_version']}'s proxy in front of the same upstream."
            if "litellm" in results
            else "."
        ),
        "",
        "| target | req/s plain c1 | req/s plain c16 | req/s stream c1 | req/s stream c16 "
        "| p50 / p99 ms plain c1 | TTFT p50 ms stream c1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cells in results.items():
        rps = {cell: values["request_throughput"] for cell, values in cells.items()}
        lines.append(
            f"| {name} | {rps['plain-c1']:.0f} | {rps['plain-c16']:.0f} "
            f"| {rps['stream-c1']:.0f} | {rps['stream-c16']:.0f} "
            f"| {cells['plain-c1']['median_e2el_ms']:.2f} / {cells['plain-c1']['p99_e2el_ms']:.2f} "
            f"| {cells['stream-c1']['median_ttft_ms']:.2f} |"
        )
    lines += [
        "",
        f"- Remote gateway vs direct upstream at concurrency 16: **{r['remote_vs_direct_rps_plain_c16']:.2f}×** "
        f"plain, **{r['remote_vs_direct_rps_stream_c16']:.2f}×** streaming (target ≥ {TARGETS['c16_vs_direct']}×)"
        + (
            f"; the bare pass-through reaches {r['floor_vs_direct_rps_plain_c16']:.2f}× and "
            f"{r['floor_vs_direct_rps_stream_c16']:.2f}× (all processes share the machine's cores)."
            if "floor_vs_direct_rps_plain_c16" in r
            else "."
        ),
    ]
    if "remote_vs_litellm_rps_plain_c16" in r:
        lines.append(
            f"- Remote gateway vs LiteLLM's proxy at concurrency 16: **{r['remote_vs_litellm_rps_plain_c16']:.1f}×** "
            f"plain, **{r['remote_vs_litellm_rps_stream_c16']:.1f}×** streaming (target ≥ 5×)."
        )
    lines.append(
        f"- Added at concurrency 1, plain: **{r['added_p50_ms_plain_c1']:.2f} ms p50**, "
        f"**{r['added_p99_ms_plain_c1']:.2f} ms p99** (targets ≤ {TARGETS['added_p50_ms']} and "
        f"≤ {TARGETS['added_p99_ms']} ms); first token of a stream: "
        f"**{r['added_ttft_p50_ms_stream_c1']:.2f} ms p50** (target ≤ {TARGETS['added_p50_ms']} ms)."
    )
    if "floor_added_p50_ms_plain_c1" in r:
        lines.append(
            f"- The floor, a pass-through proxy on the same stack, adds **{r['floor_added_p50_ms_plain_c1']:.2f} ms "
            f"p50** plain and **{r['floor_added_ttft_p50_ms_stream_c1']:.2f} ms** to the first token at concurrency 1: "
            "the rest of the gateway's figure is its own work (validation, keys, routing, metrics): "
            f"**{r['own_p50_ms_plain_c1']:.2f} ms** plain and **{r['own_ttft_p50_ms_stream_c1']:.2f} ms** to the "
            "first token in this run."
        )
    lines += _interval_lines(summary)
    for name, memory in summary.get("memory", {}).items():
        lines.append(
            f"- {name}: resident memory {memory['rss_before_mb']:.1f} → {memory['rss_after_mb']:.1f} MiB after "
            f"{summary['leak_requests']:,} more requests ({100 * memory['growth']:+.1f} %, target ≤ 5 %)."
        )
    return "\n".join(lines) + "\n"


# How the report names each figure that has an interval, and its unit.
_FIGURES = {
    "added_p50_ms_plain_c1": ("added at c1, plain, p50", "ms"),
    "added_p99_ms_plain_c1": ("added at c1, plain, p99", "ms"),
    "added_ttft_p50_ms_stream_c1": ("added at c1 to a first token, p50", "ms"),
    "remote_vs_direct_rps_plain_c16": ("throughput at c16 beside the upstream, plain", "×"),
    "remote_vs_direct_rps_stream_c16": ("throughput at c16 beside the upstream, streaming", "×"),
    "own_p50_ms_plain_c1": ("beyond the floor at c1, plain, p50", "ms"),
    "own_ttft_p50_ms_stream_c1": ("beyond the floor at c1 to a first token, p50", "ms"),
}


def _interval_lines(summary: dict[str, Any]) -> list[str]:
    """The figures with their intervals and verdicts, and each process's CPU time per request."""
    if "intervals" not in summary:
        return []
    found, verdict_of = summary["intervals"], summary.get("verdicts", {})
    lines = [
        "",
        f"Each figure pooled over the run's {summary['rounds']} turns, with its "
        f"{100 * CONFIDENCE:.0f} % interval from resampling whole turns (`benchmarks/turns.py`): a target "
        "is met when the whole interval is on its side, missed when the whole interval is on the wrong side, "
        "unsettled when this run cannot tell.",
        "",
        "| figure | this run [interval] | target | verdict |",
        "|---|---|---|---|",
    ]
    for key, (label, unit) in _FIGURES.items():
        if key not in found:
            continue
        interval = found[key]
        bound = BOUNDED.get(key)
        target = f"{'≤' if bound[1] else '≥'} {bound[0]} {unit}" if bound else "—"
        lines.append(
            f"| {label} | {interval['estimate']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}] {unit} "
            f"| {target} | {verdict_of.get(key, '—')} |"
        )
    cpu = summary.get("cpu_ms_per_request", {})
    if cpu:
        cells = list(next(iter(cpu.values())))
        lines += [
            "",
            "CPU time each process spent per request (ms; a proxy's own, not its upstream's):",
            "",
            "| target | " + " | ".join(cells) + " |",
            "|---|" + "---|" * len(cells),
        ]
        lines += [
            f"| {name} | " + " | ".join(f"{by_cell[c]:.3f}" for c in cells) + " |" for name, by_cell in cpu.items()
        ]
    return lines


def litellm_version(command: str) -> str:
    python = Path(command).parent / "python"
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="Measured requests per cell.")
    parser.add_argument("--warmup", type=int, default=200, help="Requests sent first, not measured.")
    parser.add_argument("--rounds", type=int, default=16, help="Turns each cell's requests are sent in.")
    parser.add_argument("--leak-requests", type=int, default=100_000, help="0 skips the memory check.")
    parser.add_argument("--litellm", default=None, help="The `litellm` command of a separately installed proxy.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Where the JSON and markdown go.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overhead-") as scratch:
        targets = Targets(Path(scratch), args.litellm)
        try:
            targets.start()
            results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in targets.urls}
            turns: dict[str, dict[str, Turns]] = {}
            pids = {name: process.pid for name, process in targets.processes.items()}
            for stream in (False, True):
                for concurrency in (1, 16):
                    cell = f"{'stream' if stream else 'plain'}-c{concurrency}"
                    found, turns[cell] = measure(
                        targets.urls, pids, args.requests, args.warmup, concurrency, stream, args.rounds
                    )
                    for name, pooled_cell in found.items():
                        results[name][cell] = pooled_cell
                        print(f"  {name:16} {cell:10} {pooled_cell['request_throughput']:8.0f} req/s")
            memory = {}
            if args.leak_requests:
                memory = leak_check(targets, ["gateway-remote", "gateway-standin"], args.leak_requests)
        finally:
            targets.stop()
    summary: dict[str, Any] = {
        "benchmark": "gateway_overhead",
        "machine": machine(),
        "requests": args.requests,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "leak_requests": args.leak_requests,
        "results": results,
        "ratios": ratios(results),
        "memory": memory,
        "cpu_ms_per_request": cpu_per_request(turns, args.requests),
    }
    found_intervals = intervals(turns)
    summary["intervals"] = {key: interval.summary() for key, interval in found_intervals.items()}
    summary["targets"], summary["targets_met"] = TARGETS, targets_met(summary["ratios"])
    summary["verdicts"] = verdicts(found_intervals)
    if args.litellm:
        summary["litellm_version"] = litellm_version(args.litellm)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_overhead.json").write_text(json.dumps(summary, indent=2))
    text = report(summary)
    (args.out / "gateway_overhead.md").write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main()

"""``benchmarks/gateway_overhead.py`` runs end to end with tiny counts (nothing here is timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_benchmark_runs_and_writes_its_ratios(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gateway_overhead.py", "--requests", "12", "--warmup", "2", "--rounds", "5"]
        + ["--leak-requests", "40", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "gateway_overhead.json").read_text())
    assert summary["rounds"] == 5  # 12 requests in five turns: shares of 3, 3, 2, 2, 2, added up below
    assert set(summary["results"]) == {"direct", "gateway-remote", "bare-proxy", "gateway-standin"}  # no LiteLLM
    for cells in summary["results"].values():
        assert set(cells) == {"plain-c1", "plain-c16", "stream-c1", "stream-c16"}
        assert all(cell["completed"] == 12 and cell["failed"] == 0 for cell in cells.values())
    # Every answer came through the gateways with its usage: 7 completion tokens from the stand-in.
    remote = summary["results"]["gateway-remote"]
    assert remote["plain-c16"]["total_output_tokens"] == remote["stream-c16"]["total_output_tokens"] == 12 * 7
    floor = summary["results"]["bare-proxy"]  # the pass-through relays the upstream's answers untouched
    assert floor["plain-c1"]["total_output_tokens"] == floor["stream-c1"]["total_output_tokens"] == 12 * 7
    assert {"remote_vs_direct_rps_plain_c16", "added_p50_ms_plain_c1", "floor_added_p50_ms_plain_c1"} <= set(
        summary["ratios"]
    )
    assert summary["targets"]["added_p50_ms"] == 0.5 and summary["targets"]["c16_vs_direct"] == 0.9  # issue 38's
    assert set(summary["targets_met"]) == {
        "added_p50_ms_plain_c1",
        "added_ttft_p50_ms_stream_c1",
        "added_p99_ms_plain_c1",
        "remote_vs_direct_rps_plain_c16",
        "remote_vs_direct_rps_stream_c16",
    }
    assert {"floor_vs_direct_rps_plain_c16", "floor_vs_direct_rps_stream_c16"} <= set(summary["ratios"])
    r = summary["ratios"]  # the gateway's own share: what it adds beyond the floor
    assert r["own_p50_ms_plain_c1"] == r["added_p50_ms_plain_c1"] - r["floor_added_p50_ms_plain_c1"]
    # Each bounded figure has its interval from resampling the five turns, and a verdict from it.
    assert set(summary["verdicts"]) == set(summary["targets_met"])
    assert set(summary["verdicts"].values()) <= {"met", "missed", "unsettled"}
    for key, interval in summary["intervals"].items():
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert interval["estimate"] == pytest.approx(r[key], abs=1e-3)  # the same pooled figure as the ratios'
    for key, met in summary["targets_met"].items():  # a verdict never contradicts its own estimate
        assert summary["verdicts"][key] == "unsettled" or (summary["verdicts"][key] == "met") == met
    cpu = summary["cpu_ms_per_request"]  # every target's own process, every cell
    assert set(cpu) == set(summary["results"]) and all(set(cells) == set(remote) for cells in cpu.values())
    assert all(value >= 0 for cells in cpu.values() for value in cells.values())
    assert set(summary["memory"]) == {"gateway-remote", "gateway-standin"}
    text = (tmp_path / "gateway_overhead.md").read_text()
    assert "Remote gateway vs direct upstream" in text
    assert "| added at c1 to a first token, p50 |" in text and "CPU time each process spent" in text

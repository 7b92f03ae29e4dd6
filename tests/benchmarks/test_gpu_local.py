"""``benchmarks/gpu_local.py``, the script a session lent a GPU runs first: its whole path on the CPU
with a tiny model (``--smoke``), so that minutes of a GPU are never spent finding it broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_every_step_on_a_tiny_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_local.py", "--smoke", "--device", "cpu", "--no-peer"]
        + ["--requests", "16", "--tokens", "4", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_local.json").read_text())
    assert result["smoke"] is True and result["device"] == "cpu"
    engine = result["engine"]
    for load in ("base", "1", "4", "16"):  # the base alone, then 1, 4 and 16 distinct adapters
        assert engine[load]["completed"] == 16 and engine[load]["output_tokens"] > 0, (load, engine[load])
    assert engine["peak_memory_gib"] > 0
    assert result["trainer"]["steps"] == 2, result["trainer"]  # the trainer ran, not its error
    assert result["peer"] == {"error": "left out (--no-peer)"}
    report = (tmp_path / "gpu_local.md").read_text()
    assert "| 16 adapters |" in report and "--smoke" in report


def test_asked_for_cuda_without_it_says_so_in_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the real thing")
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_local.py"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu_local: no CUDA device here; run it on a GPU machine (or --smoke --device cpu)"
    ]

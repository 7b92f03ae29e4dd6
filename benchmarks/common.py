"""Shared by the benchmarks: the offline benchmark model, its adapters, and a gateway subprocess."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from server.offline_model import TinyModelSpec, build_tiny_model, is_built  # noqa: E402

# Big enough for compute to dominate on a CPU (the issue suggests hidden 512, 4 layers).
SPEC = TinyModelSpec(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=2048,
)
ADAPTERS = ["shop-a", "shop-b", "shop-c", "shop-d"]
MANY_ADAPTERS = [f"shop-{chr(ord('a') + i)}" for i in range(16)]  # the first four are ADAPTERS
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare(cache: Path, count: int = 4) -> tuple[Path, Path]:
    """Build (once) the benchmark base model and ``count`` distinct rank-8 all-linear adapters
    (``MANY_ADAPTERS[:count]``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = cache / "base"
    if not is_built(base, SPEC):
        build_tiny_model(base, SPEC)
    adapters = cache / ("adapters" if count == 4 else f"adapters-{count}")  # others' directories stay as they were
    for i, name in enumerate(MANY_ADAPTERS[:count]):
        if (adapters / name / "adapter_model.safetensors").exists():
            continue
        torch.manual_seed(i)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)
        )
        # peft initialises B to zero; small noise makes each adapter a distinct, real computation.
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 1e-3)
        model.save_pretrained(adapters / name)
    return base, adapters


def start_gateway(base: Path, adapters: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--model",
        str(base),
        "--served-model-name",
        "bench-base",
        "--adapters-dir",
        str(adapters),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", process)
    except SystemExit:
        process.terminate()
        raise
    return process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Poll ``url`` until it answers 200; ``SystemExit`` if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll ``condition`` (a gateway not answering yet counts as false); ``SystemExit`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise SystemExit("timed out waiting for the gateway")


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks since boot from ``/proc/stat`` (Linux), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    ticks = [int(field) for field in fields]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of this virtual machine's CPU time its host gave to other guests between two
    ``cpu_ticks()``: on a shared host, latency tails follow it, whatever the code does."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def write_results(name: str, result: dict[str, Any], lines: list[str]) -> None:
    """``results/NAME.json`` (the figures) and ``results/NAME.md`` (``lines``), then the summary printed."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (RESULTS / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))

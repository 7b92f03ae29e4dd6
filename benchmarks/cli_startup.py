"""How fast the command line answers: `lora-gateway --help` and `adapters publish` of a ~70 KB adapter.

Both run as a user runs them (a fresh `lora-gateway` process each time) on an idle machine. The
publish checks the adapter against its base (shapes from the base-spec cache the trainer and the
gateway fill, no torch import) and its weights for NaN/inf. Target (issue 10): each under 0.3 s wall.

    .venv/bin/python benchmarks/cli_startup.py [--runs 15]

Writes benchmarks/results/cli_startup.{json,md} and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, machine  # noqa: E402
from server.offline_model import build_tiny_model  # noqa: E402

TARGET_S = 0.3
CLI = str(Path(sys.executable).with_name("lora-gateway"))


def tiny_adapter(base: Path, out: Path) -> Path:
    """A real peft adapter (rank 8, all linear layers) of the default tiny model: about 70 KB."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    model.save_pretrained(out)
    return out


def timed(command: list[str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    from server.registry.base_model import BaseModelSpec

    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_model(Path(tmp) / "base")
        BaseModelSpec.from_pretrained(str(base))  # what training or serving this base leaves in the cache
        adapter = tiny_adapter(base, Path(tmp) / "adapter")
        size = (adapter / "adapter_model.safetensors").stat().st_size
        adapters_dir = Path(tmp) / "adapters"
        cases = {
            "--help": [CLI, "--help"],
            "adapters publish": [
                CLI,
                "adapters",
                "publish",
                str(adapter),
                "--name",
                "bench",
                "--adapters-dir",
                str(adapters_dir),
            ],
        }
        timed(cases["--help"], 2)  # warm the page cache, as on a machine that ran the command before
        results = {}
        for case, command in cases.items():
            seconds = timed(command, args.runs)
            results[case] = {
                "median_s": round(statistics.median(seconds), 4),
                "max_s": round(max(seconds), 4),
                "runs": args.runs,
                "under_target": statistics.median(seconds) < TARGET_S,
            }
        shutil.rmtree(adapters_dir, ignore_errors=True)

    report = {"target_s": TARGET_S, "adapter_bytes": size, "results": results, "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_startup.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# CLI start-up",
        "",
        f"Fresh `lora-gateway` processes on an idle machine ({machine()['cpus']} CPUs); "
        f"adapter weights {size} bytes; target {TARGET_S} s wall.",
        "",
        "| command | median | max | runs | under target |",
        "|---|---|---|---|---|",
    ]
    for case, r in results.items():
        lines.append(
            f"| `lora-gateway {case}` | {r['median_s']:.3f} s | {r['max_s']:.3f} "
            f"s | {r['runs']} | {'yes' if r['under_target'] else 'no'} |"
        )
    (RESULTS / "cli_startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

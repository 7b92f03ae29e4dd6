"""Multi-LoRA batching on the local engine: mixed adapters vs one adapter vs one request at a time.

    .venv/bin/python benchmarks/local_throughput.py [--num-prompts 32] [--max-tokens 64] [--rounds 3]

Builds (offline, cached under .demo/bench) a random Qwen2 model big enough for compute to dominate
(hidden 512, 4 layers) and four rank-8 all-linear LoRA adapters, starts ``lora-gateway serve`` as a
subprocess with ``--max-batch-size 16``, then runs five loads with ``benchmarks/loadgen.py``:

1. 8 concurrent requests spread round-robin over the 4 adapters,
2. 8 concurrent requests all on one adapter,
3. the same requests sent one at a time,
4. 16 concurrent requests spread over 16 distinct adapters,
5. 16 concurrent requests to the base model alone (no adapter).

Targets (issue 2): (1) >= 0.8x the output throughput of (2), and >= 3x that of (3); (issue 38):
(4) >= 0.8x (5). The gateway runs with ``--max-batch-size 16``. The five loads run in ``--rounds``
turns (each load once per turn), so a slow spell of the shared machine hits every load alike rather
than whichever ran then; each load's figures are over all its turns, and the report also gives
the ratios turn by turn, which show how far one turn can be trusted. Results go to
``benchmarks/results/local_throughput.json`` and ``.md``; the ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (  # noqa: E402
    ADAPTERS,
    MANY_ADAPTERS,
    RESULTS,
    ROOT,
    SPEC,
    machine,
    prepare,
    start_gateway,
)
from benchmarks.loadgen import RequestResult, format_summary, run, send, summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    base, adapters = prepare(args.cache, len(MANY_ADAPTERS))
    server = start_gateway(base, adapters, args.port, "--max-batch-size", "16")
    url = f"http://127.0.0.1:{args.port}"
    scenarios = {
        "mixed_4_adapters_c8": (ADAPTERS, 8),
        "single_adapter_c8": (ADAPTERS[:1], 8),
        "one_at_a_time_c1": (ADAPTERS, 1),
        "mixed_16_adapters_c16": (MANY_ADAPTERS, 16),
        "base_alone_c16": (["bench-base"], 16),
    }
    sent: dict[str, list[RequestResult]] = {name: [] for name in scenarios}
    seconds = dict.fromkeys(scenarios, 0.0)
    turns: list[dict[str, float]] = []  # output tok/s of each load, turn by turn
    try:
        asyncio.run(run(url, ADAPTERS, 8, 8, 8))  # warm-up
        asyncio.run(run(url, MANY_ADAPTERS, 16, 16, 8))  # every adapter loaded before it is timed
        for turn in range(args.rounds):
            turns.append({})
            for name, (models, concurrency) in scenarios.items():
                prompts = args.num_prompts * (2 if concurrency == 16 else 1)
                results_of_turn, duration = asyncio.run(send(url, models, prompts, concurrency, args.max_tokens))
                sent[name] += results_of_turn
                seconds[name] += duration
                turns[-1][name] = sum(r.output_tokens for r in results_of_turn if r.ok) / duration
                print(f"turn {turn + 1}: {name} {turns[-1][name]:.1f} output tok/s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    results = {
        name: summarize(sent[name], seconds[name], models, concurrency, args.max_tokens, True)
        for name, (models, concurrency) in scenarios.items()
    }
    for name, summary in results.items():
        print(format_summary(name, summary))

    def ratios_of(throughput: dict[str, float]) -> dict[str, float]:
        mixed = throughput["mixed_4_adapters_c8"]
        return {
            "mixed_vs_single_adapter": mixed / throughput["single_adapter_c8"],
            "mixed_vs_one_at_a_time": mixed / throughput["one_at_a_time_c1"],
            "mixed_16_vs_base_alone": throughput["mixed_16_adapters_c16"] / throughput["base_alone_c16"],
        }

    ratios = ratios_of({name: s["output_throughput"] for name, s in results.items()})
    per_turn = [ratios_of(turn) for turn in turns]
    targets = {"mixed_vs_single_adapter": 0.8, "mixed_vs_one_at_a_time": 3.0, "mixed_16_vs_base_alone": 0.8}
    report = {
        "benchmark": "local_throughput",
        "model": SPEC.__dict__,
        "adapters": len(MANY_ADAPTERS),
        "max_batch_size": 16,
        "machine": machine(),
        "scenarios": results,
        "rounds": args.rounds,
        "ratios": ratios,
        "ratios_per_turn": per_turn,
        "targets": targets,
        "targets_met": {k: ratios[k] >= v for k, v in targets.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local_throughput.json").write_text(json.dumps(report, indent=2))
    rows = "\n".join(
        f"| {name} | {s['concurrency']} | {s['completed']}/{s['num_prompts']} | {s['output_throughput']:.1f} | "
        f"{s['request_throughput']:.2f} | {s['median_ttft_ms']:.0f} "
        f"| {s['median_tpot_ms']:.1f} | {s['p99_e2el_ms']:.0f} |"
        for name, s in results.items()
    )
    (RESULTS / "local_throughput.md").write_text(
        "# Local engine: multi-LoRA batching throughput\n\n"
        f"Random Qwen2 (hidden {SPEC.hidden_size}, {SPEC.num_hidden_layers} layers), rank-8 all-linear adapters "
        f"(4, or 16), CPU, {os.cpu_count()} cores, `--max-batch-size 16`, {args.num_prompts} prompts x "
        f"{args.max_tokens} tokens ({2 * args.num_prompts} at concurrency 16) per turn, {args.rounds} turns "
        "(each load once per turn; figures over all turns).\n\n"
        "| scenario | concurrency | completed | output tok/s | req/s | median TTFT ms | median TPOT ms | p99 E2E ms |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"- mixed / single adapter: **{ratios['mixed_vs_single_adapter']:.2f}x** (target >= 0.8x)\n"
        f"- mixed / one at a time: **{ratios['mixed_vs_one_at_a_time']:.2f}x** (target >= 3x)\n"
        f"- 16 adapters / base alone, concurrency 16: **{ratios['mixed_16_vs_base_alone']:.2f}x** (target >= 0.8x)\n"
        + "\nTurn by turn (how far one turn's ratio can be trusted on this machine):\n\n"
        + "| ratio | "
        + " | ".join(f"turn {i + 1}" for i in range(len(per_turn)))
        + " |\n|---|"
        + "---|" * len(per_turn)
        + "\n"
        + "\n".join(f"| {key} | " + " | ".join(f"{turn[key]:.2f}x" for turn in per_turn) + " |" for key in ratios)
        + "\n"
    )
    print(json.dumps({"ratios": ratios, "targets_met": report["targets_met"]}, indent=2))


if __name__ == "__main__":
    main()

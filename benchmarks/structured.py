"""Constrained decoding's cost in a mixed batch: half the rows held to JSON schemas vs none.

    .venv/bin/python benchmarks/structured.py [--num-prompts 32] [--max-tokens 160]

Starts ``lora-gateway serve`` (local engine, the offline benchmark model of ``benchmarks/common.py``,
four adapters, ``--max-batch-size 8``) and drives it with 8 concurrent clients at temperature 1:

1. ``free``: every request unconstrained;
2. ``half_constrained``: every other request carries a ``json_schema`` response_format (four
   different schemas, so rows of one batch follow different grammars), spread over the adapters.

Every constrained answer is checked to parse and validate. Output throughput (completion tokens
per second, over the wall time of the scenario) of (2) over (1): target (issue 12) >= 0.7x. A
warm-up pass compiles each schema once first; the first compile of each is timed separately.
Results: ``benchmarks/results/structured.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ADAPTERS, RESULTS, ROOT, SPEC, machine, prepare, start_gateway  # noqa: E402

ASK = [{"role": "user", "content": "Where is my order?"}]


def schema(k: int) -> dict[str, Any]:
    """Four different schemas: enums, booleans, bounded integers and strings, an array."""
    return {
        "type": "object",
        "properties": {
            f"intent_{k}": {"enum": ["refund", "track", "other"]},
            "order_id": {"type": "string", "maxLength": 8 + k},
            "urgent": {"type": "boolean"},
            "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3},
        },
        "required": [f"intent_{k}", "order_id", "urgent", "items"],
        "additionalProperties": False,
    }


def body(i: int, constrained: bool, max_tokens: int) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model": ADAPTERS[i % len(ADAPTERS)],
        "messages": ASK,
        "temperature": 1,
        "seed": i,
        "max_tokens": max_tokens,
    }
    if constrained:
        k = (i // 2) % 4
        request["response_format"] = {"type": "json_schema", "json_schema": {"name": f"s{k}", "schema": schema(k)}}
    return request


async def scenario(url: str, n: int, concurrency: int, max_tokens: int, half: bool) -> dict[str, Any]:
    from jsonschema import Draft202012Validator

    queue = list(range(n))
    tokens, invalid, cut = 0, 0, 0
    constrained_tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, invalid, cut, constrained_tokens
        while queue:
            i = queue.pop()
            constrained = half and i % 2 == 1
            response = await http.post(f"{url}/v1/chat/completions", json=body(i, constrained, max_tokens))
            response.raise_for_status()
            data = response.json()
            tokens += data["usage"]["completion_tokens"]
            if constrained:
                constrained_tokens += data["usage"]["completion_tokens"]
                choice = data["choices"][0]
                if choice["finish_reason"] == "length":
                    cut += 1  # cut by max_tokens: not expected to parse, as OpenAI warns
                    continue
                try:
                    Draft202012Validator(schema((i // 2) % 4)).validate(json.loads(choice["message"]["content"]))
                except Exception:
                    invalid += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "completion_tokens": tokens,
        "constrained_completion_tokens": constrained_tokens,
        "output_throughput": tokens / seconds,
        "constrained_invalid": invalid,
        "constrained_cut_by_max_tokens": cut,
    }


def first_compiles(url: str) -> list[float]:
    """Seconds for the first request of each schema (compile included) with max_tokens 1."""
    times = []
    with httpx.Client(timeout=120) as http:
        for k in range(4):
            started = time.perf_counter()
            request = body(2 * k + 1, True, 1)
            request["response_format"]["json_schema"]["schema"]["properties"][f"warm_{k}"] = {"type": "boolean"}
            http.post(f"{url}/v1/chat/completions", json=request).raise_for_status()
            times.append(round(time.perf_counter() - started, 4))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--cache", type=Path, default=ROOT / ".demo" / "bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base, adapters = prepare(args.cache)
    server = start_gateway(base, adapters, args.port, "--max-batch-size", "8")
    url = f"http://127.0.0.1:{args.port}"
    try:
        compiles = first_compiles(url)
        asyncio.run(scenario(url, 16, 8, 8, half=True))  # warm-up: every schema compiled and cached
        results = {
            "free": asyncio.run(scenario(url, args.num_prompts, 8, args.max_tokens, half=False)),
            "half_constrained": asyncio.run(scenario(url, args.num_prompts, 8, args.max_tokens, half=True)),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    ratio = results["half_constrained"]["output_throughput"] / results["free"]["output_throughput"]
    report = {
        "benchmark": "structured",
        "model": SPEC.__dict__,
        "machine": machine(),
        "max_batch_size": 8,
        "first_request_seconds_per_new_schema": compiles,
        "scenarios": results,
        "ratio_half_constrained_vs_free": ratio,
        "target": 0.7,
        "target_met": ratio >= 0.7,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "structured.json").write_text(json.dumps(report, indent=2))
    rows = "\n".join(
        f"| {name} | {s['requests']} | {s['completion_tokens']} | {s['output_throughput']:.1f} | "
        f"{s['constrained_invalid']} | {s['constrained_cut_by_max_tokens']} |"
        for name, s in results.items()
    )
    (args.out / "structured.md").write_text(
        "# Structured outputs: a mixed batch, half the rows JSON-schema constrained\n\n"
        f"Random Qwen2 (hidden {SPEC.hidden_size}, {SPEC.num_hidden_layers} layers), 4 adapters, CPU, "
        f"{os.cpu_count()} cores, `--max-batch-size 8`, 8 clients, temperature 1, max_tokens {args.max_tokens}.\n\n"
        "| scenario | requests | completion tokens | output tok/s | invalid JSON | cut by max_tokens |\n"
        "|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"- half constrained / free: **{ratio:.2f}x** (target >= 0.7x)\n"
        f"- first request with a new schema (compile included, max_tokens 1): {compiles} s\n"
    )
    print(json.dumps({"ratio": ratio, "target_met": ratio >= 0.7, "first_compiles": compiles}, indent=2))


if __name__ == "__main__":
    main()

"""The prefix cache: a shared system prompt computed once, a burst of questions on it, a conversation replayed.

    .venv/bin/python benchmarks/prefix_cache.py [--requests 20] [--burst 8] [--conversations 4] [--turns 6]

Starts ``lora-gateway serve`` (local engine, the offline benchmark model: hidden 512, 4 layers)
twice, ``--prefix-cache-mb 0`` (off) and the default (on), one after the other, and asks each:

- **system prompt**: a ~1,500-token policy text as the system prompt and a short question, a
  different question each time, streamed one at a time; time to first token (client side). The
  first request of the cached gateway computes the prefix (a miss), the others reuse it.
- **burst**: ``--burst`` questions on the same policy sent at once (the cached gateway holds the
  policy by then); TTFT p50 and of the last to start.
- **multi-turn replay**: ``--conversations`` conversations at once, each resending its whole
  history plus a new question for ``--turns`` turns (as WeCom's ``history_turns`` and chat
  backends do); output tokens/s over the run and TTFT p50.
- **identity**: every answer (greedy) of the cached gateway against the uncached one's.

Target (issue 38): TTFT p50 with the cache >= 5x lower for the system-prompt case. Results:
``benchmarks/results/prefix_cache.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import free_port, machine, prepare, start_gateway, write_results  # noqa: E402

QUESTIONS = [
    "Where is my order?",
    "Can I return shoes?",
    "Do you ship abroad?",
    "How long is the warranty?",
    "Can I change the address?",
    "Is there a discount today?",
    "How do I pay by card?",
    "When do you open?",
]


def policy_text(base: Path, tokens: int) -> str:
    """A policy text of about ``tokens`` tokens under the benchmark model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    rules, text = [], ""
    while len(tokenizer.encode(text)) < tokens:
        i = len(rules)
        rules.append(
            f"Rule {i}: parcels to region {i % 17} ship within {i % 5 + 1} days; refunds take {i % 9 + 2} days."
        )
        text = " ".join(rules)
    return text


async def ask(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int]:
    """(seconds to the first token, the answer, completion tokens) of one streamed greedy request."""
    body = {
        "model": "bench-base",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first, text, tokens = None, [], 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                piece = choice["delta"].get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - started
                text.append(piece)
    return (first if first is not None else time.perf_counter() - started), "".join(text), tokens


async def system_prompt_case(url: str, policy: str, requests: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=300) as client:
        ttfts, answers = [], []
        for i in range(requests):
            question = f"{QUESTIONS[i % len(QUESTIONS)]} (ticket {i})"
            ttft, text, _ = await ask(
                client, url, [{"role": "system", "content": policy}, {"role": "user", "content": question}], 8
            )
            ttfts.append(ttft)
            answers.append(text)
    rest = ttfts[1:]
    return {
        "first_s": ttfts[0],
        "ttft_p50_s": statistics.median(rest),
        "ttft_p90_s": sorted(rest)[int(0.9 * (len(rest) - 1))],
        "answers": answers,
    }


async def burst_case(url: str, policy: str, requests: int) -> dict[str, Any]:
    """``requests`` questions on the policy sent at once (after ``system_prompt_case``, so the cached
    gateway holds the policy): a bot's busy moment. Admission counts only what a prefill computes,
    so the cached gateway admits the burst in a step or two rather than one request per step."""
    async with httpx.AsyncClient(timeout=300) as client:
        asks = [
            [
                {"role": "system", "content": policy},
                {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"},
            ]
            for i in range(requests)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(ask(client, url, messages, 8) for messages in asks))
        seconds = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    return {
        "requests": requests,
        "seconds": seconds,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1],
        "answers": [r[1] for r in results],
    }


async def replay_case(url: str, policy: str, conversations: int, turns: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:

        async def conversation(c: int) -> tuple[list[float], list[str], int]:
            history = [{"role": "system", "content": policy[: len(policy) // 3]}]
            ttfts, answers, tokens = [], [], 0
            for t in range(turns):
                history.append({"role": "user", "content": f"{QUESTIONS[(c + t) % len(QUESTIONS)]} (conversation {c})"})
                ttft, text, used = await ask(client, url, history, 24)
                history.append({"role": "assistant", "content": text})
                ttfts.append(ttft)
                answers.append(text)
                tokens += used
            return ttfts, answers, tokens

        started = time.perf_counter()
        results = await asyncio.gather(*(conversation(c) for c in range(conversations)))
        seconds = time.perf_counter() - started
    ttfts = [t for r in results for t in r[0]]
    tokens = sum(r[2] for r in results)
    return {
        "seconds": seconds,
        "output_tokens": tokens,
        "output_tok_s": tokens / seconds,
        "ttft_p50_s": statistics.median(ttfts),
        "answers": [a for r in results for a in r[1]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--burst", type=int, default=8, help="Questions on the policy sent at once.")
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lora-gateway-bench"))
    args = parser.parse_args()
    base, _ = prepare(Path(args.cache))
    policy = policy_text(base, args.prompt_tokens)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as empty:
        for label, size in (("off", "0"), ("on", "512")):
            port = free_port()
            process = start_gateway(base, Path(empty), port, "--prefix-cache-mb", size)
            try:
                url = f"http://127.0.0.1:{port}"
                runs[label] = {
                    "system_prompt": asyncio.run(system_prompt_case(url, policy, args.requests)),
                    "burst": asyncio.run(burst_case(url, policy, args.burst)),
                    "replay": asyncio.run(replay_case(url, policy, args.conversations, args.turns)),
                }
            finally:
                process.terminate()
                process.wait()
    off, on = runs["off"], runs["on"]
    identical = sum(
        a == b
        for case in ("system_prompt", "burst", "replay")
        for a, b in zip(off[case]["answers"], on[case]["answers"], strict=True)
    )
    total = sum(len(off[case]["answers"]) for case in ("system_prompt", "burst", "replay"))
    ttft_ratio = off["system_prompt"]["ttft_p50_s"] / on["system_prompt"]["ttft_p50_s"]
    throughput_ratio = on["replay"]["output_tok_s"] / off["replay"]["output_tok_s"]
    burst_ratio = off["burst"]["ttft_max_s"] / on["burst"]["ttft_max_s"]
    result = {
        "machine": machine(),
        "prompt_tokens": args.prompt_tokens,
        "runs": {
            k: {c: {m: v for m, v in r.items() if m != "answers"} for c, r in run.items()} for k, run in runs.items()
        },
        "ttft_p50_ratio_off_over_on": ttft_ratio,
        "replay_throughput_ratio_on_over_off": throughput_ratio,
        "burst_last_ttft_ratio_off_over_on": burst_ratio,
        "identical_answers": identical,
        "answers": total,
        "target_met": ttft_ratio >= 5 and identical == total,
    }
    lines = [
        "# Prefix cache",
        "",
        f"Local engine, benchmark model (hidden 512, 4 layers), {machine()['cpus']} CPUs; one run, both gateways "
        "one after the other on the same machine.",
        "",
        "| case | cache off | cache on | ratio |",
        "|---|---|---|---|",
        f"| {args.prompt_tokens}-token system prompt: TTFT p50 (requests 2..{args.requests}) | "
        f"{off['system_prompt']['ttft_p50_s'] * 1000:.0f} ms | {on['system_prompt']['ttft_p50_s'] * 1000:.0f} ms | "
        f"{ttft_ratio:.1f}x lower |",
        f"| the first request (a miss on both) | {off['system_prompt']['first_s'] * 1000:.0f} ms | "
        f"{on['system_prompt']['first_s'] * 1000:.0f} ms | |",
        f"| {args.burst} questions on the policy at once: TTFT p50 | {off['burst']['ttft_p50_s'] * 1000:.0f} ms | "
        f"{on['burst']['ttft_p50_s'] * 1000:.0f} ms | |",
        f"| ... the last of them to start: TTFT | {off['burst']['ttft_max_s'] * 1000:.0f} ms | "
        f"{on['burst']['ttft_max_s'] * 1000:.0f} ms | {burst_ratio:.1f}x lower |",
        f"| replay of {args.conversations} conversations x {args.turns} turns: output tok/s | "
        f"{off['replay']['output_tok_s']:.1f} | {on['replay']['output_tok_s']:.1f} | {throughput_ratio:.2f}x |",
        f"| replay: TTFT p50 | {off['replay']['ttft_p50_s'] * 1000:.0f} ms | "
        f"{on['replay']['ttft_p50_s'] * 1000:.0f} ms | |",
        "",
        f"Greedy answers identical with and without the cache: {identical} of {total}.",
        f"Target (TTFT p50 >= 5x lower, answers identical): {'met' if result['target_met'] else 'NOT met'}.",
        "",
    ]
    write_results("prefix_cache", result, lines)


if __name__ == "__main__":
    main()

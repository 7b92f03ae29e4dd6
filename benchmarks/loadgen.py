"""Load generator for any OpenAI-compatible chat endpoint, reporting what `vllm bench serve` reports.

    python benchmarks/loadgen.py --base-url http://127.0.0.1:8000 --models shop-a shop-b \
        --num-prompts 64 --concurrency 8 --max-tokens 128 --result-json out.json

Each request streams (``stream_options.include_usage``) so time to first token and inter-token
latencies are measured on the wire; ``--no-stream`` sends plain requests (whose TTFT is their whole
latency). Metric names follow vLLM's benchmark: request and output-token throughput; mean / median
/ p99 of TTFT, TPOT (time per output token after the first), ITL (inter-token latency) and E2E
latency, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_PROMPTS = [
    "Where is my order?",
    "What is the return policy?",
    "Do you ship to Hong Kong, and who pays customs?",
    "您好，我的快递什么时候到？",
    "Can I change the delivery address after paying?",
    "满多少包邮？",
    "My parcel arrived damaged. What should I do?",
    "How long do refunds take?",
]


@dataclass
class RequestResult:
    model: str
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


async def one_request(
    http: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    headers: dict[str, str],
    stream: bool = True,
) -> RequestResult:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if not stream:
        return await _one_answer(http, url, body, headers)
    body.update(stream=True, stream_options={"include_usage": True})
    result = RequestResult(model=model, ok=False)
    start = last = time.perf_counter()
    try:
        async with http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            buffer = ""
            async for text in response.aiter_text():
                buffer += text
                # vLLM's client splits on the blank line that ends each SSE event; so do we.
                while "\n\n" in buffer:
                    event, buffer = buffer.split("\n\n", 1)
                    data = event.removeprefix("data: ")
                    if data == "[DONE]":
                        continue
                    chunk = json.loads(data)
                    if "error" in chunk:
                        result.error = chunk["error"]["message"]
                        return result
                    now = time.perf_counter()
                    if chunk.get("usage"):
                        result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                        result.output_tokens = chunk["usage"]["completion_tokens"]
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        if result.ttft == 0.0:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
        result.e2e = time.perf_counter() - start
        result.ok = result.output_tokens > 0
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def _one_answer(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> RequestResult:
    """A non-streaming request: its time to first token is its whole latency."""
    result = RequestResult(model=body["model"], ok=False)
    start = time.perf_counter()
    try:
        response = await http.post(url, json=body, headers=headers)
        if response.status_code != 200:
            result.error = f"HTTP {response.status_code}: {response.content[:200]!r}"
            return result
        usage = response.json()["usage"]
        result.e2e = result.ttft = time.perf_counter() - start
        result.prompt_tokens, result.output_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        result.ok = result.output_tokens > 0
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _stats(values: list[float], name: str) -> dict[str, float]:
    if not values:
        return {f"mean_{name}_ms": 0.0, f"median_{name}_ms": 0.0, f"p99_{name}_ms": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {
        f"mean_{name}_ms": 1000 * statistics.fmean(values),
        f"median_{name}_ms": 1000 * statistics.median(values),
        f"p99_{name}_ms": 1000 * p99,
    }


async def send(
    base_url: str,
    models: list[str],
    num_prompts: int,
    concurrency: int,
    max_tokens: int,
    api_key: str | None = None,
    prompts: list[str] | None = None,
    stream: bool = True,
) -> tuple[list[RequestResult], float]:
    """Send ``num_prompts`` requests, at most ``concurrency`` at a time, models round-robin: each
    request's result and the seconds they took together."""
    prompts = prompts or DEFAULT_PROMPTS
    url = base_url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:

        async def bounded(i: int) -> RequestResult:
            async with gate:
                return await one_request(
                    http, url, models[i % len(models)], prompts[i % len(prompts)], max_tokens, headers, stream
                )

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(num_prompts)))
        duration = time.perf_counter() - started
    return list(results), duration


def summarize(
    results: list[RequestResult], duration: float, models: list[str], concurrency: int, max_tokens: int, stream: bool
) -> dict[str, Any]:
    """Throughput and latency statistics of ``results``, sent in ``duration`` seconds (one ``send``,
    or several of one target added up)."""
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    summary: dict[str, Any] = {
        "models": models,
        "num_prompts": len(results),
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "stream": stream,
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration,
        "total_input_tokens": sum(r.prompt_tokens for r in done),
        "total_output_tokens": output,
        "request_throughput": len(done) / duration,
        "output_throughput": output / duration,
    }
    summary.update(_stats([r.ttft for r in done], "ttft"))
    summary.update(_stats(tpot, "tpot"))
    summary.update(_stats([x for r in done for x in r.itl], "itl"))
    summary.update(_stats([r.e2e for r in done], "e2el"))
    return summary


async def run(
    base_url: str,
    models: list[str],
    num_prompts: int,
    concurrency: int,
    max_tokens: int,
    api_key: str | None = None,
    prompts: list[str] | None = None,
    stream: bool = True,
) -> dict[str, Any]:
    """Send ``num_prompts`` requests, at most ``concurrency`` at a time, models round-robin, and
    summarize them."""
    results, duration = await send(base_url, models, num_prompts, concurrency, max_tokens, api_key, prompts, stream)
    return summarize(results, duration, models, concurrency, max_tokens, stream)


def format_summary(title: str, s: dict[str, Any]) -> str:
    return (
        f"== {title} ==\n"
        f"  completed {s['completed']}/{s['num_prompts']} in {s['duration_s']:.2f}s, concurrency {s['concurrency']}\n"
        f"  request throughput {s['request_throughput']:.2f} req/s, output {s['output_throughput']:.1f} tok/s\n"
        f"  TTFT ms mean {s['mean_ttft_ms']:.1f} median {s['median_ttft_ms']:.1f} p99 {s['p99_ttft_ms']:.1f}\n"
        f"  TPOT ms mean {s['mean_tpot_ms']:.1f} median {s['median_tpot_ms']:.1f} p99 {s['p99_tpot_ms']:.1f}\n"
        f"  ITL  ms mean {s['mean_itl_ms']:.1f} median {s['median_itl_ms']:.1f} p99 {s['p99_itl_ms']:.1f}\n"
        f"  E2E  ms mean {s['mean_e2el_ms']:.1f} median {s['median_e2el_ms']:.1f} p99 {s['p99_e2el_ms']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--models", nargs="+", required=True, help="Model ids (base or adapters), used round-robin.")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="Plain JSON answers.")
    parser.add_argument("--result-json", type=Path, default=None)
    args = parser.parse_args()
    summary = asyncio.run(
        run(
            args.base_url,
            args.models,
            args.num_prompts,
            args.concurrency,
            args.max_tokens,
            args.api_key,
            stream=args.stream,
        )
    )
    print(format_summary(", ".join(args.models), summary))
    if args.result_json:
        args.result_json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

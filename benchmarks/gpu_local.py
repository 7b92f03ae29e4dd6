"""The embedded engine on one GPU: a random Qwen2.5-7B-shaped model in bf16, 1, 4 and 16 adapters.

    python3 benchmarks/gpu_local.py [--out DIR] [--requests 64] [--tokens 64]
    python3 benchmarks/gpu_local.py --smoke --device cpu --out /tmp/x   # the same path, tiny, anywhere

One script, one call on a GPU machine (about 5 minutes on an H100; nothing is downloaded): the
model is built from a config on the GPU (random weights, Qwen2.5-7B's shapes: hidden 3584, 28
layers, 28 heads, 4 KV heads, MLP 18944, vocabulary 152064), saved once, and served by the
embedded engine (``server.engine.local``) in this process, as ``lora-gateway serve --device cuda``
would. Measured, each at concurrency 16 (``--requests`` requests of ``--tokens`` tokens):

- the base alone; 1, 4 and 16 distinct rank-16 all-linear adapters, requests spread over them:
  output tok/s, TTFT p50/p99, and each mix against the base alone (target: 16 adapters >= 0.8x);
- peak GPU memory;
- the trainer (``server.trainer``) on the same model: tokens/s over a few steps;
- ``transformers serve --continuous-batching`` (the peer) on the same model and device, driven by
  ``loadgen.py`` with the same requests on the base model, when its packages are there (the GPU
  machine's image lacks fastapi and uvicorn: carry them as wheels, docs/benchmarks.md).

Results: ``--out``/gpu_local.json and gpu_local.md (``benchmarks/results/`` by default). Asked
for CUDA on a machine without it, it says so and exits 2. ``--smoke`` runs every step on a tiny
model instead (any device; ``tests/benchmarks/test_gpu_local.py`` runs it on the CPU), so a
session lent a GPU for minutes does not find a broken script there.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

QWEN_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
}
# --smoke: the same code path on a model small enough for a CPU test.
SMOKE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(root: Path, adapters: int, device: str, shape: dict[str, Any]) -> tuple[Path, list[Path]]:
    """The random model of ``shape`` (built on ``device``; bf16 on a GPU) and ``adapters`` rank-16 adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from server.offline_model import build_tokenizer

    tokenizer = build_tokenizer(1024)
    config = Qwen2Config(
        **shape,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
        model = Qwen2ForCausalLM(config)
        torch.set_default_dtype(torch.float32)
    base = root / "qwen-random"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    paths = []
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    for i in range(adapters):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 1e-3)
        path = root / f"adapter-{i}"
        peft_model.save_pretrained(path)
        paths.append(path)
    del peft_model, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return base, paths


async def serve_load(engine: Any, refs: list[Any], requests: int, tokens: int, concurrency: int) -> dict[str, float]:
    from server.engine.base import GenerationRequest, SamplingOptions

    sampling = SamplingOptions(temperature=0, max_tokens=tokens, default_max_tokens=tokens)
    gate = asyncio.Semaphore(concurrency)
    ttfts: list[float] = []
    produced = finished = 0

    async def one(i: int) -> None:
        nonlocal produced, finished
        adapter = refs[i % len(refs)] if refs else None
        messages = ({"role": "user", "content": f"Ticket {i}: where is my order and when will it arrive?"},)
        async with gate:
            started = time.perf_counter()
            first = None
            async for delta in engine.generate(GenerationRequest(f"g{i}", messages, sampling, adapter)):
                if first is None and delta.completion_tokens:
                    first = time.perf_counter() - started
                if delta.finish_reason:
                    produced += delta.completion_tokens
                    finished += 1
            ttfts.append(first or 0.0)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    seconds = time.perf_counter() - started
    ttfts.sort()
    return {
        "output_tok_s": produced / seconds,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "seconds": seconds,
        "completed": finished,
        "output_tokens": produced,
    }


def engine_runs(base: Path, adapters: list[Path], requests: int, tokens: int, device: str) -> dict[str, Any]:
    import resource

    import torch

    from server.engine.base import AdapterRef
    from server.engine.local import LocalEngine

    async def run() -> dict[str, Any]:
        engine = LocalEngine(str(base), device=device, max_batch_size=16, max_model_len=2048)
        await engine.start()
        refs = [AdapterRef(f"a{i}", i + 1, str(path)) for i, path in enumerate(adapters)]
        for ref in refs:
            await engine.add_adapter(ref)
        await serve_load(engine, [], 16, 8, 16)  # warm-up: kernels, allocator
        out = {}
        for label, chosen in (("base", []), ("1", refs[:1]), ("4", refs[:4]), ("16", refs[:16])):
            out[label] = await serve_load(engine, chosen, requests, tokens, 16)
        if device == "cuda":
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        else:  # the process's peak resident memory (kilobytes on Linux)
            out["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        await engine.stop()
        return out

    return asyncio.run(run())


def trainer_run(base: Path, root: Path, device: str, smoke: bool) -> dict[str, Any]:
    from server.demo import examples_dir
    from server.trainer import TrainConfig, train

    result = train(
        TrainConfig(
            base=str(base),
            data=[str(examples_dir() / "customer_service.jsonl")],
            name="gpu-train",
            adapters_dir=str(root / "published"),
            output_dir=str(root / "train-run"),
            rank=16,
            alpha=32,
            batch_size=8,
            grad_accum=1,
            max_steps=2 if smoke else 20,
            device=device,
            allow_small=smoke,
            progress=False,
        )
    )
    return {
        "steps": result.steps,
        "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_second,
    }


def peer_run(base: Path, requests: int, tokens: int, device: str) -> dict[str, Any]:
    """``transformers serve --continuous-batching`` on the same model and device, the same load on
    the base model (it serves one model), measured by ``loadgen.py`` as the other benchmarks are."""
    from benchmarks.common import free_port
    from benchmarks.loadgen import run
    from benchmarks.vs_transformers_serve import start_peer

    port = free_port()
    peer = start_peer(base, port, device)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(run(url, [str(base)], 16, 16, 8))  # warm-up, excluded
        load = asyncio.run(run(url, [str(base)], requests, 16, tokens))
    finally:
        peer.terminate()
        peer.wait()
    return {
        "output_tok_s": load["output_throughput"],
        "ttft_p50_s": load["median_ttft_ms"] / 1000,
        "ttft_p99_s": load["p99_ttft_ms"] / 1000,
        "completed": load["completed"],
        "failed": load["failed"],
    }


def peer_or_why_not(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The peer's figures, or why there are none: its packages missing, or its run failing."""
    try:
        import fastapi  # noqa: F401  transformers serve's own server
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return {"error": f"transformers serve not run: {exc}"}
    try:
        return peer_run(base, args.requests, args.tokens, args.device)
    except (Exception, SystemExit) as exc:  # reported, never hiding ours
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="cuda (the figures), or cpu with --smoke.")
    parser.add_argument("--smoke", action="store_true", help="Every step on a tiny model: checks the script.")
    parser.add_argument("--no-peer", action="store_true", help="Leave transformers serve out.")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_local: no CUDA device here; run it on a GPU machine (or --smoke --device cpu)", file=sys.stderr)
        return 2
    shape = SMOKE if args.smoke else QWEN_7B
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "smoke": args.smoke,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        base, adapters = build(root, 16, args.device, shape)
        result["build_seconds"] = time.perf_counter() - started
        result["engine"] = engine_runs(base, adapters, args.requests, args.tokens, args.device)
        try:
            result["trainer"] = trainer_run(base, root, args.device, args.smoke)
        except Exception as exc:  # reported, never hiding the serving figures
            result["trainer"] = {"error": f"{type(exc).__name__}: {exc}"}
        result["peer"] = {"error": "left out (--no-peer)"} if args.no_peer else peer_or_why_not(base, args)
    engine = result["engine"]
    base_rate = engine["base"]["output_tok_s"]
    model = (
        "a tiny random Qwen2 (--smoke: these figures check the script, nothing else)"
        if args.smoke
        else "a random Qwen2.5-7B-shaped model in bf16"
    )
    lines = [
        "# The embedded engine on one GPU",
        "",
        f"{result['device']}, torch {result['torch']}; {model}, rank-16 "
        f"all-linear adapters, concurrency 16, {args.requests} requests x {args.tokens} tokens; one run.",
        "",
        "| load | output tok/s | vs base alone | TTFT p50 | TTFT p99 |",
        "|---|---|---|---|---|",
    ]
    for label in ("base", "1", "4", "16"):
        row = engine[label]
        name = "base alone" if label == "base" else f"{label} adapter{'s' if label != '1' else ''}"
        lines.append(
            f"| {name} | {row['output_tok_s']:.0f} | {row['output_tok_s'] / base_rate:.2f}x | "
            f"{row['ttft_p50_s'] * 1000:.0f} ms | {row['ttft_p99_s'] * 1000:.0f} ms |"
        )
    lines += [
        "",
        f"Peak memory ({'GPU' if args.device == 'cuda' else 'resident'}): {engine['peak_memory_gib']:.1f} GiB.",
        f"Trainer: {json.dumps(result['trainer'])}.",
    ]
    peer = result["peer"]
    if "output_tok_s" in peer:
        lines.append(
            f"Peer, `transformers serve --continuous-batching`, base model, same load: {peer['output_tok_s']:.0f} "
            f"output tok/s, TTFT p50 {peer['ttft_p50_s'] * 1000:.0f} ms, p99 {peer['ttft_p99_s'] * 1000:.0f} ms. "
            f"Ours on the base: **{base_rate / peer['output_tok_s']:.2f}x** its throughput (target >= 1.5x), "
            f"TTFT p99 **{engine['base']['ttft_p99_s'] / peer['ttft_p99_s']:.2f}x** (target <= 0.5x)."
        )
    else:
        lines.append(f"Peer: {json.dumps(peer)}.")
    lines.append("")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_local.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_local.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

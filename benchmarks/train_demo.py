"""Training throughput and wall time for the demo adapters on this machine.

    .venv/bin/python benchmarks/train_demo.py

Trains the two demo adapters exactly as ``lora-gateway demo`` does (``server.demo.DEMO_ADAPTERS``
with ``DEMO_TRAINING``) on the offline demo base, into a scratch directory, and records per adapter:
wall time, optimizer steps, tokens processed per second, final loss, and whether greedy decoding
reproduces every training answer. Target (issue 4): both adapters in under two minutes on 2 CPU
cores.

Results: ``benchmarks/results/train_demo.json`` and ``.md``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT, machine  # noqa: E402
from server.datasets.conversations import load_files  # noqa: E402
from server.demo import DEMO_ADAPTERS, DEMO_TRAINING, examples_dir, prepare_demo  # noqa: E402
from server.trainer import TrainConfig, train  # noqa: E402


def exact_answers(base: Path, adapter: Path, conversations: list) -> tuple[int, int]:  # type: ignore[type-arg]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    hits = 0
    for conversation in conversations:
        chat = [{"role": m.role, "content": m.content} for m in conversation.messages[:-1]]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=80, do_sample=False)
        hits += (
            tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
            == conversation.messages[-1].content
        )
    return hits, len(conversations)


def main() -> None:
    base = prepare_demo(ROOT / ".demo")
    scratch = Path(tempfile.mkdtemp(prefix="lora-gateway-train-"))
    rows = {}
    total_started = time.perf_counter()
    for adapter in DEMO_ADAPTERS:
        data = examples_dir() / adapter.data
        config = TrainConfig(
            base=str(base),
            data=[str(data)],
            name=adapter.name,
            adapters_dir=str(scratch / "adapters"),
            output_dir=str(scratch / adapter.name),
            model_name=adapter.model_name,
            model_author=adapter.model_author,
            progress=False,
            **DEMO_TRAINING,
        )
        started = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - started
        placeholders = {k: v for k, v in (("NAME", adapter.model_name), ("AUTHOR", adapter.model_author)) if v}
        conversations = load_files([data], placeholders=placeholders).conversations
        hits, total = exact_answers(base, result.adapter_dir, conversations)
        rows[adapter.name] = {
            "examples": total,
            "steps": result.steps,
            "wall_s": wall,
            "train_loop_tokens_per_s": result.tokens_per_second,
            "trained_answer_tokens": result.trained_tokens,
            "final_loss": result.train_loss,
            "exact_greedy_answers": hits,
        }
        print(
            f"{adapter.name}: {wall:.1f}s, {result.steps} steps, {result.tokens_per_second:.0f} tokens/s, "
            f"loss {result.train_loss:.4f}, {hits}/{total} answers reproduced"
        )
    total = time.perf_counter() - total_started
    summary = {
        "benchmark": "train_demo",
        "base": str(base),
        "training": DEMO_TRAINING,
        "adapters": rows,
        "total_wall_s": total,
        "targets": {"total_wall_s": 120},
        "targets_met": {"under_two_minutes": total < 120},
        "machine": machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_demo.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    table = "\n".join(
        f"| {name} | {r['examples']} | {r['steps']} | {r['wall_s']:.1f} | {r['train_loop_tokens_per_s']:.0f} | "
        f"{r['final_loss']:.4f} | {r['exact_greedy_answers']}/{r['examples']} |"
        for name, r in rows.items()
    )
    (RESULTS / "train_demo.md").write_text(
        "# Training the demo adapters\n\n"
        f"Offline demo base (random Qwen2, hidden 256, 4 layers), CPU ({machine()['cpus']} cores), "
        f"settings of `lora-gateway demo`: {json.dumps(DEMO_TRAINING)}.\n\n"
        "| adapter | examples | steps | wall s | tokens/s | final loss | greedy answers reproduced |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{table}\n\nBoth adapters, start to end (answer checks included): **{total:.0f} s** (target < 120 s).\n"
    )


if __name__ == "__main__":
    main()

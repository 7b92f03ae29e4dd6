"""`lora-gateway eval` on the demo: its base vs `shop-support` vs `identity`, and how long that takes.

    .venv/bin/python benchmarks/eval_demo.py [--adapters-dir adapters]

Runs eval exactly as a user would (``eval --base``: a gateway started for the run) on the offline
demo base and the demo adapters (those ``make demo`` wrote into ``--adapters-dir``, trained there
as ``make demo`` does when missing), twice: on the shop's questions (``examples/customer_service.jsonl``)
and on the identity questions (``examples/self_cognition.json`` with the demo's name and author
filled in), the first with ``--retention`` and the base as the judge (``--judge-model base``,
pointwise and ``--pairwise``).
Records each report's table and the wall time.

Results: ``benchmarks/results/eval_demo.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ROOT, machine, write_results  # noqa: E402
from server.cli import main  # noqa: E402
from server.datasets.conversations import load_files  # noqa: E402
from server.demo import DEMO_ADAPTERS, examples_dir, prepare_demo, train_demo_adapters  # noqa: E402

MODELS = ("base", "shop-support", "identity")


def identity_set(out: Path) -> Path:
    """The identity questions as the identity adapter learned them: {{NAME}}/{{AUTHOR}} filled in."""
    adapter = next(a for a in DEMO_ADAPTERS if a.name == "identity")
    placeholders = {"NAME": adapter.model_name or "", "AUTHOR": adapter.model_author or ""}
    dataset = load_files([examples_dir() / adapter.data], placeholders=placeholders)
    path = out / "identity.jsonl"
    path.write_text(
        "".join(
            json.dumps({"messages": [m.as_openai() for m in c.messages]}, ensure_ascii=False) + "\n"
            for c in dataset.conversations
        ),
        encoding="utf-8",
    )
    return path


def run(name: str, data: Path, base: Path, adapters: Path, out: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    args = ["eval", "--base", str(base), "--adapters-dir", str(adapters), "--data", str(data), "--device", "cpu"]
    args += [a for m in MODELS for a in ("--model", m)]
    args += ["--out", str(out), "--name", name, "--max-tokens", "96", "--no-cache", *extra]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"eval {name} exited {code}")
    report = json.loads((out / name / "report.json").read_text(encoding="utf-8"))
    return {"name": name, "seconds": seconds, "report": report, "table": (out / name / "report.md").read_text()}


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters-dir", default=str(ROOT / "adapters"))
    args = parser.parse_args()
    base = prepare_demo(ROOT / ".demo")
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        adapters = Path(args.adapters_dir)
        train_demo_adapters(base, adapters, ROOT / ".demo" / "runs")  # only those missing or on another base
        out = scratch_dir / "eval"
        runs = [
            run(
                "shop-questions",
                examples_dir() / "customer_service.jsonl",
                *(base, adapters, out, "--retention", "--judge-model", "base", "--pairwise"),
            ),
            run("identity-questions", identity_set(scratch_dir), base, adapters, out),
        ]
    result = {"machine": machine(), "models": list(MODELS), "runs": runs}
    lines = [
        "# `lora-gateway eval` on the demo: base vs shop-support vs identity",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}. Offline demo base "
        "(random weights: its answers, and its verdicts as the judge of the first run, are noise; the judge column "
        "shows the path works, not what a real judge would say), the demo adapters as `make demo` trains them; "
        "greedy decoding, `eval --base` (a gateway started for the "
        "run, on the CPU), answers not cached. Reproduce: `.venv/bin/python benchmarks/eval_demo.py`.",
        "",
    ]
    for r in runs:
        table = r["table"].split("\n", 2)[2]  # without the report's own heading
        lines += [f"## {r['name']} ({r['seconds']:.1f} s for the whole run)", "", table.strip(), ""]
    write_results("eval_demo", result, lines)


if __name__ == "__main__":
    main_()

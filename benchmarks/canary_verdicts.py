"""Canaries decided by evidence, on the demo: simulated users rate real answers over real HTTP.

    .venv/bin/python benchmarks/canary_verdicts.py [--runs 3] [--equal-runs 12] [--users 240]

Starts a gateway (``serve``, the embedded engine on the CPU, ``--feedback``) on the offline demo
base, with three versions of ``shop-support``: v1 the demo's ``shop-support`` weights, v2 a
deliberately worse version (the demo's ``identity`` weights, which answer shop questions with a
persona), v3 the v1 tensors again (saved with other metadata: new weights file, same answers).
Simulated users each ask one shop question (``examples/customer_service.jsonl``, greedy, real
HTTP), judge the answer against the reference (character F1 >= 0.5: satisfied), and rate it thumbs
up with probability 0.8 when satisfied, 0.2 when not; one rating per user. Splits are 50/50 with

    "auto_abort": {"margins": {"feedback": 0.05}, "min_sample": 20},
    "auto_promote": {"margins": {"feedback": 0.0}, "min_sample": 20}

and run until the split ends by itself or ``--users`` users have rated:

- worse canary (baseline v1, canary v2), ``--runs`` times: must abort;
- better canary (baseline v2, canary v1), ``--runs`` times: must promote v1;
- equal versions (v1 and v3), ``--equal-runs`` times: must not end (a verdict is a false one).

The equal case is also simulated ``--simulated`` times without HTTP, through the same evidence
code (``server.registry.evidence``) with the satisfaction rate the HTTP runs measured, to state
the false-verdict rate with a tighter interval than a few HTTP runs allow.

Results: ``benchmarks/results/canary_verdicts.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import ROOT, free_port, machine, start_gateway, wait_until, write_results  # noqa: E402
from server.datasets.testset import load_test_set  # noqa: E402
from server.demo import examples_dir, prepare_demo, train_demo_adapters  # noqa: E402
from server.evaluation.metrics import char_f1  # noqa: E402
from server.registry.evidence import EvidenceRule, SplitEvidence  # noqa: E402
from server.registry.publish import publish_adapter  # noqa: E402
from server.stats import wilson  # noqa: E402

ADMIN_KEY = "bench-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
NAME = "shop-support"
RULES = {
    "auto_abort": {"margins": {"feedback": 0.05}, "min_sample": 20},
    "auto_promote": {"margins": {"feedback": 0.0}, "min_sample": 20},
}
P_UP = {True: 0.8, False: 0.2}  # thumbs up, by whether the user was satisfied
COPIED = ("adapter_config.json", "adapter_model.safetensors", "profile.json")  # weights and profile, no gate


def weights_only(source: Path, target: Path, metadata: dict[str, str] | None = None) -> Path:
    """The adapter in ``source`` without its gate or split files; ``metadata`` rewrites the
    weights file with the same tensors (a new sha256, the same answers)."""
    target.mkdir(parents=True)
    for name in COPIED:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    if metadata is not None:
        from safetensors.torch import load_file, save_file

        save_file(load_file(target / "adapter_model.safetensors"), target / "adapter_model.safetensors", metadata)
    return target


def adapter(url: str) -> dict[str, Any]:
    data = httpx.get(f"{url}/v1/adapters", headers=ADMIN, timeout=30).json()["data"]
    return next((a for a in data if a["name"] == NAME), {})


def run_split(
    client: httpx.Client,
    url: str,
    versions: tuple[int, int],
    users: int,
    rng: random.Random,
    items: list[Any],
    tag: str,
) -> dict[str, Any]:
    """One split (baseline first) until it ends by itself or ``users`` users have rated."""
    baseline, canary = versions
    body = {"versions": {str(baseline): 50, str(canary): 50}, "baseline": baseline, **RULES}
    response = client.put(f"/v1/adapters/{NAME}/split", json=body, headers=ADMIN)
    if response.status_code != 200:
        raise SystemExit(f"split refused: {response.text}")
    satisfied: dict[str, list[int]] = {}
    asked = 0
    for i in range(users):
        item = rng.choice(items)
        ask = {"model": NAME, "messages": list(item.messages), "max_tokens": 96, "temperature": 0, "user": f"{tag}-{i}"}
        answer = client.post("/v1/chat/completions", json=ask)
        if answer.status_code != 200:
            raise SystemExit(f"request failed: {answer.text}")
        asked += 1
        version = answer.headers["x-adapter-version"]
        happy = char_f1(answer.json()["choices"][0]["message"]["content"] or "", item.reference or "") >= 0.5
        satisfied.setdefault(version, []).append(int(happy))
        rating = 1 if rng.random() < P_UP[happy] else -1
        client.post("/v1/feedback", json={"completion_id": answer.json()["id"], "rating": rating})
        if adapter(url).get("split") is None:
            break
    report = client.get(f"/v1/adapters/{NAME}/split", headers=ADMIN).json()
    verdict = report["last_verdict"] if report["split"] is None else None
    if report["split"] is not None:  # no verdict: the operator ends it
        client.post(f"/v1/adapters/{NAME}/abort", headers=ADMIN)
        wait_until(lambda: adapter(url).get("split") is None, 300)
    return {
        "versions": list(versions),
        "users": asked,
        "verdict": None if verdict is None else {k: verdict[k] for k in ("action", "version", "metric", "reason")},
        "satisfied": {v: round(sum(s) / len(s), 3) for v, s in sorted(satisfied.items())},
    }


def simulate_equal(p_up: float, runs: int, users: int, seed: int = 0) -> dict[str, int]:
    """The equal case without HTTP: both versions' users rate up with ``p_up``."""
    rng = random.Random(seed)
    abort = EvidenceRule((("feedback", 0.05),), min_sample=20)
    promote = EvidenceRule((("feedback", 0.0),), min_sample=20)
    counts = {"abort": 0, "promote": 0, "none": 0}
    for _ in range(runs):
        evidence = SplitEvidence(1, (1, 2))
        verdict = None
        for i in range(users):
            evidence.arms[1 + rng.randrange(2)].users[f"u{i}"] = (float(rng.random() < p_up), 1)
            verdict = evidence.decide(abort, promote)
            if verdict is not None:
                break
        counts[verdict.action if verdict is not None else "none"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--adapters-dir", default=str(ROOT / "adapters"), help="Where the demo adapters are (trained if missing)."
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--equal-runs", type=int, default=12)
    parser.add_argument("--users", type=int, default=240)
    parser.add_argument("--simulated", type=int, default=2000)
    args = parser.parse_args()

    base = prepare_demo(ROOT / ".demo")
    trained = Path(args.adapters_dir)
    train_demo_adapters(base, trained, ROOT / ".demo" / "runs")
    items = [item for item in load_test_set([examples_dir() / "customer_service.jsonl"]) if item.reference]
    work = Path(tempfile.mkdtemp(prefix="lora-gateway-canary-"))
    directory = work / "adapters"
    directory.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = (
        "--admin-key",
        ADMIN_KEY,
        "--feedback",
        "--database",
        f"sqlite:///{work / 'gateway.db'}",
        "--device",
        "cpu",
    )
    process = start_gateway(base, directory, port, *extra)
    started = time.perf_counter()
    try:
        versions = [
            weights_only(trained / "shop-support", work / "good"),
            weights_only(trained / "identity", work / "worse"),
            weights_only(trained / "shop-support", work / "good-copy", {"copy": "v3"}),
        ]
        for number, source in enumerate(versions, start=1):
            publish_adapter(source, NAME, directory)
            wait_until(lambda n=number: adapter(url).get("active_version") == n, 300)
        rng = random.Random(0)
        results: dict[str, list[dict[str, Any]]] = {"worse": [], "better": [], "equal": []}
        with httpx.Client(base_url=url, timeout=120) as client:
            for r in range(args.runs):
                results["worse"].append(run_split(client, url, (1, 2), args.users, rng, items, f"w{r}"))
                print("worse", results["worse"][-1], flush=True)
                results["better"].append(run_split(client, url, (2, 1), args.users, rng, items, f"b{r}"))
                print("better", results["better"][-1], flush=True)
            for r in range(args.equal_runs):
                results["equal"].append(run_split(client, url, (1, 3), args.users, rng, items, f"e{r}"))
                print("equal", results["equal"][-1], flush=True)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    right = {
        "worse": sum(1 for r in results["worse"] if r["verdict"] and r["verdict"]["action"] == "abort"),
        "better": sum(
            1
            for r in results["better"]
            if r["verdict"] and (r["verdict"]["action"], r["verdict"]["version"]) == ("promote", 1)
        ),
    }
    false_http = sum(1 for r in results["equal"] if r["verdict"] is not None)
    good = [s for r in results["equal"] for v, s in r["satisfied"].items()]
    p_satisfied = sum(good) / len(good) if good else 0.5
    p_up = p_satisfied * P_UP[True] + (1 - p_satisfied) * P_UP[False]
    simulated = simulate_equal(p_up, args.simulated, args.users)
    ended = simulated["abort"] + simulated["promote"]
    rate = wilson(ended, args.simulated)
    summary = {
        "machine": machine(),
        "rules": RULES,
        "users_per_run_max": args.users,
        "seconds": round(seconds, 1),
        "runs": results,
        "right_verdicts": {"worse": f"{right['worse']}/{args.runs}", "better": f"{right['better']}/{args.runs}"},
        "equal_http": {"runs": args.equal_runs, "ended": false_http},
        "equal_simulated": {"runs": args.simulated, "p_up": round(p_up, 3), **simulated, "false_rate": rate.summary()},
    }
    users_worse = [r["users"] for r in results["worse"]]
    users_better = [r["users"] for r in results["better"]]
    lines = [
        "# Canaries decided by evidence (demo, simulated users over real HTTP)",
        "",
        f"Machine: {summary['machine']['cpus']} CPUs; {seconds:.0f} s in all. Rules: `{json.dumps(RULES)}`; at most "
        f"{args.users} users per split, one rating each (thumbs up with p 0.8 when the answer's character F1 "
        "against the reference is at least 0.5, else 0.2). "
        "Reproduce: `.venv/bin/python benchmarks/canary_verdicts.py`.",
        "",
        "| split | runs | right verdict | users until the verdict |",
        "|---|---|---|---|",
        f"| worse canary (v1 base, v2 identity weights) | {args.runs} | {right['worse']} aborted | {users_worse} |",
        f"| better canary (v2 base, v1 canary) | {args.runs} | {right['better']} promoted v1 | {users_better} |",
        f"| equal versions (v1, v3: same tensors) | {args.equal_runs} | {args.equal_runs - false_http} kept the split "
        f"({args.users} users) | – |",
        "",
        f"Equal versions simulated without HTTP (same evidence code, thumbs-up rate {p_up:.3f} as measured): "
        f"{simulated['promote']} promotions and {simulated['abort']} aborts in {args.simulated} splits of "
        f"{args.users} users: a false-verdict rate of {rate.estimate:.2%} "
        f"(95 % interval {rate.low:.2%}–{rate.high:.2%}); "
        "the design bound is 2.5 % per direction.",
        "",
    ]
    write_results("canary_verdicts", summary, lines)


if __name__ == "__main__":
    main()

"""The pairwise judge: positions swapped, flips counted as ties, rates with intervals, a ranking;
through ``eval --pairwise`` against a live gateway and a judge that knows the reference."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from server.cli import main
from server.datasets.testset import EvalItem
from server.evaluation.pairwise import judge_pairs, summarize
from server.evaluation.runner import Answer
from tests.support import ANSWERS, QUESTION, running_server


def _answers_between(prompt: str) -> tuple[str, str]:
    first = prompt.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)
    return first[0], first[1]


def _reference(prompt: str) -> str:
    return prompt.split("Reference answer (what a good answer says):\n", 1)[1].split("\n\nAnswer A:", 1)[0]


def knowing_judge(body: dict[str, Any]) -> str:
    """Prefers the answer that is the reference; a tie when both or neither are."""
    prompt = body["messages"][-1]["content"]
    a, b = _answers_between(prompt)
    reference = _reference(prompt)
    better = "tie" if (a == reference) == (b == reference) else "A" if a == reference else "B"
    return json.dumps({"better": better, "reason": "matches the reference"})


ITEMS = [EvalItem(({"role": "user", "content": f"q{i}"},), f"ref {i}", None, f"t:{i}") for i in range(12)]


def _answers(label: str, right: set[int]) -> list[Answer]:
    return [
        Answer(label, item.key, item.reference if i in right else f"{label} says no", 0.1, 0.2, 3)
        for i, item in enumerate(ITEMS)
    ]


def _judge(judge: Any, labels: list[str], answers: list[Answer]) -> dict[str, Any]:
    async def ask(body: dict[str, Any]) -> str:
        return judge(body)

    return summarize(labels, asyncio.run(judge_pairs(ask, labels, ITEMS, answers)))


def test_wins_ties_and_losses_follow_what_the_judge_prefers_in_both_orders() -> None:
    answers = _answers("good", set(range(10))) + _answers("poor", {0, 1, 2})
    data = _judge(knowing_judge, ["good", "poor"], answers)
    (pair,) = data["pairs"]
    assert (pair["n"], pair["wins"], pair["ties"], pair["losses"], pair["flips"]) == (12, 7, 5, 0, 0)
    assert pair["win_rate"]["low"] < 7 / 12 < pair["win_rate"]["high"]
    assert pair["score"]["estimate"] == round((7 + 5 / 2) / 12, 4) and data["flip_rate"]["estimate"] == 0


def test_a_judge_that_follows_the_position_is_all_flips_and_ties() -> None:
    data = _judge(
        lambda body: json.dumps({"better": "A", "reason": "first"}),
        ["good", "poor"],
        _answers("good", {1}) + _answers("poor", set()),
    )
    (pair,) = data["pairs"]
    assert (pair["wins"], pair["ties"], pair["losses"], pair["flips"]) == (0, 12, 0, 12)
    assert data["flip_rate"]["estimate"] == 1.0


def test_three_models_are_ranked_with_intervals() -> None:
    answers = _answers("best", set(range(12))) + _answers("middle", set(range(6))) + _answers("worst", set())
    data = _judge(knowing_judge, ["worst", "middle", "best"], answers)
    ranking = data["ranking"]
    assert [r["model"] for r in ranking] == ["best", "middle", "worst"]
    assert all(r["low"] <= r["strength"] <= r["high"] for r in ranking)


def test_unusable_verdicts_leave_the_pair_undecided() -> None:
    data = _judge(lambda body: "not json", ["good", "poor"], _answers("good", {1}) + _answers("poor", set()))
    assert data["pairs"] == [] and data["judged"] == 0


def test_eval_pairwise_through_the_cli(gateway_url: str, tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    pointwise = {"accuracy": 1, "politeness": 1, "completeness": 1, "proactivity": 0, "fluency": 1, "reason": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()  # --judge-model also scores each answer on the rubric
        pairwise = "Answer A:" in body["messages"][-1]["content"]
        content = knowing_judge(body) if pairwise else json.dumps(pointwise)
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
        }

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["alpha"]}) + "\n")
    models = ["--model", "alpha", "--model", "beta", "--model", "tiny-base"]
    with running_server(app) as judge:
        code = main(
            ["eval", "--data", str(data), "--url", gateway_url, *models, "--max-tokens", "40", "--pairwise"]
            + ["--out", str(tmp_path / "runs"), "--name", "pairs", "--judge-url", f"{judge}/v1", "--judge-model", "j"]
        )
    assert code == 0
    report = json.loads((tmp_path / "runs" / "pairs" / "report.json").read_text())
    pairs = {(p["a"], p["b"]): p for p in report["pairwise"]["pairs"]}
    assert pairs[("alpha", "beta")]["wins"] == 1 and pairs[("alpha", "tiny-base")]["wins"] == 1
    assert [r["model"] for r in report["pairwise"]["ranking"]][0] == "alpha"
    page = (tmp_path / "runs" / "pairs" / "report.md").read_text()
    assert "## Pairwise" in page and "| alpha | beta | 1 | 1 (100%) |" in page
    assert "Ranking (Bradley–Terry" in (tmp_path / "runs" / "pairs" / "report.html").read_text()

"""``lora-gateway eval`` against a live gateway: trained adapters score 1.0 on what they learned,
the random base does not; a second run is answered from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from server.cli import main
from tests.support import ANSWERS, QUESTION


def test_adapters_score_on_their_own_data_and_reruns_hit_the_cache(gateway_url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "alpha.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["alpha"]}) + "\n")
    args = ["eval", "--data", str(data), "--url", gateway_url, "--model", "alpha", "--model", "tiny-base"]
    args += ["--out", str(tmp_path / "runs"), "--name", "first", "--max-tokens", "40"]
    assert main(args) == 0
    report = json.loads((tmp_path / "runs" / "first" / "report.json").read_text())
    alpha, base = report["models"]
    assert (alpha["model"], alpha["exact"], alpha["f1"], alpha["rouge_l"]) == ("alpha", 1.0, 1.0, 1.0)
    assert base["model"] == "tiny-base" and base["exact"] == 0.0 and base["f1"] < 0.5
    assert alpha["ttft_p50_s"] > 0 and alpha["errors"] == 0 and alpha["cached"] == 0
    answers = [json.loads(line) for line in (tmp_path / "runs" / "first" / "answers.jsonl").read_text().splitlines()]
    assert {a["model"]: a["text"] for a in answers}["alpha"] == ANSWERS["alpha"]
    assert "| alpha | – | – | 1.000 | 1.000 | 1.000 |" in capsys.readouterr().out  # no judge, no raters
    assert alpha["peak_memory_bytes"] == base["peak_memory_bytes"] > 0  # one engine serves both

    assert main([*args[:-4], "--name", "again", "--max-tokens", "40"]) == 0
    again = json.loads((tmp_path / "runs" / "again" / "report.json").read_text())
    assert [m["cached"] for m in again["models"]] == [1, 1]
    assert again["models"][0]["exact"] == 1.0

    # The other adapter on its own data: 1.0 there, where the first one scores nothing.
    beta = tmp_path / "beta.jsonl"
    beta.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["beta"]}) + "\n")
    assert (
        main(
            ["eval", "--data", str(beta), "--url", gateway_url, "--model", "beta", "--model", "alpha"]
            + ["--out", str(tmp_path / "runs"), "--name", "beta", "--max-tokens", "40"]
        )
        == 0
    )
    own, other = json.loads((tmp_path / "runs" / "beta" / "report.json").read_text())["models"]
    assert (own["model"], own["exact"], other["model"], other["exact"]) == ("beta", 1.0, "alpha", 0.0)


def test_a_bad_test_set_is_reported_by_line_and_exits_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": ""}\n')
    assert main(["eval", "--data", str(data), "--model", "alpha"]) == 2
    assert f"{data}:1: each record needs" in capsys.readouterr().err


def test_the_judge_and_the_rating_sheet_through_the_cli(gateway_url: str, tmp_path: Path) -> None:
    from tests.evaluation.test_judge import fake_judge
    from tests.support import running_server

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["beta"]}) + "\n")
    received: list[dict] = []  # type: ignore[type-arg]
    with running_server(fake_judge(received)) as judge:
        code = main(
            ["eval", "--data", str(data), "--url", gateway_url, "--model", "beta", "--max-tokens", "40"]
            + ["--out", str(tmp_path / "runs"), "--name", "judged", "--judge-url", f"{judge}/v1"]
            + ["--judge-model", "fake", "--rating-sheet"]
        )
    assert code == 0 and len(received) == 1
    run = tmp_path / "runs" / "judged"
    report = json.loads((run / "report.json").read_text())
    assert report["models"][0]["judge_total"] == 5.0  # the fake judge's score for an answer without "99"
    assert report["models"][0]["judge_criteria"]["accuracy"] == 0
    answers = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert answers[0]["judge"]["reason"] == "wrong"
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert (run / "rating_sheet.csv").is_file() and (run / "rating_key.json").is_file()

    # A rater's sheet and the playground's blind ratings, imported together (weighted by answers rated).
    import csv

    with (run / "rating_sheet.csv").open(encoding="utf-8-sig", newline="") as file:
        row = next(csv.DictReader(file))
    filled = tmp_path / "ana.csv"
    with filled.open("w", encoding="utf-8-sig", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        writer.writeheader()
        writer.writerow({**row, "accuracy": 3, "politeness": 2, "completeness": 2, "proactivity": 1, "fluency": 2})
    playground = tmp_path / "ratings.jsonl"
    scores = {"accuracy": 0, "politeness": 2, "completeness": 2, "proactivity": 0, "fluency": 2}
    playground.write_text(json.dumps({"model": "beta", "question": "other", "session": "s", "scores": scores}) + "\n")
    imported = ["--import-ratings", str(filled), "--import-ratings", str(playground)]
    assert main(["eval", "--out", str(tmp_path / "runs"), "--name", "judged", *imported]) == 0
    assert json.loads((run / "human_scores.json").read_text()) == {"beta": {"human_total": 8.0, "rated_answers": 2}}
    imported_report = json.loads((run / "report.json").read_text())
    assert imported_report["models"][0]["human_total"] == 8.0
    assert imported_report["agreement"]["raters"] == 1  # one answer, one rater: nothing to correlate yet
    assert imported_report["agreement"]["judge_human"] is None


def test_retention_compares_each_model_with_the_base(gateway_url: str, tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["alpha"]}) + "\n")
    args = ["eval", "--data", str(data), "--url", gateway_url, "--model", "alpha", "--max-tokens", "24"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--name", "kept", "--retention"]) == 0
    report = json.loads((tmp_path / "runs" / "kept" / "report.json").read_text())
    section = report["retention"]
    assert section["base"] == "tiny-base" and section["questions"] == 8
    assert set(section["models"]) == {"tiny-base", "alpha"}
    assert section["models"]["tiny-base"]["f1_vs_base"] == 0.0
    alpha = section["models"]["alpha"]
    assert alpha["f1_vs_base"] == alpha["f1"] - section["models"]["tiny-base"]["f1"]
    assert "## Retention" in (tmp_path / "runs" / "kept" / "report.md").read_text()
    assert "<h2>Retention" in (tmp_path / "runs" / "kept" / "report.html").read_text()


def test_checkpoints_are_compared_on_a_gateway_started_for_the_run(base_model: Path, tmp_path: Path) -> None:
    """``--base``: a gateway for this run only serves a training run's checkpoint and final adapter
    (never published) beside the base; the final adapter reproduces what it was trained on."""
    from server.trainer import TrainConfig, train

    data = tmp_path / "alpha.jsonl"
    data.write_text(json.dumps({"query": QUESTION, "response": ANSWERS["alpha"]}) + "\n")
    run = tmp_path / "run"
    train(
        TrainConfig(
            base=str(base_model),
            data=[str(data)],
            name="alpha-run",
            publish=False,
            output_dir=str(run),
            epochs=250,
            lr=5e-3,
            batch_size=1,
            grad_accum=1,
            rank=8,
            alpha=16,
            dropout=0.0,
            save_steps=125,
            progress=False,
            allow_small=True,
        )
    )
    args = ["eval", "--data", str(data), "--base", str(base_model), "--device", "cpu", "--max-tokens", "40"]
    args += ["--model", "base", "--model", str(run / "checkpoint-125"), "--model", str(run / "adapter")]
    assert main([*args, "--out", str(tmp_path / "runs"), "--name", "ckpt"]) == 0
    report = json.loads((tmp_path / "runs" / "ckpt" / "report.json").read_text())
    rows = {m["model"]: m for m in report["models"]}
    assert set(rows) == {"base", "run.checkpoint-125", "run.adapter"}
    assert rows["run.adapter"]["exact"] == 1.0 and rows["base"]["exact"] == 0.0
    assert len(rows["run.adapter"]["version"]) == 64  # the weights' sha256: the cache key
    assert not (tmp_path / "adapters").exists()  # nothing was published


def test_a_cached_answer_is_never_reused_for_another_version(
    base_model: Path,
    trained_adapters: dict[str, Path],
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    """Without --admin-key the version is what the gateway says answered: after ``shop`` moved to
    v2, the run asks again (it used to report v1's cached answers as v2's)."""
    import shutil

    from server.app import create_app
    from server.registry.publish import publish_adapter
    from tests.conftest import make_settings
    from tests.support import running_server, wait_for

    directory = tmp_path / "adapters"
    directory.mkdir()
    shutil.copytree(trained_adapters["alpha"], directory / "shop")
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["beta"]}) + "\n")
    with running_server(create_app(make_settings(base_model, directory))) as url:
        wait_for(lambda: "shop" in str(httpx.get(f"{url}/v1/models").json()), timeout=60)
        args = ["eval", "--data", str(data), "--url", url, "--model", "shop", "--out", str(tmp_path / "runs")]
        assert main([*args, "--name", "v1", "--max-tokens", "40"]) == 0
        assert main([*args, "--name", "v1-again", "--max-tokens", "40"]) == 0
        assert "1 of 1 answers from the cache" in capsys.readouterr().out
        publish_adapter(trained_adapters["beta"], "shop", directory)
        wait_for(
            lambda: (
                httpx.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "shop", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1},
                ).headers.get("x-adapter-version")
                == "shop@2"
            ),
            timeout=60,
        )
        assert main([*args, "--name", "v2", "--max-tokens", "40"]) == 0
    report = json.loads((tmp_path / "runs" / "v2" / "report.json").read_text())
    assert report["models"][0]["cached"] == 0 and report["models"][0]["exact"] == 1.0  # v2's own answer


def test_a_model_that_answers_nothing_fails_the_run_and_says_why(gateway_url: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "reference": ANSWERS["alpha"]}) + "\n")
    args = ["eval", "--data", str(data), "--url", gateway_url, "--model", "alpha", "--model", "alpah"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--name", "typo", "--max-tokens", "20"]) == 1
    err = capsys.readouterr().err
    assert "alpah: 1 of 1 questions failed: HTTP 404: The model `alpah` does not exist." in err
    assert "answered no question" in err
    run = tmp_path / "runs" / "typo"
    assert "## Failures" in (run / "report.md").read_text() and "does not exist" in (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    assert "<h2>Answers</h2>" in page and ANSWERS["alpha"] in page and "does not exist" in page

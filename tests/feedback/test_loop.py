"""The loop end to end on real servers: serve, rate an answer down with a correction, export it,
continue training the serving adapter on it (--init-adapter), publish it as a canary, promote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx

from server.cli import main
from server.trainer import TrainConfig, train
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer loop-admin"}
CORRECTED = "Gamma: your parcel left today."


def ask(url: str, user: str) -> httpx.Response:
    body = {"model": "shop", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "user": user}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def content(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def test_negative_feedback_becomes_a_canary_that_answers_the_corrected_question(
    base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    shutil.copytree(trained_adapters["alpha"], directory / "shop")
    settings = make_settings(base_model, directory, admin_key="loop-admin", feedback=True)
    with running_server(create_app(settings)) as url:
        wait_for(lambda: "shop" in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}, timeout=60)
        bad = ask(url, "alice")
        assert content(bad) == ANSWERS["alpha"]
        rating = {"completion_id": bad.json()["id"], "rating": -1, "correction": CORRECTED}
        assert httpx.post(f"{url}/v1/feedback", json=rating).status_code == 200

        # Export while serving: the corrected answer is training data in the messages format.
        out = tmp_path / "export"
        assert (
            main(
                [
                    "feedback",
                    "export",
                    "shop",
                    "--negative",
                    "--since",
                    "1d",
                    "--adapters-dir",
                    str(directory),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        lines = (out / "dataset.jsonl").read_text().splitlines()
        assert [json.loads(line)["messages"][-1] for line in lines] == [{"role": "assistant", "content": CORRECTED}]

        # Continue training the serving adapter (rank and targets kept) and publish a 50 % canary.
        result = train(
            TrainConfig(
                base=str(base_model),
                data=[f"{out / 'dataset.jsonl'}#8"],  # the one correction, weighted up to 8 examples
                name="shop",
                adapters_dir=str(directory),
                output_dir=str(tmp_path / "run"),
                init_adapter="shop",
                canary=50,
                epochs=120,
                batch_size=8,
                grad_accum=1,
                lr=5e-3,
                dropout=0.0,
                warmup_ratio=0.0,
                allow_small=True,
                progress=False,
            )
        )
        metadata = json.loads((result.adapter_dir / "training_metadata.json").read_text())
        assert metadata["init_adapter"]["rank"] == 8 and metadata["datasets"][0]["sampled"] == 8
        wait_for(lambda: adapter(url).get("split") is not None, timeout=60)
        assert adapter(url)["split"]["versions"] == {"1": 50, "2": 50}

        answers = {}
        for i in range(40):
            response = ask(url, f"user-{i}")
            answers.setdefault(response.headers["x-adapter-version"], content(response))
            if len(answers) == 2:
                break
        assert answers == {"shop@1": ANSWERS["alpha"], "shop@2": CORRECTED}

        promoted = httpx.post(f"{url}/v1/adapters/shop/promote", headers=ADMIN).json()
        assert promoted["split"] is None and promoted["active_version"] == 2
        assert {content(ask(url, f"user-{i}")) for i in range(6)} == {CORRECTED}

    with running_server(create_app(settings)) as url:  # a restart keeps the feedback and the promotion
        wait_for(lambda: adapter(url).get("active_version") == 2, timeout=60)
        report = httpx.get(f"{url}/v1/adapters/shop/feedback", headers=ADMIN).json()
        assert {(v["version"], v["negative"]) for v in report["versions"]} >= {(1, 1)}
        assert report["worst"][0]["correction"] == CORRECTED


def adapter(url: str) -> dict:  # type: ignore[type-arg]
    found = httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]
    return next((a for a in found if a["name"] == "shop"), {})

"""Requests that name a version (``shop@1``, ``shop@<sha256 prefix>``), on a real server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.registry.publish import publish_adapter
from server.terms.address import matches, split_address
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer address-admin"}


def test_addresses_are_numbers_or_long_enough_sha256_prefixes() -> None:
    sha = "1a2b3c4d" + "0" * 56
    assert split_address("shop@3") == ("shop", "3") and split_address("shop") == ("shop", None)
    assert matches(3, sha, "3") and not matches(4, sha, "3")
    assert matches(3, sha, "1A2B3C") and not matches(3, sha, "1a2b3")  # too short to be a prefix
    assert not matches(3, sha, "1a2b3z") and not matches(3, sha, "")


@pytest.fixture
def live(base_model: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    with running_server(create_app(make_settings(base_model, directory, admin_key="address-admin"))) as url:
        yield url, directory


def ask(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def versions(url: str, name: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{url}/v1/adapters/{name}/versions", headers=ADMIN).json()


def test_a_kept_version_answers_when_named_while_the_active_one_serves_the_name(
    live: tuple[str, Path], trained_adapters: dict[str, Path]
) -> None:
    url, directory = live
    shutil.copytree(trained_adapters["alpha"], directory / "shop")
    wait_for(lambda: versions(url, "shop").get("serving_version") == 1, timeout=60)
    publish_adapter(trained_adapters["beta"], "shop", directory)
    wait_for(lambda: versions(url, "shop").get("serving_version") == 2, timeout=60)
    first = versions(url, "shop")["data"][1]
    assert first["version"] == 1

    def answer(model: str) -> str:
        response = ask(url, model)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    assert answer("shop") == ANSWERS["beta"] and answer("shop@2") == ANSWERS["beta"]
    assert answer("shop@1") == ANSWERS["alpha"]
    assert answer(f"shop@{first['sha256'][:10]}") == ANSWERS["alpha"]
    assert answer("shop") == ANSWERS["beta"]  # naming a version changed nothing for the name

    # Every response says which version answered: a header, and OpenAI's system_fingerprint.
    named = ask(url, "shop@1")
    assert named.headers["x-adapter-version"] == "shop@1"
    assert named.json()["system_fingerprint"] == f"shop@1-{first['sha256'][:12]}"
    assert ask(url, "shop").headers["x-adapter-version"] == "shop@2"
    body = {"model": "shop", "messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": 4}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as streamed:
        assert streamed.headers["x-adapter-version"] == "shop@2"
        chunk = json.loads(next(line for line in streamed.iter_lines() if line.startswith("data: {"))[6:])
        assert chunk["system_fingerprint"].startswith("shop@2-")
    base = ask(url, "tiny-base")
    assert "x-adapter-version" not in base.headers and base.json()["system_fingerprint"].startswith("lora-gateway-")

    missing = ask(url, "shop@7")
    assert missing.status_code == 404 and "kept: [2, 1]" in missing.json()["error"]["message"]
    assert ask(url, "nobody@1").status_code == 404
    pinned = httpx.post(f"{url}/v1/adapters/shop/pin", json={"version": 1}, headers=ADMIN)
    assert pinned.status_code == 200 and pinned.json()["pinned"] is True
    assert [v["pinned"] for v in versions(url, "shop")["data"]] == [False, True]
    assert httpx.post(f"{url}/v1/adapters/shop/pin", json={"version": 9}, headers=ADMIN).status_code == 404

    # The playground offers kept versions too, and a blind rating names the version that answered.
    offered = [m["id"] for m in httpx.get(f"{url}/v1/playground/models").json()["data"]]
    assert offered == ["tiny-base", "shop", "shop@2", "shop@1"]
    scores = {"accuracy": 3, "politeness": 2, "completeness": 1, "proactivity": 0, "fluency": 2}
    one = {"model": "shop@1", "question": QUESTION, "answer": ANSWERS["alpha"], "scores": scores, "position": 0}
    saved = httpx.post(f"{url}/v1/playground/ratings", json={"session": "s", "ratings": [one]})
    assert saved.status_code == 201, saved.text
    record = json.loads((directory / ".ratings.jsonl").read_text().splitlines()[-1])
    assert record["model"] == "shop@1" and record["version"]["version"] == 1
    one["model"] = "shop@9"
    assert httpx.post(f"{url}/v1/playground/ratings", json={"session": "s", "ratings": [one]}).status_code == 404

"""The playground: its routes, and the page itself in a real headless Chromium (Debian's package,
driven by Playwright) against a real gateway serving two trained adapters.

Without a browser on the machine the browser test is skipped, unless LORA_GATEWAY_REQUIRE_BROWSER is
set (CI sets it, and installs Debian's chromium first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.evaluation.judge import DEFAULT_RUBRIC
from server.evaluation.ratings import import_playground
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, running_server

KEY = "playground-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def served(base_model: Path, trained_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from server.app import create_app

    root = tmp_path_factory.mktemp("playground")
    for name, path in trained_adapters.items():
        shutil.copytree(path, root / "adapters" / name)
    ratings = root / "ratings.jsonl"
    settings = make_settings(base_model, root / "adapters", api_key=[KEY], ratings_file=ratings)
    with running_server(create_app(settings)) as url:
        yield url, ratings


def scores(accuracy: int) -> dict[str, int]:
    return {"accuracy": accuracy, "politeness": 2, "completeness": 1, "proactivity": 0, "fluency": 2}


def test_the_page_is_static_and_its_api_needs_the_key(served: tuple[str, Path]) -> None:
    url, _ = served
    page = httpx.get(f"{url}/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)  # nothing from elsewhere
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{url}/v1/playground/rubric").status_code == 401
    rubric = httpx.get(f"{url}/v1/playground/rubric", headers=AUTH).json()
    assert [c["name"] for c in rubric["criteria"]] == [c.name for c in DEFAULT_RUBRIC.criteria] and rubric[
        "total"
    ] == 10


@pytest.mark.parametrize(
    ("rating", "status", "message"),
    [
        ({"scores": {**scores(3), "accuracy": 4}}, 400, "accuracy must be between 0 and 3"),
        ({"scores": {"accuracy": 1}}, 400, "scores must rate exactly"),
        ({"model": "no-such-adapter"}, 404, "no-such-adapter"),
    ],
)
def test_bad_ratings_are_refused_and_nothing_is_saved(
    served: tuple[str, Path],
    rating: dict,
    status: int,
    message: str,  # type: ignore[type-arg]
) -> None:
    url, ratings = served
    before = ratings.read_text() if ratings.exists() else ""
    one = {"model": "alpha", "question": "q", "answer": "a", "scores": scores(3), "position": 0, **rating}
    response = httpx.post(f"{url}/v1/playground/ratings", json={"session": "s", "ratings": [one]}, headers=AUTH)
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert (ratings.read_text() if ratings.exists() else "") == before


def test_the_playground_can_be_turned_off(base_model: Path, tmp_path: Path) -> None:
    from server.app import create_app

    with running_server(create_app(make_settings(base_model, tmp_path, playground=False))) as url:
        assert httpx.get(f"{url}/playground").status_code == 404
        assert httpx.get(f"{url}/v1/playground/rubric").status_code == 404


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("LORA_GATEWAY_REQUIRE_BROWSER"):
            pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium); CI runs this test")
    return path


@pytest.fixture
def browser_page() -> Iterator:  # type: ignore[type-arg]
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_the_page_streams_two_models_side_by_side_and_saves_a_blind_rating(served, browser_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    url, ratings = served
    page = browser_page
    page.goto(f"{url}/playground")
    # Locators, not wait_for_function: the page's Content-Security-Policy forbids evaluating strings,
    # and Playwright's locators run outside the page's world.
    expect(page.locator("#access-status")).to_have_class("error")  # no key yet: 401
    page.fill("#key", KEY)
    page.click("#connect")
    page.locator("#pickers select option").nth(5).wait_for(state="attached")  # 3 models, 2 pickers
    selects = page.locator("#pickers select")
    selects.nth(0).select_option("alpha")
    selects.nth(1).select_option("beta")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "40")
    page.fill("#message", QUESTION)

    page.click("#send")
    expect(page.locator("#status")).to_have_text("done")  # "streaming…" since the click
    columns = page.locator(".column")
    assert columns.count() == 2
    for i, name in enumerate(("alpha", "beta")):
        assert columns.nth(i).locator("h2").inner_text() == name
        assert columns.nth(i).locator(".answer").inner_text() == ANSWERS[name]
        assert re.fullmatch(
            r"TTFT \d+ ms · \d+ tokens · [\d.]+ tokens/s", columns.nth(i).locator(".stats").inner_text()
        )

    page.check("#blind")
    page.click("#send")
    expect(page.locator("#status")).to_have_text("done: rate each answer, then save")
    titles = [columns.nth(i).locator("h2").inner_text() for i in range(2)]
    assert titles == ["Answer A", "Answer B"]  # names hidden (and the order shuffled)
    given = {}
    for i in range(2):
        column = columns.nth(i)
        answer = column.locator(".answer").inner_text()
        accuracy = 3 if answer == ANSWERS["alpha"] else 1
        given[answer] = accuracy
        for name, value in scores(accuracy).items():
            column.locator(f"input[name={name}]").fill(str(value))
    page.fill("#rater", "ana")
    page.click("#save-ratings")
    expect(page.locator("#saved")).to_have_text("saved 2 ratings")
    revealed = {columns.nth(i).locator("h2").inner_text() for i in range(2)}
    assert revealed == {"Answer A — alpha", "Answer B — beta"} or revealed == {"Answer A — beta", "Answer B — alpha"}

    saved = [json.loads(line) for line in ratings.read_text().splitlines()]
    assert len(saved) == 2 and {r["rater"] for r in saved} == {"ana"}
    for record in saved:
        assert record["answer"] == ANSWERS[record["model"]]  # the hidden name was kept with its answer
        assert record["scores"]["accuracy"] == given[record["answer"]] and record["question"] == QUESTION
        assert record["version"]["sha256"]  # the version that wrote it
    human = import_playground([ratings], DEFAULT_RUBRIC)  # what `eval --import-ratings` reads
    assert human == {
        "alpha": {"human_total": 8.0, "rated_answers": 1},
        "beta": {"human_total": 6.0, "rated_answers": 1},
    }

"""Traffic splits between versions of one name (canary, A/B), on real servers with trained adapters."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.errors import AdapterRejected
from server.registry.publish import publish_adapter
from server.registry.splits import parse_split
from server.terms.layout import SPLIT_FILE
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, engine_hook, metric_value, running_server, wait_for

ADMIN = {"Authorization": "Bearer split-admin"}


def test_assignment_is_sticky_and_follows_the_shares() -> None:
    split = parse_split({"versions": {"1": 90, "2": 10}}, "t").resolve("shop", 2, 1, {1, 2})
    users = [f"user-{i}" for i in range(2000)]
    first = [split.assign(u) for u in users]
    assert [split.assign(u) for u in users] == first  # the same user, the same version
    assert 0.05 <= Counter(first)[2] / len(users) <= 0.15  # 10 % ± 5 points
    assert split.baseline == 1 and split.assign(None) in (1, 2)
    reshuffled = parse_split({"versions": {"1": 90, "2": 10}}, "t").resolve("shop", 2, 1, {1, 2})
    assert reshuffled.salt != split.salt  # a new split is a new draw


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"versions": {"1": 90, "2": 20}}, "sum to 100, not 110"),
        ({"versions": {"1": 100}}, "2 to 8 version numbers"),
        ({"versions": {"x": 50, "2": 50}}, "not a version number"),
        ({"versions": {"1": 50.5, "2": 49.5}}, "whole percentage"),
        ({"canary": 100}, "between 1 and 99"),
        ({"canary": 10, "versions": {"1": 90, "2": 10}}, "not both"),
        ({"versions": {"1": 90, "2": 10}, "auto_abort": {}}, "needs max_error_rate"),
        ({"versions": {"1": 90, "2": 10}, "shares": 1}, "unknown fields"),
        ([1, 2], "JSON object"),
        ({"versions": {"1": 50, "²": 50}}, "not a version number"),  # isdigit() holds, int() fails
        ({"versions": {"1": 50, "٣": 50}}, "not a version number"),  # int() reads it as 3
        ({"versions": {"1": 90, "2": 10}, "created": float("nan")}, "a time in seconds"),
        ({"versions": {"1": 90, "2": 10}, "created": float("inf")}, "a time in seconds"),
        ({"versions": {"1": 90, "2": 10}, "auto_abort": {"max_error_rate": float("nan")}}, "a fraction"),
    ],
)
def test_bad_splits_say_what_is_wrong(raw: object, why: str) -> None:
    with pytest.raises(AdapterRejected, match=why) as caught:
        parse_split(raw, "split")
    assert caught.value.code == "bad_split"


@pytest.fixture
def live(base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]) -> Iterator[tuple[str, Path, object]]:
    """A gateway serving ``shop`` v1 (alpha's answer) and v2 (beta's): v2 is in the directory."""
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    app = create_app(make_settings(base_model, directory, admin_key="split-admin"))
    with running_server(app) as url:
        shutil.copytree(trained_adapters["alpha"], directory / "shop")
        wait_for(lambda: serving(url) == 1, timeout=60)
        publish_adapter(trained_adapters["beta"], "shop", directory)
        wait_for(lambda: serving(url) == 2, timeout=60)
        yield url, directory, app


def adapter(url: str) -> dict:  # type: ignore[type-arg]
    found = httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]
    return next((a for a in found if a["name"] == "shop"), {})


def serving(url: str) -> int | None:
    return adapter(url).get("active_version")


def answered(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-adapter-version"]


async def ask_all(url: str, users: list[str], *, header: bool = False) -> list[str]:
    limits = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(user: str) -> str:
            body = {"model": "shop", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            async with limits:
                if header:
                    response = await client.post("/v1/chat/completions", json=body, headers={"X-User-Id": user})
                else:
                    response = await client.post("/v1/chat/completions", json={**body, "user": user})
            return answered(response)

        return list(await asyncio.gather(*(one(u) for u in users)))


def test_a_90_10_split_sends_a_tenth_of_users_to_the_canary_and_keeps_each_user_on_one_version(
    live: tuple[str, Path, object],
) -> None:
    url, directory, _ = live
    response = httpx.put(f"{url}/v1/adapters/shop/split", json={"versions": {"1": 90, "2": 10}}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["split"]["versions"] == {"1": 90, "2": 10} and response.json()["split"]["baseline"] == 2
    on_disk = json.loads((directory / "shop" / SPLIT_FILE).read_text())
    assert on_disk["versions"] == {"1": 90, "2": 10} and on_disk["salt"] == response.json()["split"]["salt"]

    users = [f"customer-{i}" for i in range(2000)]
    first = asyncio.run(ask_all(url, users))
    share = first.count("shop@2") / len(users)
    assert 0.05 <= share <= 0.15, share
    assert set(first) == {"shop@1", "shop@2"}
    again = asyncio.run(ask_all(url, users[:300], header=True))  # the header names the same users
    assert again == first[:300]

    # The answer really comes from the version the header names (what each was trained to say).
    canary_user = users[first.index("shop@2")]
    baseline_user = users[first.index("shop@1")]
    for user, expected in ((canary_user, ANSWERS["beta"]), (baseline_user, ANSWERS["alpha"])):
        body = {"model": "shop", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "user": user}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        assert reply["choices"][0]["message"]["content"] == expected
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "lora_gateway_requests_total", model="shop", version="1", status="200") >= 1700


def test_bad_splits_are_refused_and_change_nothing(live: tuple[str, Path, object]) -> None:
    url, directory, _ = live
    for body, code in (
        ({"versions": {"1": 90, "2": 20}}, 400),
        ({"versions": {"1": 90, "7": 10}}, 400),
        ({"canary": 10}, 400),
    ):
        response = httpx.put(f"{url}/v1/adapters/shop/split", json=body, headers=ADMIN)
        assert response.status_code == code, response.text
        assert response.json()["error"]["code"] == "bad_split"
    assert (
        "not kept"
        in httpx.put(f"{url}/v1/adapters/shop/split", json={"versions": {"1": 90, "7": 10}}, headers=ADMIN).json()[
            "error"
        ]["message"]
    )
    assert adapter(url)["split"] is None and not (directory / "shop" / SPLIT_FILE).exists()
    assert (
        httpx.put(f"{url}/v1/adapters/nobody/split", json={"versions": {"1": 50, "2": 50}}, headers=ADMIN).status_code
        == 404
    )
    assert httpx.post(f"{url}/v1/adapters/shop/promote", headers=ADMIN).json()["error"]["code"] == "no_split"


def test_promote_and_abort_under_load_fail_no_request(live: tuple[str, Path, object]) -> None:
    url, directory, _ = live

    async def scenario() -> list[int]:
        statuses: list[int] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def load(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    body = {"model": "shop", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
                    response = await client.post("/v1/chat/completions", json={**body, "user": f"u{worker}-{i}"})
                    statuses.append(response.status_code)
                    i += 1

            async def admin() -> None:
                async def call(method: str, path: str, body: object = None) -> dict:  # type: ignore[type-arg]
                    response = await client.request(method, path, json=body, headers=ADMIN)
                    assert response.status_code == 200, response.text
                    await asyncio.sleep(0.3)
                    return response.json()  # type: ignore[no-any-return]

                await call("PUT", "/v1/adapters/shop/split", {"versions": {"1": 50, "2": 50}})
                ended = await call("POST", "/v1/adapters/shop/abort")  # back to the baseline, v2
                assert ended["split"] is None and ended["active_version"] == 2
                await call("PUT", "/v1/adapters/shop/split", {"versions": {"2": 80, "1": 20}})
                promoted = await call("POST", "/v1/adapters/shop/promote", {"version": 1})  # a kept version
                assert promoted["split"] is None and promoted["active_version"] == 1
                await call("PUT", "/v1/adapters/shop/split", {"versions": {"1": 10, "2": 90}})
                rolled = await call("POST", "/v1/adapters/shop/rollback", {"version": 2})
                assert rolled["split"] is None and rolled["active_version"] == 2
                stop.set()

            await asyncio.gather(admin(), *(load(w) for w in range(4)))
        return statuses

    statuses = asyncio.run(scenario())
    assert len(statuses) > 20 and set(statuses) == {200}
    assert not (directory / "shop" / SPLIT_FILE).exists()
    assert serving(url) == 2


def test_a_canary_file_published_with_new_weights_takes_its_share_at_once(
    live: tuple[str, Path, object], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    url, directory, _ = live
    canary = tmp_path / "canary"
    shutil.copytree(trained_adapters["alpha"], canary)
    (canary / SPLIT_FILE).write_text(json.dumps({"canary": 30}))
    publish_adapter(canary, "shop", directory)  # alpha's weights again: kept version 1 is the canary
    wait_for(lambda: adapter(url).get("split") is not None, timeout=60)
    split = adapter(url)["split"]
    assert split["versions"] == {"2": 70, "1": 30} and split["baseline"] == 2
    assert json.loads((directory / "shop" / SPLIT_FILE).read_text())["salt"] == split["salt"]  # now explicit
    shares = Counter(asyncio.run(ask_all(url, [f"c{i}" for i in range(300)])))
    assert 0.2 <= shares["shop@1"] / 300 <= 0.4, shares


def test_a_split_and_pins_survive_a_restart(
    base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    settings = make_settings(base_model, directory, admin_key="split-admin")
    with running_server(create_app(settings)) as url:
        shutil.copytree(trained_adapters["alpha"], directory / "shop")
        wait_for(lambda: serving(url) == 1, timeout=60)
        publish_adapter(trained_adapters["beta"], "shop", directory)
        wait_for(lambda: serving(url) == 2, timeout=60)
        assert (
            httpx.put(f"{url}/v1/adapters/shop/split", json={"versions": {"1": 50, "2": 50}}, headers=ADMIN).status_code
            == 200
        )
        assert httpx.post(f"{url}/v1/adapters/shop/pin", json={"version": 1}, headers=ADMIN).status_code == 200
        users = [f"r{i}" for i in range(60)]
        before = asyncio.run(ask_all(url, users))
        split = adapter(url)["split"]
    with running_server(create_app(settings)) as url:
        wait_for(lambda: adapter(url).get("split") is not None, timeout=60)
        assert adapter(url)["split"] == split
        assert asyncio.run(ask_all(url, users)) == before
        history = httpx.get(f"{url}/v1/adapters/shop/versions", headers=ADMIN).json()["data"]
        assert [(v["version"], v["pinned"]) for v in history] == [(2, False), (1, True)]


def test_a_scripted_error_rate_on_the_canary_aborts_the_split(live: tuple[str, Path, object]) -> None:
    url, directory, app = live
    rule = {"max_error_rate": 0.5, "window_s": 60, "min_events": 5}
    response = httpx.put(
        f"{url}/v1/adapters/shop/split", json={"versions": {"2": 50, "1": 50}, "auto_abort": rule}, headers=ADMIN
    )
    assert response.status_code == 200, response.text

    def explode(request) -> None:  # type: ignore[no-untyped-def]
        if request.adapter is not None and request.adapter.path.rstrip("/").endswith("/1/shop"):
            raise RuntimeError("scripted failure of the canary")

    with engine_hook(app, explode):
        results = asyncio.run(ask_all_statuses(url, [f"e{i}" for i in range(40)]))
    assert 500 in results and 200 in results
    wait_for(lambda: adapter(url).get("split") is None, timeout=30)
    assert serving(url) == 2 and not (directory / "shop" / SPLIT_FILE).exists()
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "lora_gateway_split_aborts_total", model="shop") == 1


async def ask_all_statuses(url: str, users: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        statuses = []
        for user in users:  # one at a time: the abort lands between two requests
            body = {"model": "shop", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "user": user}
            statuses.append((await client.post("/v1/chat/completions", json=body)).status_code)
        return statuses


def test_the_cli_splits_promotes_and_aborts_through_the_files_a_running_gateway_follows(
    live: tuple[str, Path, object], capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    url, directory, _ = live
    where = ["--adapters-dir", str(directory)]
    with pytest.raises(SystemExit, match="sum to 100"):
        main(["adapters", "split", "shop", "--version", "1=50", "--version", "2=60", *where])
    with pytest.raises(SystemExit, match="not kept"):
        main(["adapters", "split", "shop", "--version", "1=50", "--version", "9=50", *where])
    assert not (directory / "shop" / SPLIT_FILE).exists()
    assert main(["adapters", "split", "shop", "--version", "1=40", "--version", "2=60", *where]) == 0
    assert "baseline v2" in capsys.readouterr().out
    wait_for(lambda: (adapter(url).get("split") or {}).get("versions") == {"1": 40, "2": 60}, timeout=30)
    assert main(["adapters", "abort", "shop", *where]) == 0
    wait_for(lambda: adapter(url).get("split") is None, timeout=30)
    assert serving(url) == 2
    main(["adapters", "split", "shop", "--version", "1=40", "--version", "2=60", *where])
    wait_for(lambda: adapter(url).get("split") is not None, timeout=30)
    assert main(["adapters", "promote", "shop", *where]) == 0  # the one version besides the baseline
    wait_for(lambda: serving(url) == 1 and adapter(url).get("split") is None, timeout=30)
    with pytest.raises(SystemExit, match="no traffic split"):
        main(["adapters", "abort", "shop", *where])


def test_a_canary_counts_one_vote_per_end_user_and_answer(
    base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """One answer rated -1 twenty times by one user is one opinion (it used to meet min_events 20
    alone and abort the canary); five users' votes on five answers are five."""
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    with running_server(
        create_app(make_settings(base_model, directory, admin_key="split-admin", feedback=True))
    ) as url:
        shutil.copytree(trained_adapters["alpha"], directory / "shop")
        wait_for(lambda: serving(url) == 1, timeout=60)
        publish_adapter(trained_adapters["beta"], "shop", directory)
        wait_for(lambda: serving(url) == 2, timeout=60)
        rule = {"max_negative_rate": 0.5, "window_s": 600, "min_events": 5}
        body = {"versions": {"2": 50, "1": 50}, "auto_abort": rule}
        assert httpx.put(f"{url}/v1/adapters/shop/split", json=body, headers=ADMIN).status_code == 200

        def canary_answers(count: int, prefix: str) -> list[tuple[str, str]]:
            found = []
            for i in range(400):
                ask = {"model": "shop", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
                response = httpx.post(f"{url}/v1/chat/completions", json={**ask, "user": f"{prefix}{i}"}, timeout=60)
                if response.headers["x-adapter-version"] == "shop@1":  # the canary (v2 served before the split)
                    found.append((response.json()["id"], f"{prefix}{i}"))
                    if len(found) == count:
                        return found
            raise AssertionError("the split never sent a user to the canary")

        (answer, user), *_ = canary_answers(1, "one-")
        for _ in range(20):
            rated = httpx.post(f"{url}/v1/feedback", json={"completion_id": answer, "rating": -1, "user": user})
            assert rated.status_code == 200, rated.text
        assert adapter(url).get("split") is not None  # one user's twenty votes did not abort it
        for answer, user in canary_answers(4, "many-"):
            httpx.post(f"{url}/v1/feedback", json={"completion_id": answer, "rating": -1, "user": user})
        wait_for(lambda: adapter(url).get("split") is None, timeout=30)
        report = httpx.get(f"{url}/v1/adapters/shop/feedback", headers=ADMIN).json()
        canary = next(row for row in report["versions"] if row["version"] == 1)
        assert canary["feedback"] == 24 and canary["raters"] == 5


def test_a_split_ends_by_evidence_and_its_report_says_why(
    base_model: Path,
    tmp_path: Path,
    trained_adapters: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Users of the canary rate it up and users of the baseline rate theirs down: at the first look
    (8 raters on each side) the canary is better beyond doubt and is promoted by itself; the split
    report (admin API and CLI) shows each version's metrics with intervals, then the verdict."""
    from server.app import create_app
    from server.cli import main

    directory = tmp_path / "adapters"
    directory.mkdir()
    settings = make_settings(base_model, directory, admin_key="split-admin", feedback=True)
    with running_server(create_app(settings)) as url:
        shutil.copytree(trained_adapters["alpha"], directory / "shop")
        wait_for(lambda: serving(url) == 1, timeout=60)
        publish_adapter(trained_adapters["beta"], "shop", directory)
        wait_for(lambda: serving(url) == 2, timeout=60)
        rules = {
            "auto_promote": {"margins": {"feedback": 0.0}, "min_sample": 8},
            "auto_abort": {"margins": {"error_rate": 0.5}},
        }
        body = {"versions": {"2": 50, "1": 50}, **rules}
        assert httpx.put(f"{url}/v1/adapters/shop/split", json=body, headers=ADMIN).status_code == 200
        rated = Counter[str]()
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(200):
                ask = {
                    "model": "shop",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1,
                    "user": f"u{i}",
                }
                answer = client.post("/v1/chat/completions", json=ask)
                version = answer.headers["x-adapter-version"]
                if i == 4:  # under way: the report counts both versions, no verdict yet
                    report = client.get("/v1/adapters/shop/split", headers=ADMIN).json()
                    assert {row["version"] for row in report["versions"]} == {1, 2} and report["verdict"] is None

                    def timed() -> bool:  # a request's latency is counted once its answer has been sent
                        rows = client.get("/v1/adapters/shop/split", headers=ADMIN).json()["versions"]
                        return sum(row["metrics"]["latency_s"]["sample"] for row in rows) >= 1

                    wait_for(timed, timeout=10)
                rating = 1 if version == "shop@1" else -1
                client.post("/v1/feedback", json={"completion_id": answer.json()["id"], "rating": rating})
                rated[version] += 1
                if adapter(url).get("split") is None:
                    break
        wait_for(lambda: serving(url) == 1 and adapter(url).get("split") is None, timeout=30)
        assert min(rated.values()) >= 8
        report = httpx.get(f"{url}/v1/adapters/shop/split", headers=ADMIN).json()
        verdict = report["last_verdict"]
        assert (verdict["action"], verdict["version"], verdict["metric"]) == ("promote", 1, "feedback")
        assert verdict["interval"]["low"] > 0 and report["split"] is None
        monkeypatch.setenv("LORA_GATEWAY_ADMIN_KEY", "split-admin")
        assert main(["adapters", "split-report", "shop", "--gateway", url]) == 0
        assert "verdict: promote: v1: feedback better than the baseline by more than 0" in capsys.readouterr().out

"""Hot-swap end to end: a real server watching a real directory, the real openai client.

Publish, replace under load, hand copies, rejections that keep the old version serving, delete,
restart, a thousand adapters, and names that try to leave the directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai import NotFoundError, OpenAI

from server.registry.publish import publish_adapter, remove_adapter
from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, metric_value, running_server, wait_for

ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture
def live(base_model: Path, adapters_dir: Path) -> Iterator[tuple[str, Path]]:
    """A gateway watching ``adapters_dir`` (which starts with alpha and beta)."""
    from server.app import create_app

    with running_server(create_app(make_settings(base_model, adapters_dir, admin_key=ADMIN_KEY))) as url:
        yield url, adapters_dir


ADMIN_KEY = "hot-swap-admin"


def registry_view(url: str, name: str) -> dict:  # type: ignore[type-arg]
    """What the registry says of ``name`` now (the admin API), or {} if it does not know it."""
    listed = httpx.get(f"{url}/v1/adapters", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]
    return next((a for a in listed if a["name"] == name), {})


def model_ids(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def answer(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", json={"model": model, "messages": ASK, "temperature": 0}, timeout=30
    )


def test_published_adapter_becomes_servable_without_restart(live, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    url, directory = live
    assert answer(url, "gamma").status_code == 404
    publish_adapter(trained_adapters["beta"], "gamma", directory)
    wait_for(lambda: "gamma" in model_ids(url))
    assert answer(url, "gamma").json()["choices"][0]["message"]["content"] == ANSWERS["beta"]
    assert not [p for p in directory.iterdir() if p.name.startswith((".staging", ".trash"))]  # staging cleaned up


def test_replacing_under_load_serves_wholly_old_or_new_and_never_fails(live, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    url, directory = live
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            while not stop.is_set():
                try:
                    stream = client.chat.completions.create(model="alpha", messages=ASK, temperature=0, stream=True)
                    results.append((200, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)))
                except Exception as exc:  # every failure is recorded, none is expected
                    results.append((0, repr(exc)))

    clients = [threading.Thread(target=client_loop) for _ in range(8)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(results) >= 8)
    publish_adapter(trained_adapters["beta"], "alpha", directory)  # alpha's next version answers like beta
    wait_for(lambda: any(text == ANSWERS["beta"] for _, text in results[-8:]))
    count = len(results)
    wait_for(lambda: len(results) >= count + 16)
    stop.set()
    for thread in clients:
        thread.join()
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    texts = [text for _, text in results]
    assert set(texts) == {ANSWERS["alpha"], ANSWERS["beta"]}  # wholly one or the other, never a mix
    assert texts[-8:] == [ANSWERS["beta"]] * 8  # new requests get the new version
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "lora_gateway_adapter_swaps_total") == 1
    wait_for(
        lambda: metric_value(httpx.get(f"{url}/metrics").text, "lora_gateway_adapters_loaded") == 2
    )  # old one drained


def test_a_hand_copy_file_by_file_is_served_once_complete(live, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    url, directory = live
    target = directory / "handmade"
    target.mkdir()
    shutil.copyfile(trained_adapters["alpha"] / "adapter_config.json", target / "adapter_config.json")
    wait_for(
        lambda: "waiting for adapter_model.safetensors" in (registry_view(url, "handmade").get("last_error") or "")
    )
    data = (trained_adapters["alpha"] / "adapter_model.safetensors").read_bytes()
    with open(target / "adapter_model.safetensors", "wb") as f:
        for start in range(0, len(data), len(data) // 4 + 1):
            f.write(data[start : start + len(data) // 4 + 1])
            f.flush()
            if f.tell() < len(data):
                # The watcher looked at this very half-written state (its size is in the reason) ...
                wait_for(lambda: str(f.tell()) in (registry_view(url, "handmade").get("last_error") or ""))
                assert registry_view(url, "handmade")["state"] == "incomplete"
                assert answer(url, "handmade").status_code == 404  # ... and did not serve it
    wait_for(lambda: "handmade" in model_ids(url))
    assert answer(url, "handmade").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "lora_gateway_adapters_rejected_total") == 0  # no error storm


def _corrupt(directory: Path, name: str, edit: Callable[[Path], None], source: Path) -> None:
    """Stage a broken copy of ``source`` and move it over ``<directory>/<name>``, as a user would."""
    staged = directory.parent / f"broken-{name}"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged)
    edit(staged)
    trash = directory.parent / f"old-{name}"
    os.rename(directory / name, trash)
    os.rename(staged, directory / name)
    shutil.rmtree(trash)


def _config(**changes: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, **changes}))

    return edit


BAD_VERSIONS: list[tuple[str, Callable[[Path], None], str]] = [
    ("dora", _config(use_dora=True), "dora"),
    ("rank", _config(r=256), "rank"),
    ("base", _config(base_model_name_or_path="someone/else"), "base_mismatch"),
    ("pickle", lambda p: (p / "adapter_model.safetensors").rename(p / "adapter_model.bin"), "pickle_weights"),
    (
        "header",
        lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{{{{{{{{{{{{{{{{"),
        "bad_safetensors",
    ),
]


@pytest.mark.parametrize(("edit", "reason"), [b[1:] for b in BAD_VERSIONS], ids=[b[0] for b in BAD_VERSIONS])
def test_a_rejected_version_leaves_the_previous_one_serving(live, trained_adapters, edit, reason) -> None:  # type: ignore[no-untyped-def]
    url, directory = live
    _corrupt(directory, "alpha", edit, trained_adapters["beta"])
    wait_for(
        lambda: (
            metric_value(httpx.get(f"{url}/metrics").text, "lora_gateway_adapters_rejected_total", reason=reason) == 1
        )
    )
    assert answer(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
    assert "alpha" in model_ids(url)


def test_deleting_unregisters_and_running_requests_finish(live) -> None:  # type: ignore[no-untyped-def]
    url, directory = live
    body = {"model": "beta", "messages": ASK, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        next(lines)
        remove_adapter("beta", directory)
        wait_for(lambda: "beta" not in model_ids(url))
        rest = "".join(lines)
    assert '"finish_reason":"stop"' in rest and "[DONE]" in rest  # the running stream finished
    with OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(NotFoundError) as caught:
            client.chat.completions.create(model="beta", messages=ASK)
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_restart_recovers_what_the_directory_holds(base_model: Path, adapters_dir: Path, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app

    with running_server(create_app(make_settings(base_model, adapters_dir))) as url:
        publish_adapter(trained_adapters["alpha"], "delta", adapters_dir)
        wait_for(lambda: "delta" in model_ids(url))
        remove_adapter("beta", adapters_dir)
        wait_for(lambda: "beta" not in model_ids(url))
    with running_server(create_app(make_settings(base_model, adapters_dir))) as url:
        assert model_ids(url) == {"tiny-base", "alpha", "delta"}
        assert answer(url, "delta").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]


def test_polling_mode_follows_the_directory(base_model: Path, adapters_dir: Path, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app

    with running_server(create_app(make_settings(base_model, adapters_dir, watch_poll=0.1))) as url:
        publish_adapter(trained_adapters["beta"], "polled", adapters_dir)
        wait_for(lambda: "polled" in model_ids(url))


def test_hundreds_of_adapters_are_each_loaded_once_at_start_and_loading_stays_bounded(
    base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """ "ready" means loaded once (so a request will succeed), yet the engine never holds more than
    --max-loaded-adapters; benchmarks/scan_many.py measures 1,000."""
    from server.app import create_app

    directory = tmp_path / "many"
    directory.mkdir()
    source = trained_adapters["alpha"]
    for i in range(300):
        target = directory / f"tenant-{i:04d}"
        target.mkdir()
        os.link(source / "adapter_config.json", target / "adapter_config.json")
        os.link(source / "adapter_model.safetensors", target / "adapter_model.safetensors")
    app = create_app(make_settings(base_model, directory, max_loaded_adapters=4))
    with running_server(app, ready_timeout=120) as url:
        ready = httpx.get(f"{url}/ready").json()["adapters"]
        assert ready["ready"] == 300 and ready["scanned"] == 300
        listing = httpx.get(f"{url}/v1/models").json()["data"]
        assert len(listing) == 301
        for name in ("tenant-0299", "tenant-0150", "tenant-0001", "tenant-0002", "tenant-0003", "tenant-0150"):
            assert answer(url, name).json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
        metrics = httpx.get(f"{url}/metrics").text
        assert metric_value(metrics, "lora_gateway_adapters_loaded") <= 4  # evicted, reloaded on demand
        assert metric_value(metrics, "lora_gateway_adapters_registered") == 300


def test_concurrent_requests_beyond_the_loaded_bound_all_succeed(
    base_model: Path, tmp_path: Path, trained_adapters
) -> None:  # type: ignore[no-untyped-def]
    from openai import AsyncOpenAI

    from server.app import create_app

    directory = tmp_path / "few"
    for i in range(6):
        shutil.copytree(trained_adapters["alpha" if i % 2 else "beta"], directory / f"t{i}")
    with running_server(create_app(make_settings(base_model, directory, max_loaded_adapters=2))) as url:

        async def run() -> list[str]:
            async with AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
                replies = await asyncio.gather(
                    *(client.chat.completions.create(model=f"t{i % 6}", messages=ASK, temperature=0) for i in range(18))
                )
                return [r.choices[0].message.content or "" for r in replies]

        texts = asyncio.run(run())
    assert texts == [ANSWERS["alpha" if (i % 6) % 2 else "beta"] for i in range(18)]


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b", "..", ".hidden"])
def test_traversal_names_cannot_be_published(tmp_path: Path, trained_adapters, name: str) -> None:  # type: ignore[no-untyped-def]
    from server.registry.validation import AdapterRejected

    with pytest.raises(AdapterRejected):
        publish_adapter(trained_adapters["alpha"], name, tmp_path / "adapters")
    assert not (tmp_path / "escape").exists()


def test_symlinks_out_of_the_directory_are_refused(live, trained_adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, directory = live
    outside = tmp_path / "outside-adapter"
    shutil.copytree(trained_adapters["alpha"], outside)
    (directory / "sneaky").symlink_to(outside)
    wait_for(
        lambda: (
            metric_value(
                httpx.get(f"{url}/metrics").text, "lora_gateway_adapters_rejected_total", reason="outside_directory"
            )
            == 1
        )
    )
    assert "sneaky" not in model_ids(url)


def test_an_evicted_version_reloads_what_was_validated(base_model: Path, adapters_dir: Path, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    """alpha is evicted (one engine slot), then its live files are replaced by a bad version: the
    next alpha request reloads alpha's own durable copy, not the bad files."""
    from server.app import create_app

    with running_server(create_app(make_settings(base_model, adapters_dir, max_loaded_adapters=1))) as url:
        assert answer(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
        assert answer(url, "beta").json()["choices"][0]["message"]["content"] == ANSWERS["beta"]  # evicts alpha
        _corrupt(adapters_dir, "alpha", _config(use_dora=True), trained_adapters["beta"])
        wait_for(lambda: metric_value(httpx.get(f"{url}/metrics").text, "lora_gateway_adapters_rejected_total") == 1)
        assert answer(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
        # Overwriting the live file in place (same inode) never reaches the loaded copy; the changed
        # files are validated and become beta's next version.
        assert answer(url, "beta").status_code == 200  # evicts alpha again
        weights = adapters_dir / "beta" / "adapter_model.safetensors"
        with open(weights, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"\0\0\0\0")
        os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert answer(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]  # evicts beta
        wait_for(lambda: metric_value(httpx.get(f"{url}/metrics").text, "lora_gateway_adapter_swaps_total") == 1)
        assert answer(url, "beta").status_code == 200


def test_a_missing_adapters_directory_is_created_and_followed(
    base_model: Path,
    tmp_path: Path,
    trained_adapters,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    from server.app import create_app

    directory = tmp_path / "not-yet" / "adapters"
    with caplog.at_level(logging.INFO), running_server(create_app(make_settings(base_model, directory))) as url:
        assert directory.is_dir()
        shutil.copytree(trained_adapters["alpha"], directory / "late")
        wait_for(lambda: answer(url, "late").status_code == 200, timeout=30)
        assert answer(url, "late").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("created the adapters directory" in m for m in messages)
    assert not any("base model only" in m for m in messages)

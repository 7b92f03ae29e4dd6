"""Adapters from object storage and the Hub (``registry/sources.py``, ``source_watch.py``): a real
S3-compatible server (moto) on 127.0.0.1, a Hub cache laid out as huggingface_hub writes it, real
trained adapters, a real gateway and the real ``lora-gateway`` command. Nothing leaves the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.registry.source_watch import SourceWatcher
from server.registry.sources import SourceConfig, SourceURL, fetched, is_remote
from server.registry.validation import AdapterRejected
from server.terms.layout import CONFIG_FILE, GATE_FILE, STAGING_PREFIX, WEIGHTS_FILE
from tests.conftest import make_settings
from tests.registry.s3_server import S3_ENV, delete_prefix, hub_cache, s3_client, s3_server, upload
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN_KEY = "admin-sources"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    with s3_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="models")
        yield endpoint, client


def config(endpoint: str, **overrides: Any) -> SourceConfig:
    values: dict[str, Any] = {"options": {"s3": {"endpoint_url": endpoint}}, "timeout": 10.0}
    values.update(overrides)
    return SourceConfig(**values)


def ask(url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


# ---------------------------------------------------------------------- addresses and the operator's bounds


def test_urls_are_parsed_strictly() -> None:
    assert is_remote("s3://bucket/a") and is_remote("hf://org/repo")
    assert not is_remote("/srv/adapters/a") and not is_remote("file:///etc") and not is_remote("adapters/a")
    hub = SourceURL.parse("hf://org/repo@v2/adapters/shop")
    assert (hub.scheme, hub.location, hub.revision) == ("hf", "org/repo/adapters/shop", "v2")
    assert str(hub) == "hf://org/repo@v2/adapters/shop"
    assert str(SourceURL.parse("s3://bucket//team/a/")) == "s3://bucket/team/a"
    for bad in ("s3://key:secret@bucket/a", "s3://bucket/a?endpoint=x", "s3://bucket/../other", "hf://org", "s3://"):
        with pytest.raises(AdapterRejected):
            SourceURL.parse(bad)


def test_a_request_may_name_only_what_the_operator_allowed() -> None:
    allowed = SourceConfig(allowed=("s3://models/shop", "hf://acme/"))
    allowed.check(SourceURL.parse("s3://models/shop/alpha"), requested=True)
    allowed.check(SourceURL.parse("hf://acme/support@main"), requested=True)
    for outside in ("s3://models/shopping/alpha", "s3://other/shop/alpha", "hf://evil/repo"):
        with pytest.raises(AdapterRejected) as refused:
            allowed.check(SourceURL.parse(outside), requested=True)
        assert refused.value.reason == "source_not_allowed"
    with pytest.raises(AdapterRejected, match="--adapter-sources"):  # none allowed: local paths only
        SourceConfig().check(SourceURL.parse("s3://models/shop/alpha"), requested=True)
    SourceConfig().check(SourceURL.parse("s3://models/shop/alpha"), requested=False)  # the operator's own CLI
    with pytest.raises(AdapterRejected, match="not enabled"):
        SourceConfig(schemes=("s3",)).check(SourceURL.parse("hf://acme/a"), requested=False)
    pinned = SourceConfig(allowed=("hf://acme/support@v1",))
    with pytest.raises(AdapterRejected):
        pinned.check(SourceURL.parse("hf://acme/support@main"), requested=True)


# ---------------------------------------------------------------------- S3


def test_an_s3_adapter_is_fetched_whole_and_bounded(
    s3: tuple[str, Any], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    endpoint, client = s3
    upload(client, "models", "fetch/alpha", trained_adapters["alpha"])
    client.put_object(Bucket="models", Key="fetch/alpha/notes.pkl", Body=b"never fetched")
    with fetched("s3://models/fetch/alpha", tmp_path, config(endpoint), requested=False) as staged:
        assert staged.name.startswith(STAGING_PREFIX)  # inside the adapters directory, ignored by its watcher
        assert (staged / WEIGHTS_FILE).read_bytes() == (trained_adapters["alpha"] / WEIGHTS_FILE).read_bytes()
        assert (staged / CONFIG_FILE).is_file() and not (staged / "notes.pkl").exists()
    assert list(tmp_path.iterdir()) == []

    weights = (trained_adapters["alpha"] / WEIGHTS_FILE).stat().st_size
    with pytest.raises(AdapterRejected) as too_large:  # refused from the listing: nothing downloaded
        with fetched("s3://models/fetch/alpha", tmp_path, config(endpoint, max_bytes=weights - 1), requested=False):
            pass
    assert too_large.value.reason == "too_large" and list(tmp_path.iterdir()) == []
    client.put_object(Bucket="models", Key="fetch/half/adapter_config.json", Body=b"{}")
    with pytest.raises(AdapterRejected, match=WEIGHTS_FILE):
        with fetched("s3://models/fetch/half", tmp_path, config(endpoint), requested=False):
            pass
    with pytest.raises(AdapterRejected) as unreachable:  # a dead endpoint: a clear refusal within the timeout
        with fetched("s3://models/fetch/alpha", tmp_path, config("http://127.0.0.1:9", timeout=1.0), requested=False):
            pass
    assert unreachable.value.reason == "source_unavailable"


def test_the_gate_and_its_test_set_travel_with_the_adapter(
    s3: tuple[str, Any], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    endpoint, client = s3
    upload(client, "models", "gated/alpha", trained_adapters["alpha"])
    client.put_object(Bucket="models", Key=f"gated/alpha/{GATE_FILE}", Body=b'{"test_set": "cases.jsonl"}')
    client.put_object(Bucket="models", Key="gated/alpha/cases.jsonl", Body=b'{"messages": []}\n')
    with fetched("s3://models/gated/alpha", tmp_path, config(endpoint), requested=False) as staged:
        assert (staged / "cases.jsonl").read_bytes() == b'{"messages": []}\n'


def test_the_admin_api_installs_from_s3_and_the_hub(
    s3: tuple[str, Any], base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """Fetched, then the same install as a local path: validated, loaded, written into the
    directory, served; a URL the operator did not allow is refused before anything is fetched."""
    from server.app import create_app

    endpoint, client = s3
    upload(client, "models", "shop/alpha", trained_adapters["alpha"])
    upload(client, "models", "private/beta", trained_adapters["beta"])
    hub = tmp_path / "hub"
    files = {f.name: f.read_bytes() for f in trained_adapters["beta"].iterdir() if f.is_file()}
    hub_cache(hub, "acme/support-beta", {f"adapters/{k}": v for k, v in files.items()})
    adapters = tmp_path / "adapters"
    settings = make_settings(
        base_model,
        adapters,
        admin_key=ADMIN_KEY,
        adapter_sources=["s3://models/shop", "hf://acme/"],
        source_options={"s3": {"endpoint_url": endpoint}, "hf": {"cache_dir": str(hub)}},
    )
    with running_server(create_app(settings)) as url:
        load = {"lora_name": "alpha", "lora_path": "s3://models/shop/alpha"}
        assert httpx.post(f"{url}/v1/load_lora_adapter", json=load, headers=ADMIN, timeout=60).status_code == 200
        assert ask(url, "alpha") == ANSWERS["alpha"]
        assert (adapters / "alpha" / WEIGHTS_FILE).read_bytes() == (
            trained_adapters["alpha"] / WEIGHTS_FILE
        ).read_bytes()

        refused = httpx.post(
            f"{url}/v1/load_lora_adapter",
            json={"lora_name": "beta", "lora_path": "s3://models/private/beta"},
            headers=ADMIN,
            timeout=60,
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "source_not_allowed"
        assert refused.json()["error"]["param"] == "lora_path"

        hub_load = {"lora_name": "beta", "lora_path": "hf://acme/support-beta@main/adapters"}
        loaded = httpx.post(f"{url}/v1/load_lora_adapter", json=hub_load, headers=ADMIN, timeout=60)
        assert loaded.status_code == 200, loaded.text
        assert ask(url, "beta") == ANSWERS["beta"]
        missing = httpx.post(
            f"{url}/v1/load_lora_adapter",
            json={"lora_name": "gamma", "lora_path": "hf://acme/not-cached"},
            headers=ADMIN,
            timeout=60,
        )
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "source_unavailable"
        assert "gamma" not in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert not [p for p in adapters.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_adapters_publish_takes_a_url(s3: tuple[str, Any], trained_adapters: dict[str, Path], tmp_path: Path) -> None:
    endpoint, client = s3
    upload(client, "models", "cli/beta", trained_adapters["beta"])
    env = {
        **os.environ,
        **S3_ENV,
        "LORA_GATEWAY_SOURCE_OPTIONS": f'{{"s3": {{"endpoint_url": "{endpoint}"}}}}',
    }
    adapters = tmp_path / "adapters"
    command = [sys.executable, "-m", "server", "adapters", "publish", "s3://models/cli/beta", "--name", "beta"]
    done = subprocess.run([*command, "--adapters-dir", str(adapters)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (adapters / "beta" / WEIGHTS_FILE).read_bytes() == (trained_adapters["beta"] / WEIGHTS_FILE).read_bytes()
    bad = subprocess.run(
        [*command[:5], "s3://models/cli/none", "--name", "none", "--adapters-dir", str(adapters)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "not published" in bad.stderr and not (adapters / "none").exists()


# ---------------------------------------------------------------------- a watched source


def test_a_watched_source_publishes_each_new_version_once(
    s3: tuple[str, Any], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """Two gateways' directories follow one bucket; a bad adapter in it is refused and keeps
    nothing else from being taken; removed from the bucket, a name leaves the directories."""
    endpoint, client = s3
    upload(client, "models", "fleet/alpha", trained_adapters["alpha"])
    client.put_object(Bucket="models", Key="fleet/broken/adapter_config.json", Body=b"{}")
    client.put_object(Bucket="models", Key="fleet/broken/adapter_model.safetensors", Body=b"not safetensors")
    client.put_object(Bucket="models", Key="fleet/Bad Name/adapter_config.json", Body=b"{}")
    (tmp_path / "one" / "local").mkdir(parents=True)  # published locally: never touched by the source
    fleet = [
        SourceWatcher("s3://models/fleet", tmp_path / name, config(endpoint), check=lambda p: _headers(p))
        for name in ("one", "two")
    ]
    for watcher in fleet:
        assert watcher.poll() == ["alpha"]
        assert watcher.poll() == []  # unchanged: nothing downloaded again
        assert not (watcher.adapters_dir / "broken").exists()
    assert (tmp_path / "two" / "alpha" / WEIGHTS_FILE).read_bytes() == (
        trained_adapters["alpha"] / WEIGHTS_FILE
    ).read_bytes()

    upload(client, "models", "fleet/alpha", trained_adapters["beta"])  # a new version of alpha
    restarted = SourceWatcher("s3://models/fleet", tmp_path / "one", config(endpoint), check=_headers)
    assert restarted.poll() == ["alpha"]  # its record survives a restart: only what changed comes
    assert (tmp_path / "one" / "alpha" / WEIGHTS_FILE).read_bytes() == (
        trained_adapters["beta"] / WEIGHTS_FILE
    ).read_bytes()

    delete_prefix(client, "models", "fleet/alpha")
    assert restarted.poll() == []
    assert not (tmp_path / "one" / "alpha").exists() and (tmp_path / "one" / "local").is_dir()


def test_a_source_that_lists_empty_at_once_takes_its_adapters_out_only_when_a_second_look_agrees(
    s3: tuple[str, Any], trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    endpoint, client = s3
    upload(client, "models", "shrinking/alpha", trained_adapters["alpha"])
    watcher = SourceWatcher("s3://models/shrinking", tmp_path, config(endpoint), check=_headers)
    assert watcher.poll() == ["alpha"]
    delete_prefix(client, "models", "shrinking/alpha")
    watcher.poll()
    assert (tmp_path / "alpha").is_dir()  # one empty listing: kept
    watcher.poll()
    assert not (tmp_path / "alpha").exists()  # the second agrees: gone


def _headers(path: Path) -> None:
    from server.registry.validation import inspect_adapter

    inspect_adapter(path, max_lora_rank=64, max_bytes=2**30)


def test_a_gateway_follows_its_adapters_source(
    s3: tuple[str, Any], base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path
) -> None:
    from server.app import create_app

    endpoint, client = s3
    settings = make_settings(
        base_model,
        tmp_path / "adapters",
        adapters_source="s3://models/served",
        adapters_source_interval=0.3,
        source_options={"s3": {"endpoint_url": endpoint}},
    )
    with running_server(create_app(settings)) as url:
        upload(client, "models", "served/beta", trained_adapters["beta"])

        def served() -> set[str]:
            return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}

        wait_for(lambda: "beta" in served(), timeout=30)
        assert ask(url, "beta") == ANSWERS["beta"]
        status = httpx.get(f"{url}/ready").json()
        assert status["adapters_source"]["url"] == "s3://models/served" and status["adapters_source"]["polls"] >= 1
        assert status["adapters_source"]["last_error"] is None and status["bases"] == ["tiny-base"]
        delete_prefix(client, "models", "served/beta")
        wait_for(lambda: "beta" not in served(), timeout=30)

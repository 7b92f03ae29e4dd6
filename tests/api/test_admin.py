"""Admin API: /v1/adapters, reload, and vLLM's load/unload endpoints, behind --admin-key."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings
from tests.crafted_adapters import CRAFTED, stalled
from tests.support import ANSWERS, QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer admin-secret"}
INFER = {"Authorization": "Bearer infer-key"}
ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture
def admin_url(base_model: Path, adapters_dir: Path) -> Iterator[str]:
    from server.app import create_app

    app = create_app(make_settings(base_model, adapters_dir, admin_key="admin-secret", api_key=["infer-key"]))
    with running_server(app) as url:
        yield url


def chat(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers=INFER,
        json={"model": model, "messages": ASK, "temperature": 0},
        timeout=30,
    )


def test_list_adapters_describes_each_one(admin_url: str, adapters_dir: Path, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    chat(admin_url, "alpha")  # loading reads the weights, which computes the sha256
    bad = adapters_dir / "broken"
    shutil.copytree(trained_adapters["alpha"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "r": 512}))
    httpx.post(f"{admin_url}/v1/adapters/broken/reload", headers=ADMIN)
    data = {a["name"]: a for a in httpx.get(f"{admin_url}/v1/adapters", headers=ADMIN).json()["data"]}
    alpha = data["alpha"]
    assert alpha["state"] == "ready" and alpha["active_version"] == 1 and alpha["loaded"] is True
    assert alpha["rank"] == 8 and alpha["alpha"] == 16.0 and "q_proj" in alpha["target_modules"]
    assert alpha["base_model"] and len(alpha["sha256"]) == 64 and alpha["last_error"] is None
    assert alpha["path"] == str(adapters_dir / "alpha")
    assert data["broken"]["state"] == "rejected" and "max_lora_rank" in data["broken"]["last_error"]


def test_vllm_load_and_unload_endpoints(admin_url: str, adapters_dir: Path, trained_adapters) -> None:  # type: ignore[no-untyped-def]
    body = {"lora_name": "omega", "lora_path": str(trained_adapters["beta"])}
    response = httpx.post(f"{admin_url}/v1/load_lora_adapter", headers=ADMIN, json=body)
    assert response.status_code == 200 and "omega" in response.text
    assert (adapters_dir / "omega" / "adapter_model.safetensors").exists()  # the directory stays the truth
    assert chat(admin_url, "omega").json()["choices"][0]["message"]["content"] == ANSWERS["beta"]
    again = httpx.post(f"{admin_url}/v1/load_lora_adapter", headers=ADMIN, json=body)
    assert again.status_code == 400 and again.json()["error"]["code"] == "adapter_exists"
    inplace = httpx.post(
        f"{admin_url}/v1/load_lora_adapter",
        headers=ADMIN,
        json={"lora_name": "omega", "lora_path": str(trained_adapters["alpha"]), "load_inplace": True},
    )
    assert inplace.status_code == 200
    assert chat(admin_url, "omega").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
    gone = httpx.post(f"{admin_url}/v1/unload_lora_adapter", headers=ADMIN, json={"lora_name": "omega"})
    assert gone.status_code == 200 and not (adapters_dir / "omega").exists()
    assert chat(admin_url, "omega").status_code == 404
    missing = httpx.post(f"{admin_url}/v1/unload_lora_adapter", headers=ADMIN, json={"lora_name": "omega"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_bad_adapter_is_refused_before_touching_the_directory(
    admin_url: str, adapters_dir: Path, trained_adapters, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    shutil.copytree(trained_adapters["beta"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    response = httpx.post(
        f"{admin_url}/v1/load_lora_adapter",
        headers=ADMIN,
        json={"lora_name": "alpha", "lora_path": str(bad), "load_inplace": True},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "dora"
    assert json.loads((adapters_dir / "alpha" / "adapter_config.json").read_text()).get("use_dora") is not True
    assert chat(admin_url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", ".hidden", "x" * 80])
def test_traversal_names_are_refused(admin_url: str, trained_adapters, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(
        f"{admin_url}/v1/load_lora_adapter",
        headers=ADMIN,
        json={"lora_name": name, "lora_path": str(trained_adapters["alpha"])},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_name"
    unload = httpx.post(f"{admin_url}/v1/unload_lora_adapter", headers=ADMIN, json={"lora_name": name})
    assert unload.status_code == 400
    assert not (tmp_path / "escape").exists()


def test_reload_reports_unknown_names(admin_url: str) -> None:
    response = httpx.post(f"{admin_url}/v1/adapters/nope/reload", headers=ADMIN)
    assert response.status_code == 404


@pytest.mark.parametrize("headers", [{}, INFER, {"Authorization": "Bearer wrong"}])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/adapters"),
        ("POST", "/v1/adapters/alpha/reload"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
    ],
)
def test_admin_endpoints_need_the_admin_key(admin_url: str, headers: dict[str, str], method: str, path: str) -> None:
    response = httpx.request(method, f"{admin_url}{path}", headers=headers, json={"lora_name": "alpha"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_admin_key_does_not_work_for_inference(admin_url: str) -> None:
    response = httpx.post(f"{admin_url}/v1/chat/completions", headers=ADMIN, json={"model": "alpha", "messages": ASK})
    assert response.status_code == 401


def test_admin_api_is_disabled_without_a_key(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/v1/adapters")
    assert response.status_code == 403 and "--admin-key" in response.json()["error"]["message"]


def _adapters(url: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {a["name"]: a for a in httpx.get(f"{url}/v1/adapters", headers=ADMIN).json()["data"]}


def test_a_load_peft_refuses_leaves_the_victim_serving_across_a_restart(
    base_model: Path,
    adapters_dir: Path,
    trained_adapters,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Passes the header checks, fails in peft (a target module the base lacks): 400, the victim's
    files untouched, and after a restart the victim is still served (not "ready" and failing)."""
    from server.app import create_app

    bad = tmp_path / "bad"
    shutil.copytree(trained_adapters["beta"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "no_such_proj"]}))
    before = (adapters_dir / "alpha" / "adapter_model.safetensors").read_bytes()
    settings = make_settings(base_model, adapters_dir, admin_key="admin-secret", api_key=["infer-key"])
    with running_server(create_app(settings)) as url:
        response = httpx.post(
            f"{url}/v1/load_lora_adapter",
            headers=ADMIN,
            json={"lora_name": "alpha", "lora_path": str(bad), "load_inplace": True},
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_target", response.text
        assert "no_such_proj" in response.json()["error"]["message"]
        assert (adapters_dir / "alpha" / "adapter_model.safetensors").read_bytes() == before
        assert chat(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
    with running_server(create_app(settings)) as url:
        assert chat(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
        assert _adapters(url)["alpha"]["serving"]["from"] == "directory"


def test_a_restart_serves_the_last_good_version_and_says_so(
    base_model: Path,
    adapters_dir: Path,
    trained_adapters,  # type: ignore[no-untyped-def]
) -> None:
    from server.app import create_app

    settings = make_settings(base_model, adapters_dir, admin_key="admin-secret", api_key=["infer-key"], max_lora_rank=8)
    with running_server(create_app(settings)) as url:
        good = _adapters(url)["alpha"]
        # A newer alpha above --max-lora-rank arrives: refused, the good one keeps serving.
        config = json.loads((adapters_dir / "alpha" / "adapter_config.json").read_text())
        (adapters_dir / "alpha" / "adapter_config.json").write_text(json.dumps({**config, "r": 16}))
        httpx.post(f"{url}/v1/adapters/alpha/reload", headers=ADMIN)
    with running_server(create_app(settings)) as url:
        assert chat(url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]
        alpha = _adapters(url)["alpha"]
        assert alpha["state"] == "ready"
        assert alpha["serving"] == {"version": good["active_version"], "sha256": good["sha256"], "from": "kept"}
        assert alpha["rejected"]["reason"] == "rank" and "max_lora_rank" in alpha["rejected"]["message"]
        # Rolling back writes the kept version into the directory: served from there again.
        rolled = httpx.post(
            f"{url}/v1/adapters/alpha/rollback", headers=ADMIN, json={"version": good["active_version"]}
        )
        assert rolled.status_code == 200 and rolled.json()["serving"]["from"] == "directory"
        assert rolled.json()["rejected"] is None
        assert json.loads((adapters_dir / "alpha" / "adapter_config.json").read_text())["r"] == 8
        missing = httpx.post(f"{url}/v1/adapters/alpha/rollback", headers=ADMIN, json={"version": 99})
        assert missing.status_code == 404 and "kept" in missing.json()["error"]["message"]


def test_crafted_adapters_are_precise_400s_through_the_api(
    admin_url: str,
    adapters_dir: Path,
    trained_adapters,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    for label, break_it, reason in CRAFTED:
        bad = tmp_path / label.replace(" ", "-").replace("'", "")
        shutil.copytree(trained_adapters["beta"], bad)
        break_it(bad)
        with stalled():  # the server runs in this process: a half copy counts as one that stopped
            response = httpx.post(
                f"{admin_url}/v1/load_lora_adapter",
                headers=ADMIN,
                timeout=30,
                json={"lora_name": "alpha", "lora_path": str(bad), "load_inplace": True},
            )
        assert response.status_code == 400, (label, response.text)
        assert response.json()["error"]["code"] == reason, (label, response.text)
    long_path = httpx.post(
        f"{admin_url}/v1/load_lora_adapter",
        headers=ADMIN,
        json={"lora_name": "gamma", "lora_path": "/tmp/" + "x" * 4000},
    )
    assert long_path.status_code == 400 and long_path.json()["error"]["code"] == "bad_lora_path"
    too_long = httpx.post(
        f"{admin_url}/v1/load_lora_adapter", headers=ADMIN, json={"lora_name": "gamma", "lora_path": "x" * 5000}
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "lora_path"
    assert chat(admin_url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]


def test_crafted_adapters_in_the_directory_are_rejected_not_waited_for(
    admin_url: str,
    adapters_dir: Path,  # type: ignore[no-untyped-def]
    trained_adapters,
) -> None:
    names = {}
    for index, (label, break_it, reason) in enumerate(CRAFTED):
        staging = adapters_dir / f".crafting-{index}"
        shutil.copytree(trained_adapters["beta"], staging)
        break_it(staging)
        (staging).rename(adapters_dir / f"crafted-{index}")
        names[f"crafted-{index}"] = (label, reason)
    with stalled():  # the half copies count as ones that stopped (the next rescan looks again)
        httpx.post(f"{admin_url}/v1/adapters/crafted-{len(CRAFTED) - 2}/reload", headers=ADMIN)
        httpx.post(f"{admin_url}/v1/adapters/crafted-{len(CRAFTED) - 1}/reload", headers=ADMIN)
        wait_for(lambda: all(_adapters(admin_url).get(n, {}).get("state") == "rejected" for n in names), timeout=60)
    listed = _adapters(admin_url)
    for name, (label, reason) in names.items():
        assert listed[name]["rejected"]["reason"] == reason, (label, listed[name])
    assert httpx.get(f"{admin_url}/ready").status_code == 200
    assert chat(admin_url, "alpha").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]


def test_a_lora_path_symlinked_elsewhere_is_followed_and_copied(
    admin_url: str,
    adapters_dir: Path,  # type: ignore[no-untyped-def]
    trained_adapters,
    tmp_path: Path,
) -> None:
    """The documented choice: an admin's lora_path may be a symlink (a mounted volume, a release
    link); it is resolved once and its files copied, so changes at the target later serve nothing."""
    target = tmp_path / "outside" / "release-7"
    shutil.copytree(trained_adapters["alpha"], target)
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    response = httpx.post(
        f"{admin_url}/v1/load_lora_adapter", headers=ADMIN, json={"lora_name": "linked", "lora_path": str(link)}
    )
    assert response.status_code == 200, response.text
    assert (
        not (adapters_dir / "linked").is_symlink() and (adapters_dir / "linked" / "adapter_model.safetensors").is_file()
    )
    (target / "adapter_model.safetensors").write_bytes(b"changed later")
    assert chat(admin_url, "linked").json()["choices"][0]["message"]["content"] == ANSWERS["alpha"]

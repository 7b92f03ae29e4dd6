"""/v1/models lists the base and every adapter the way vLLM does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import NotFoundError

from tests.conftest import make_settings
from tests.support import running_server


def test_list_has_base_and_adapters_with_parent_and_root(client, gateway_url: str) -> None:  # type: ignore[no-untyped-def]
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-base", "alpha", "beta"}
    raw = {m["id"]: m for m in httpx.get(f"{gateway_url}/v1/models").json()["data"]}
    assert raw["tiny-base"]["parent"] is None
    for name in ("alpha", "beta", "tiny-base"):
        assert raw[name]["root"] == name  # no filesystem path without an admin key
    for name in ("alpha", "beta"):
        assert raw[name]["parent"] == "tiny-base"
        assert raw[name]["object"] == "model" and raw[name]["owned_by"]


def test_paths_are_shown_to_admin_keys_only(base_model: Path, adapters_dir: Path) -> None:
    from server.app import create_app

    app = create_app(make_settings(base_model, adapters_dir, admin_key="admin-secret", api_key=["infer-key"]))
    with running_server(app) as url:

        def roots(key: str, path: str = "/v1/models") -> dict[str, str]:
            response = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
            body = response.json()
            return {m["id"]: m["root"] for m in body.get("data", [body])}

        assert roots("infer-key") == {"tiny-base": "tiny-base", "alpha": "alpha", "beta": "beta"}
        admin = roots("admin-secret")
        assert admin["alpha"] == str((adapters_dir / "alpha").resolve()) and admin["tiny-base"] == str(base_model)
        assert roots("infer-key") == {
            "tiny-base": "tiny-base",
            "alpha": "alpha",
            "beta": "beta",
        }  # not the admin's cache
        assert roots("infer-key", "/v1/models/alpha") == {"alpha": "alpha"}
        assert roots("admin-secret", "/v1/models/alpha")["alpha"].startswith("/")
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_retrieve_one_model(client) -> None:  # type: ignore[no-untyped-def]
    assert client.models.retrieve("beta").id == "beta"
    assert client.models.retrieve("tiny-base").id == "tiny-base"
    with pytest.raises(NotFoundError) as caught:
        client.models.retrieve("gamma")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]

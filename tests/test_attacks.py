"""The attack suite: a hostile tenant against a real gateway, on every route at once.

Each class of attack issue 32 found has its cases where the code they exercise lives; this module
holds the ones that span routes, and the index:

- secrets and outbound calls: ``registry/test_gating.py`` (an ``eval.json`` naming an endpoint or a
  key variable is refused; only the operator's ``--judges``), ``evaluation/test_judge.py``;
- executor starvation: ``engine/test_grammar_starvation.py`` (abandoned compiles never start, the
  gateway's own work goes on), ``test_serving.py`` (a second signal still saves what is pending);
- quota races: ``tenancy/test_limiter.py`` and ``api/test_keys.py`` (parallel requests reserve);
- string fields: ``api/test_fuzz.py`` (odd values, lone surrogates in every field: a 4xx naming it),
  ``feedback/test_store.py`` (a row the database refuses drops alone);
- scope on every route: here, and ``api/test_keys.py`` (feedback, playground ratings);
- retention: ``registry/test_durability.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.conftest import make_settings
from tests.support import QUESTION, running_server, wait_for

ADMIN = {"Authorization": "Bearer attack-admin"}


@pytest.fixture(scope="module")
def gateway(
    base_model: Path, tmp_path_factory: pytest.TempPathFactory, trained_adapters: dict[str, Path]
) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """A gateway serving alpha and beta, and a key of a tenant that may use beta only."""
    from server.app import create_app

    directory = tmp_path_factory.mktemp("attacks") / "adapters"
    for name in ("alpha", "beta"):
        shutil.copytree(trained_adapters[name], directory / name)
    app = create_app(make_settings(base_model, directory, admin_key="attack-admin", feedback=True))
    with running_server(app) as url:
        wait_for(lambda: len(httpx.get(f"{url}/v1/models").json()["data"]) == 3, timeout=60)
        created = httpx.post(
            f"{url}/v1/keys", json={"name": "mallory", "models": ["beta"], "base": False}, headers=ADMIN
        )
        assert created.status_code == 201, created.text
        yield url, app, {"Authorization": f"Bearer {created.json()['secret']}"}


def _admin_routes(app: Any) -> list[APIRoute]:
    """Every route behind ``require_admin_key``: its own dependencies, or its router's (FastAPI
    wraps an included router; the routes are walked through it)."""
    from server.api.admin import require_admin_key

    found: list[APIRoute] = []

    def walk(routes: list[Any], inherited: list[Any]) -> None:
        for route in routes:
            router = getattr(route, "original_router", None)
            if router is not None:
                walk(router.routes, [*inherited, *router.dependencies])
            elif isinstance(route, APIRoute):
                calls = {d.dependency for d in [*inherited, *route.dependencies]}
                calls |= {d.call for d in route.dependant.dependencies}
                if require_admin_key in calls:
                    found.append(route)

    walk(app.routes, [])
    return found


def test_no_admin_route_answers_an_inference_key(gateway: tuple[str, Any, dict[str, str]]) -> None:
    """Every route behind the admin key, found from the app (so a new one is covered the day it
    is added), refuses a tenant's key, whatever the method and path parameters."""
    url, app, tenant = gateway
    routes = _admin_routes(app)
    assert len(routes) >= 15  # adapters, versions, splits, keys, usage, audit, load/unload, feedback report
    for route in routes:
        path = route.path.replace("{name}", "alpha").replace("{ident}", "mallory").replace("{key_id}", "mallory")
        for method in route.methods:
            response = httpx.request(method, f"{url}{path}", headers=tenant, json={}, timeout=10)
            assert response.status_code in (401, 403), (method, path, response.status_code, response.text[:200])


def test_another_tenants_model_does_not_exist_on_any_inference_route(gateway: tuple[str, Any, dict[str, str]]) -> None:
    """alpha, which the tenant may not use, answers exactly as a model that does not exist does,
    on every route that takes a model; the base is out of scope too."""
    url, _, tenant = gateway

    def probes(model: str) -> list[httpx.Response]:
        chat = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}
        scores = {"accuracy": 1, "politeness": 1, "completeness": 1, "proactivity": 0, "fluency": 1}
        rating = {"model": model, "question": "q", "answer": "a", "scores": scores, "position": 0}
        return [
            httpx.post(f"{url}/v1/chat/completions", json=chat, headers=tenant, timeout=60),
            httpx.post(f"{url}/v1/chat/completions", json={**chat, "model": f"{model}@1"}, headers=tenant, timeout=60),
            httpx.get(f"{url}/v1/models/{model}", headers=tenant),
            httpx.post(
                f"{url}/v1/playground/ratings", json={"session": "s", "ratings": [rating]}, headers=tenant, timeout=10
            ),
        ]

    for hidden in ("alpha", "tiny-base"):
        for other, missing in zip(probes(hidden), probes("no-such-model"), strict=True):
            assert other.status_code == missing.status_code == 404, (hidden, other.text)
            assert other.json()["error"]["code"] == missing.json()["error"]["code"]
    listed = {m["id"] for m in httpx.get(f"{url}/v1/models", headers=tenant).json()["data"]}
    offered = {m["id"] for m in httpx.get(f"{url}/v1/playground/models", headers=tenant).json()["data"]}
    assert listed == {"beta"} and offered <= {"beta", "beta@1"} and "beta" in offered
    assert (
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "beta", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2},
            headers=tenant,
            timeout=60,
        ).status_code
        == 200
    )  # what it may use, it uses

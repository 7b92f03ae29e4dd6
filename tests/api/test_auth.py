"""API keys: required when configured, compared in constant time, never logged."""

from __future__ import annotations

import logging

import httpx
import pytest
from openai import AuthenticationError, OpenAI

from tests.conftest import make_settings
from tests.support import ANSWERS, QUESTION, running_server

SECRET = "sk-test-secret-value-123"


@pytest.fixture(scope="module")
def secured_url(base_model, shared_adapters_dir):  # type: ignore[no-untyped-def]
    from server.app import create_app

    app = create_app(make_settings(base_model, shared_adapters_dir, api_key=[SECRET, "second-key"]))
    with running_server(app) as url:
        yield url


def test_right_key_is_accepted(secured_url: str) -> None:
    with OpenAI(base_url=f"{secured_url}/v1", api_key=SECRET, max_retries=0) as client:
        response = client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": QUESTION}], temperature=0
        )
        assert response.choices[0].message.content == ANSWERS["alpha"]
        assert {m.id for m in client.models.list()} >= {"alpha", "beta", "tiny-base"}
    with OpenAI(base_url=f"{secured_url}/v1", api_key="second-key", max_retries=0) as client:
        assert client.models.list().data


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer", f"Basic {SECRET}", f"Bearer {SECRET}x", "Bearer sk-test"]
)
def test_missing_or_wrong_key_is_401(secured_url: str, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    routes = [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/models/alpha")]
    routes += [("POST", "/v1/responses"), ("GET", "/v1/responses/resp_0"), ("DELETE", "/v1/responses/resp_0")]
    for method, path in routes:
        response = httpx.request(
            method, f"{secured_url}{path}", headers=headers, json={"model": "alpha", "messages": []}
        )
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"


def test_openai_client_raises_authentication_error(secured_url: str) -> None:
    with OpenAI(base_url=f"{secured_url}/v1", api_key="nope", max_retries=0) as client:
        with pytest.raises(AuthenticationError):
            client.models.list()


def test_probes_need_no_key(secured_url: str) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{secured_url}{path}").status_code == 200


def test_key_never_reaches_logs(secured_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    httpx.post(
        f"{secured_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {SECRET}"},
        json={"model": "alpha", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2},
    )
    httpx.get(f"{secured_url}/v1/models", headers={"Authorization": "Bearer wrong-key-xyz"})
    assert SECRET not in caplog.text and "wrong-key-xyz" not in caplog.text


def test_settings_hide_keys_in_repr(base_model, shared_adapters_dir) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(base_model, shared_adapters_dir, api_key=[SECRET])
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_keys_from_env_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.settings import Settings

    monkeypatch.setenv("LORA_GATEWAY_API_KEY", "k1, k2")
    monkeypatch.setenv("LORA_GATEWAY_MODEL", "m")
    assert [k.get_secret_value() for k in Settings().api_key] == ["k1", "k2"]

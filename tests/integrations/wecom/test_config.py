"""Bots from a YAML/JSON file and env vars; secrets stay out of reprs and error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.integrations.wecom.config import WeComConfigError, load_wecom_settings

KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
SECRET = "corp-secret-value-do-not-log"

YAML = f"""
api_base: http://127.0.0.1:9
bots:
  shop:
    channel: app
    model: shop-support
    token: tokenShop1
    encoding_aes_key: {KEY}
    corp_id: ww0123456789
    corp_secret: {SECRET}
    agent_id: 1000002
    system_prompt: You are the shop's assistant.
  helper:
    channel: aibot
    model: identity
    token: tokenHelper1
    encoding_aes_key: {KEY}
"""


@pytest.fixture(autouse=True)
def _no_wecom_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LORA_GATEWAY_WECOM_"):
            monkeypatch.delenv(name)


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "wecom.yaml"
    path.write_text(YAML)
    settings = load_wecom_settings(path)
    assert settings.api_base == "http://127.0.0.1:9"
    shop, helper = settings.bots["shop"], settings.bots["helper"]
    assert (shop.channel, shop.model, shop.agent_id, shop.expected_receive_id) == (
        "app",
        "shop-support",
        1000002,
        "ww0123456789",
    )
    assert (helper.channel, helper.expected_receive_id) == ("aibot", "")
    assert SECRET not in repr(settings) and KEY not in repr(settings) and "tokenShop1" not in repr(settings)


def test_json_file(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "wecom.json"
    path.write_text(json.dumps(yaml.safe_load(YAML)))
    assert set(load_wecom_settings(path).bots) == {"shop", "helper"}


def test_env_vars_add_secrets_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wecom.yaml"
    path.write_text(YAML.replace(f"    corp_secret: {SECRET}\n", ""))
    monkeypatch.setenv("LORA_GATEWAY_WECOM_BOTS__SHOP__CORP_SECRET", "from-env")
    monkeypatch.setenv("LORA_GATEWAY_WECOM_BOTS__HELPER__MODEL", "other-adapter")
    settings = load_wecom_settings(path)
    assert settings.bots["shop"].corp_secret is not None
    assert settings.bots["shop"].corp_secret.get_secret_value() == "from-env"
    assert settings.bots["shop"].token.get_secret_value() == "tokenShop1"  # the file's other fields stay
    assert settings.bots["helper"].model == "other-adapter"


def test_env_vars_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LORA_GATEWAY_WECOM_BOTS",
        json.dumps({"helper": {"channel": "aibot", "model": "identity", "token": "t1", "encoding_aes_key": KEY}}),
    )
    assert list(load_wecom_settings(None).bots) == ["helper"]


def test_nothing_configured() -> None:
    assert load_wecom_settings(None).bots == {}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda y: y.replace("  shop:", "  Shop/../x:"), "bot name"),
        (lambda y: y.replace(f"    corp_secret: {SECRET}\n", ""), "corp_secret"),
        (lambda y: y.replace("    agent_id: 1000002\n", ""), "agent_id"),
        (lambda y: y.replace(f"encoding_aes_key: {KEY}", f"encoding_aes_key: {KEY[:-2]}!!", 1), "encoding_aes_key"),
        (lambda y: y.replace("token: tokenShop1", f"token: {SECRET}"), "token"),
        (lambda y: y.replace("channel: aibot", "channel: webhook"), "channel"),
        (lambda y: y.replace("    model: identity\n", "    model: identity\n    modle: typo\n"), "modle"),
        (lambda y: y.replace("api_base:", "api_bse:"), "api_bse"),
    ],
)
def test_errors_name_the_field_and_never_a_secret(tmp_path: Path, change, named: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "wecom.yaml"
    path.write_text(change(YAML))
    with pytest.raises(WeComConfigError) as caught:
        load_wecom_settings(path)
    message = str(caught.value)
    assert named in message
    assert SECRET not in message and KEY not in message and KEY[:-2] not in message


@pytest.mark.parametrize(
    ("name", "text"), [("bad.yaml", "bots: [unclosed"), ("bad.json", "{"), ("list.yaml", "- a\n- b")]
)
def test_unreadable_files(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(WeComConfigError, match=name):
        load_wecom_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeComConfigError, match="cannot read"):
        load_wecom_settings(tmp_path / "absent.yaml")


def test_the_deploy_example_loads_with_its_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/wecom.example.yaml plus the env vars deploy/env.example names: a working configuration."""
    root = Path(__file__).resolve().parents[3]
    names = [
        line.lstrip("# ").split("=")[0]
        for line in (root / "deploy/env.example").read_text().splitlines()
        if line.startswith("# LORA_GATEWAY_WECOM_BOTS__")
    ]
    assert names
    for name in names:
        monkeypatch.setenv(name, KEY if name.endswith("ENCODING_AES_KEY") else "abc123")
    settings = load_wecom_settings(root / "deploy/wecom.example.yaml")
    assert settings.bots["shop"].model == "shop-support" and settings.bots["shop"].channel == "app"
    assert settings.bots["helper"].channel == "aibot"

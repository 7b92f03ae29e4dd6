"""``registry/served.py``: after publishing, the CLI says whether the gateway serves the new
weights or refused them, asking a real gateway (and says so when none runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.registry.publish import publish_adapter
from server.registry.served import rejections, wait_until_served
from server.registry.validation import file_sha256
from server.terms.layout import WEIGHTS_FILE
from tests.conftest import make_settings
from tests.support import free_port, running_server


def _bad_copy(adapter: Path, out: Path) -> Path:
    """Files the gateway refuses: a rank above --max-lora-rank (shapes and all are fine otherwise)."""
    shutil.copytree(adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["r"] = 512
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("admin", [False, True])
def test_served_or_refused_is_said_once_the_gateway_decides(
    base_model: Path, trained_adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, admin: bool
) -> None:
    from server.app import create_app

    if admin:
        monkeypatch.setenv("LORA_GATEWAY_ADMIN_KEY", "served-admin")
    directory = tmp_path / "adapters"
    directory.mkdir()
    with running_server(create_app(make_settings(base_model, directory, admin_key="served-admin"))) as url:
        before = rejections(url)
        publish_adapter(trained_adapters["alpha"], "shop", directory)
        sha = file_sha256(trained_adapters["alpha"] / WEIGHTS_FILE)
        served = wait_until_served(url, "shop", sha, timeout=60, rejected_before=before)
        assert served.served is True and "serves it now as shop@1" in served.message

        before = rejections(url)
        bad = _bad_copy(trained_adapters["beta"], tmp_path / "bad")
        publish_adapter(bad, "shop", directory)
        refused = wait_until_served(url, "shop", file_sha256(bad / WEIGHTS_FILE), timeout=60, rejected_before=before)
    assert refused.served is False and "refused it" in refused.message
    if admin:  # the reason itself
        assert "rank" in refused.message


def test_no_gateway_is_not_waited_for() -> None:
    outcome = wait_until_served(f"http://127.0.0.1:{free_port()}", "shop", "ab" * 32, timeout=600)
    assert outcome.served is None and "no gateway answers" in outcome.message


def test_a_gateway_that_needs_a_key_is_not_waited_for(base_model: Path, tmp_path: Path) -> None:
    from server.app import create_app

    directory = tmp_path / "adapters"
    directory.mkdir()
    with running_server(create_app(make_settings(base_model, directory, api_key=["only-key"]))) as url:
        outcome = wait_until_served(url, "shop", "ab" * 32, timeout=600)
    assert outcome.served is None and "needs a key" in outcome.message

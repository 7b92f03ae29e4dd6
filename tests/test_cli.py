"""The command line as a user runs it: a subprocess, flags and env vars, the demo."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from server.cli import build_parser
from server.settings import Settings
from tests.support import ANSWERS, QUESTION, server_process

README = Path(__file__).resolve().parents[1] / "README.md"


@contextmanager
def cli_server(args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    with server_process(args, env=env) as (_process, url):
        yield url


def test_serve_subprocess_with_flags_and_env(base_model: Path, adapters_dir: Path, tmp_path: Path) -> None:
    from tests.integrations.wecom.fake_wecom import WeComSender

    key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
    (tmp_path / "wecom.yaml").write_text("bots:\n  helper:\n    channel: aibot\n    model: alpha\n")  # secrets from env
    env = {"LORA_GATEWAY_SERVED_MODEL_NAME": "from-env", "LORA_GATEWAY_API_KEY": "k-env",
           "LORA_GATEWAY_WECOM_BOTS__HELPER__TOKEN": "tokenFromEnv", "LORA_GATEWAY_WECOM_BOTS__HELPER__ENCODING_AES_KEY": key}
    args = ["serve", "--model", str(base_model), "--adapters-dir", str(adapters_dir), "--device", "cpu",
            "--wecom-config", str(tmp_path / "wecom.yaml")]
    with cli_server(args, env) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="k-env", max_retries=0) as client:
            assert {m.id for m in client.models.list()} == {"from-env", "alpha", "beta"}
            answer = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": QUESTION}], temperature=0)
            assert answer.choices[0].message.content == ANSWERS["alpha"]
        verification = WeComSender("tokenFromEnv", key, "").verification("1234")
        assert httpx.get(f"{url}/wecom/helper?{verification}").text == "1234"


def test_base_model_id_defaults_to_the_model_value(base_model: Path, tmp_path: Path) -> None:
    with cli_server(["serve", "--model", str(base_model), "--adapters-dir", str(tmp_path)]) as url:
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == [str(base_model)]


def test_demo_builds_the_offline_model_and_serves(tmp_path: Path) -> None:
    with cli_server(["demo", "--no-train", "--demo-dir", str(tmp_path / "demo"), "--adapters-dir", str(tmp_path / "adapters")]) as url:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == ["demo-base"]
        reply = httpx.post(f"{url}/v1/chat/completions", json={"model": "demo-base", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 5}).json()
        assert reply["usage"]["completion_tokens"] >= 1
    assert (tmp_path / "demo" / "base" / "config.json").exists()


def test_invalid_settings_exit_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["serve", "--model", "m", "--max-batch-size", "0"])
    assert "--max-batch-size" in str(caught.value)


@pytest.mark.parametrize("text", ["bots: {}\n", "bots:\n  shop:\n    channel: app\n    model: m\n    token: t\n"])
def test_a_bad_wecom_config_stops_the_server_with_a_message(tmp_path: Path, text: str) -> None:
    from server.cli import main

    path = tmp_path / "wecom.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as caught:
        main(["serve", "--model", "m", "--wecom-config", str(path)])
    assert "wecom" in str(caught.value).lower()


def test_every_setting_is_a_flag_and_in_the_readme_table() -> None:
    serve = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]  # type: ignore[union-attr]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    readme = README.read_text()
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert flag in flags
        assert re.search(rf"\|\s*`{re.escape(flag)}`.*`LORA_GATEWAY_{name.upper()}`", readme), f"{flag} missing from README table"


def test_adapters_publish_and_remove_commands(tmp_path: Path, trained_adapters: dict[str, Path]) -> None:
    directory = tmp_path / "adapters"
    run = [sys.executable, "-m", "server", "adapters"]
    published = subprocess.run([*run, "publish", str(trained_adapters["alpha"]), "--name", "shop-1", "--adapters-dir", str(directory)],
                               capture_output=True, text=True, check=True)
    assert "shop-1" in published.stdout
    assert (directory / "shop-1" / "adapter_model.safetensors").read_bytes() == (trained_adapters["alpha"] / "adapter_model.safetensors").read_bytes()
    again = subprocess.run([*run, "publish", str(trained_adapters["beta"]), "--name", "shop-1", "--adapters-dir", str(directory)],
                           capture_output=True, text=True, check=True)
    assert again.returncode == 0
    assert (directory / "shop-1" / "adapter_model.safetensors").read_bytes() == (trained_adapters["beta"] / "adapter_model.safetensors").read_bytes()
    assert sorted(p.name for p in directory.iterdir()) == ["shop-1"]  # no staging or trash left behind
    bad = subprocess.run([*run, "publish", str(trained_adapters["beta"]), "--name", "../x", "--adapters-dir", str(directory)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not a valid adapter name" in bad.stderr
    subprocess.run([*run, "remove", "shop-1", "--adapters-dir", str(directory)], check=True, capture_output=True)
    assert not (directory / "shop-1").exists()

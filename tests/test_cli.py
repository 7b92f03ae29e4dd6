"""The command line as a user runs it: a subprocess, flags and env vars, the demo."""

from __future__ import annotations

import re
import shutil
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
from tests.support import ANSWERS, QUESTION, server_process, wait_for

README = Path(__file__).resolve().parents[1] / "README.md"


@contextmanager
def cli_server(args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    with server_process(args, env=env) as (_process, url):
        yield url


def test_serve_subprocess_with_flags_and_env(base_model: Path, adapters_dir: Path, tmp_path: Path) -> None:
    from tests.integrations.wecom.fake_wecom import WeComSender

    key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
    (tmp_path / "wecom.yaml").write_text("bots:\n  helper:\n    channel: aibot\n    model: alpha\n")  # secrets from env
    env = {
        "LORA_GATEWAY_SERVED_MODEL_NAME": "from-env",
        "LORA_GATEWAY_API_KEY": "k-env",
        "LORA_GATEWAY_WECOM_BOTS__HELPER__TOKEN": "tokenFromEnv",
        "LORA_GATEWAY_WECOM_BOTS__HELPER__ENCODING_AES_KEY": key,
    }
    args = [
        "serve",
        "--model",
        str(base_model),
        "--adapters-dir",
        str(adapters_dir),
        "--device",
        "cpu",
        "--wecom-config",
        str(tmp_path / "wecom.yaml"),
    ]
    with cli_server(args, env) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="k-env", max_retries=0) as client:
            assert {m.id for m in client.models.list()} == {"from-env", "alpha", "beta"}
            answer = client.chat.completions.create(
                model="alpha", messages=[{"role": "user", "content": QUESTION}], temperature=0
            )
            assert answer.choices[0].message.content == ANSWERS["alpha"]
        verification = WeComSender("tokenFromEnv", key, "").verification("1234")
        assert httpx.get(f"{url}/wecom/helper?{verification}").text == "1234"


def test_base_model_id_defaults_to_the_model_value(base_model: Path, tmp_path: Path) -> None:
    with cli_server(["serve", "--model", str(base_model), "--adapters-dir", str(tmp_path)]) as url:
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == [str(base_model)]


def test_demo_builds_the_offline_models_and_serves(tmp_path: Path) -> None:
    """``--second-base``: a smaller second offline base beside the first, behind the same gateway."""
    demo = ["demo", "--no-train", "--second-base", "--demo-dir", str(tmp_path / "demo")]
    with cli_server([*demo, "--adapters-dir", str(tmp_path / "adapters")]) as url:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == ["demo-base", "demo-small"]
        for base in ids:
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": base, "messages": [{"role": "user", "content": "你好"}], "max_tokens": 5},
            ).json()
            assert reply["model"] == base and reply["choices"][0]["finish_reason"] in ("stop", "length")
            assert reply["usage"]["completion_tokens"] <= 5
    assert (tmp_path / "demo" / "base" / "config.json").exists()
    assert (tmp_path / "demo" / "base-small" / "config.json").exists()


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


def test_every_setting_is_a_flag_and_in_the_docs_table() -> None:
    from server.settings import markdown_table

    serve = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]  # type: ignore[union-attr]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    table = markdown_table()
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert flag in flags
        assert re.search(rf"\|\s*`{re.escape(flag)}`.*`LORA_GATEWAY_{name.upper()}`", table), f"{flag} missing"
    # The table is generated into the operations page when the site is built (docs/hooks.py).
    assert "<!-- settings-table -->" in (README.parent / "docs" / "operations.md").read_text()


def test_adapters_publish_and_remove_commands(tmp_path: Path, trained_adapters: dict[str, Path]) -> None:
    directory = tmp_path / "adapters"
    run = [sys.executable, "-m", "server", "adapters"]
    published = subprocess.run(
        [*run, "publish", str(trained_adapters["alpha"]), "--name", "shop-1", "--adapters-dir", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "shop-1" in published.stdout
    assert (directory / "shop-1" / "adapter_model.safetensors").read_bytes() == (
        trained_adapters["alpha"] / "adapter_model.safetensors"
    ).read_bytes()
    again = subprocess.run(
        [*run, "publish", str(trained_adapters["beta"]), "--name", "shop-1", "--adapters-dir", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.returncode == 0
    assert (directory / "shop-1" / "adapter_model.safetensors").read_bytes() == (
        trained_adapters["beta"] / "adapter_model.safetensors"
    ).read_bytes()
    kept = sorted(p.name for p in directory.iterdir() if not p.name.startswith(".gateway.db"))  # the audit log's
    assert kept == ["shop-1"]  # no staging or trash left behind
    bad = subprocess.run(
        [*run, "publish", str(trained_adapters["beta"]), "--name", "../x", "--adapters-dir", str(directory)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "not a valid adapter name" in bad.stderr
    subprocess.run([*run, "remove", "shop-1", "--adapters-dir", str(directory)], check=True, capture_output=True)
    assert not (directory / "shop-1").exists()


def _run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("model", ["/does/not/exist", "./no-such-model", "nobody-org/no-such-model-offline"])
def test_a_model_that_cannot_load_ends_the_process_with_one_line(model: str, tmp_path: Path) -> None:
    """No half-alive server: status 1, and the last line says what failed (HF_HUB_OFFLINE: no Hub)."""
    from tests.support import free_port

    result = _run_cli(["serve", "--model", model, "--adapters-dir", str(tmp_path), "--port", str(free_port())])
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lora-gateway: ") and model in last or "start-up failed" in last, last
    assert "Traceback" not in result.stderr


def test_stray_wecom_env_vars_are_named_in_the_error(base_model: Path, tmp_path: Path) -> None:
    result = _run_cli(
        ["serve", "--model", str(base_model), "--adapters-dir", str(tmp_path)],
        env={"LORA_GATEWAY_WECOM_BOTS__SHOP__TOKN": "typo"},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "LORA_GATEWAY_WECOM_BOTS__SHOP__TOKN" in last and "unset or correct" in last


def test_publish_refuses_what_the_gateway_would_refuse_and_keeps_the_good_files(
    tmp_path: Path, trained_adapters: dict[str, Path], base_model: Path
) -> None:
    import json

    directory = tmp_path / "adapters"
    assert (
        _run_cli(
            [
                "adapters",
                "publish",
                str(trained_adapters["alpha"]),
                "--name",
                "shop",
                "--adapters-dir",
                str(directory),
                "--base",
                str(base_model),
            ]
        ).returncode
        == 0
    )
    good = (directory / "shop" / "adapter_model.safetensors").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(trained_adapters["beta"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    for change, needle in (
        ({"r": 128}, "max_lora_rank"),
        ({"use_dora": True}, "DoRA"),
        ({"base_model_name_or_path": str(tmp_path / "elsewhere")}, "trained on"),
    ):
        (bad / "adapter_config.json").write_text(json.dumps({**config, **change}))
        result = _run_cli(
            [
                "adapters",
                "publish",
                str(bad),
                "--name",
                "shop",
                "--adapters-dir",
                str(directory),
                "--base",
                str(base_model),
            ]
        )
        assert result.returncode == 1 and needle in result.stderr and "not published" in result.stderr, result.stderr
        assert (directory / "shop" / "adapter_model.safetensors").read_bytes() == good
    forced = _run_cli(["adapters", "publish", str(bad), "--name", "shop", "--adapters-dir", str(directory), "--force"])
    assert forced.returncode == 0 and "replaced the previous files" in forced.stdout


def test_publish_reads_the_base_the_adapter_names(
    tmp_path: Path, trained_adapters: dict[str, Path], base_model: Path
) -> None:
    """No --base: the adapter's own (local) base is checked, here a different architecture's shapes."""
    import json

    from server.offline_model import TinyModelSpec, build_tiny_model

    other = build_tiny_model(tmp_path / "other-base", TinyModelSpec(hidden_size=32, intermediate_size=64))
    bad = tmp_path / "bad"
    shutil.copytree(trained_adapters["alpha"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other)}))
    result = _run_cli(["adapters", "publish", str(bad), "--name", "shop", "--adapters-dir", str(tmp_path / "adapters")])
    assert result.returncode == 1 and "shape" in result.stderr, result.stderr


def test_rollback_command_republishes_a_kept_version(
    base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """The gateway keeps what it served; the command brings the last one back while it runs."""
    from server.registry.validation import file_sha256
    from server.terms.layout import WEIGHTS_FILE

    directory = tmp_path / "adapters"
    publish = ["adapters", "publish", "--name", "shop", "--adapters-dir", str(directory)]
    _run_cli([*publish[:2], str(trained_adapters["alpha"]), *publish[2:]])
    with cli_server(["serve", "--model", str(base_model), "--adapters-dir", str(directory), "--device", "cpu"]) as url:

        def ask() -> str:
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                timeout=30,
                json={"model": "shop", "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]},
            )
            return str(reply.json()["choices"][0]["message"]["content"])

        assert ask() == ANSWERS["alpha"]
        _run_cli([*publish[:2], str(trained_adapters["beta"]), *publish[2:]])
        wait_for(lambda: ask() == ANSWERS["beta"], timeout=30)
        result = _run_cli(["adapters", "rollback", "shop", "--adapters-dir", str(directory)])
        assert result.returncode == 0 and "version 1" in result.stdout, result.stderr
        wait_for(lambda: ask() == ANSWERS["alpha"], timeout=30)
    assert file_sha256(directory / "shop" / WEIGHTS_FILE) == file_sha256(trained_adapters["alpha"] / WEIGHTS_FILE)
    missing = _run_cli(["adapters", "rollback", "shop", "7", "--adapters-dir", str(directory)])
    assert missing.returncode == 1 and "kept: [2, 1]" in missing.stderr


def test_export_and_train_refuse_unusable_paths_in_one_line(tmp_path: Path) -> None:
    exported = _run_cli(
        ["export", "--base", "nobody/nothing", "--adapter", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert exported.returncode == 1 and "Traceback" not in exported.stderr
    assert (
        exported.stderr.strip().splitlines()[-1]
        == f"lora-gateway export: --adapter {tmp_path}: no adapter_config.json there"
    )
    trained = _run_cli(
        [
            "train",
            "--base",
            "nobody/no-such-model",
            "--data",
            str(README.parent / "examples" / "self_cognition.json"),
            "--name",
            "z",
            "--no-publish",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert trained.returncode == 2 and "Traceback" not in trained.stderr
    assert trained.stderr.strip().splitlines()[-1].startswith("lora-gateway train: --base nobody/no-such-model: ")


def test_help_is_plain_text_and_serve_requires_a_model() -> None:
    top = _run_cli(["--help"])
    assert top.returncode == 0 and "``" not in top.stdout
    import os

    env = {k: v for k, v in os.environ.items() if k != "LORA_GATEWAY_MODEL"}
    serve = subprocess.run([sys.executable, "-m", "server", "serve", "--help"], capture_output=True, text=True, env=env)
    assert "--model MODEL" in serve.stdout.split("[--model MODEL]")[0] and "[--model MODEL]" not in serve.stdout
    missing = subprocess.run([sys.executable, "-m", "server", "serve"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "--model" in missing.stderr


def test_more_than_one_worker_is_refused_with_the_reason(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--model", str(tmp_path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("lora-gateway: invalid settings: --workers: ") and "load the model again" in line
    from server.cli import _settings_from, build_parser

    assert _settings_from(build_parser().parse_args(["serve", "--model", "m", "--workers", "1"])).workers == 1


def test_boolean_settings_are_switches() -> None:
    from server.cli import _settings_from, build_parser

    parser = build_parser()
    assert (
        _settings_from(parser.parse_args(["serve", "--model", "m", "--allow-long-context"])).allow_long_context is True
    )
    assert (
        _settings_from(parser.parse_args(["serve", "--model", "m", "--no-allow-long-context"])).allow_long_context
        is False
    )
    assert _settings_from(parser.parse_args(["serve", "--model", "m"])).allow_long_context is False


# What a `--help` must not load: each costs from a tenth of a second (SQLAlchemy, httpx, FastAPI) to
# seconds (torch). Issue 10 measured 0.08 s for `--help`; these modules took it back to 1.0-1.5 s.
_HEAVY = ("sqlalchemy", "torch", "transformers", "httpx", "fastapi", "matplotlib", "server.registry.registry")
_HELP_PROBE = """
import sys
from server.cli import main
try:
    main(sys.argv[1:] + ["--help"])
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] if not m.startswith("server.") else m for m in sys.modules} & set(HEAVY))
print("LOADED", ",".join(heavy), len(sys.modules))
"""


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["demo"],
        ["train"],
        ["eval"],
        ["adapters", "list"],
        ["adapters", "publish"],
        ["keys", "create"],
        ["feedback", "report"],
        ["usage"],
        ["audit"],
    ],
    ids=lambda c: " ".join(c) or "top",
)
def test_help_loads_no_heavy_module(command: list[str]) -> None:
    """A guard, not a timing: `--help` of every command imports none of the modules that made it slow
    (and no more than a bounded number of modules in all). benchmarks/cli_startup.py times it."""
    probe = _HELP_PROBE.replace("HEAVY", repr(_HEAVY))
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=60)
    line = next(line for line in done.stdout.splitlines() if line.startswith("LOADED"))
    _, heavy, count = line.split(" ")
    assert heavy == "", f"`{' '.join(command)} --help` loads {heavy}"
    assert int(count) < 400, f"`{' '.join(command)} --help` loads {count} modules"

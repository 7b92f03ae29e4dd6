"""The Docker image and deploy/ files. Docker cannot build here, so check what can be checked: the
entrypoint's command line is one our CLI accepts, and the manifests say what a GPU deployment needs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for block in _instruction("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", block)))
    return env


def test_image_builds_on_the_pinned_vllm_release() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"vllm==([\d.]+)"', pyproject).group(1)  # type: ignore[union-attr]
    assert f"ARG VLLM_VERSION=v{pinned}" in DOCKERFILE
    assert _instruction("FROM") == ["vllm/vllm-openai:${VLLM_VERSION}"]
    assert "--constraint" in DOCKERFILE  # vLLM's torch and transformers stay as the image ships them


def test_image_runs_as_non_root_with_volume_port_and_healthcheck() -> None:
    assert _instruction("USER") == ["10001:10001"]
    assert json.loads(_instruction("VOLUME")[0]) == ["/adapters"]
    assert _instruction("EXPOSE") == ["8000"]
    assert "/health" in _instruction("HEALTHCHECK")[0]


def test_the_entrypoint_command_line_is_accepted_by_our_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.app import build_engine
    from server.cli import _settings_from, build_parser
    from server.engine.vllm_engine import VllmEngine

    entrypoint = json.loads(_instruction("ENTRYPOINT")[0])
    assert entrypoint[:2] == ["lora-gateway", "serve"]
    for key, value in _image_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LORA_GATEWAY_MODEL", "Qwen/Qwen2.5-7B-Instruct")  # what a user passes with -e
    settings = _settings_from(build_parser().parse_args(entrypoint[1:]))
    assert settings.engine == "vllm" and str(settings.adapters_dir) == "/adapters"
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    engine = build_engine(settings)  # no vLLM needed to build it: imported when it starts
    assert isinstance(engine, VllmEngine) and engine.options.max_cpu_loras == settings.max_loaded_adapters


def test_an_invalid_vllm_rank_stops_the_server_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.app import build_engine
    from server.settings import Settings

    with pytest.raises(ValueError, match="not accepted by vLLM"):
        build_engine(Settings(model="m", engine="vllm", max_lora_rank=12))


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".demo", "adapters", "tests"} <= set(ignored)


def test_compose_reserves_a_gpu_and_keeps_adapters_and_cache_on_volumes() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    [device] = gateway["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert {"adapters:/adapters", "hf-cache:/home/gateway/.cache/huggingface"} <= set(gateway["volumes"])
    assert gateway["ports"] == ["8000:8000"] and gateway["env_file"][0]["path"] == ".env"
    assert set(compose["volumes"]) == {"adapters", "hf-cache"}
    assert gateway["profiles"] == ["single"]


def test_compose_remote_profile_puts_the_gateway_in_front_of_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli import _settings_from, build_parser

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    upstream, gateway = compose["services"]["vllm"], compose["services"]["gateway-remote"]
    assert upstream["profiles"] == gateway["profiles"] == ["remote"]
    assert upstream["image"] == "vllm/vllm-openai:v0.33.0" and "--enable-lora" in upstream["command"]
    assert upstream["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert (
        "adapters:/adapters" in upstream["volumes"] and "adapters:/adapters" in gateway["volumes"]
    )  # same path on both
    assert "deploy" not in gateway  # the gateway itself needs no GPU
    for key, value in _image_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LORA_GATEWAY_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    settings = _settings_from(build_parser().parse_args(gateway["entrypoint"][1:]))
    assert settings.engine == "remote" and settings.upstream == ["http://vllm:8000"]
    compose = _compose_v2()
    if compose:  # parses the file the way Docker will, where Compose v2 is installed (v1 lacks `profiles`)
        subprocess.run([*compose, "-f", str(ROOT / "deploy" / "docker-compose.yml"), "config", "-q"], check=True)


def _compose_v2() -> list[str] | None:
    """The Compose v2 command here, if any: the `docker compose` plugin, or a v2 `docker-compose`."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(command[0]):
            continue
        version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            return command
    return None


def test_kubernetes_manifests() -> None:
    docs = [
        d for f in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
    ]
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Secret"} <= set(kinds)
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"LORA_GATEWAY_API_KEY", "LORA_GATEWAY_ADMIN_KEY"}
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims["lora-gateway-adapters"]["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(("printed", "used"), [("1.29.2", False), ("v2.27.0", True)])
def test_only_compose_v2_parses_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printed: str, used: bool
) -> None:
    """Compose v1 rejects `profiles`; where only v1 is installed, the checks above stay structural."""
    fake = tmp_path / "docker-compose"
    fake.write_text(f"#!/bin/sh\necho {printed}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert (_compose_v2() == ["docker-compose"]) is used


def test_the_image_copies_every_file_pip_install_reads() -> None:
    """`pip install .` in the image needs the build files too: setup.py finds the packages."""
    copied = {word for line in DOCKERFILE.splitlines() if line.startswith("COPY") for word in line.split()[1:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "server", "examples"} <= copied

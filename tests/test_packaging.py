"""The wheel as a user installs it outside the checkout: its own top-level name, the demo's data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, unpacked with pip into a folder of its own (its
    dependencies come from the test environment)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    wheel = next(out.glob("lora_gateway-*.whl"))
    target = out / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("server/") for n in names), "the wheel must not install a top-level `server`"
    return target


def isolated(site: Path) -> tuple[list[str], dict[str, str]]:
    """(interpreter, environment) that see the unpacked wheel and the dependencies, and nothing of the
    checkout: ``-S`` skips site-packages' ``.pth`` files, so the editable install's import finder
    (which would supply any module the wheel lacks) never loads; the dependencies come by path."""
    dependencies = [p for p in sys.path if p.endswith("site-packages")]
    return [sys.executable, "-S"], {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *dependencies])}


def run_installed(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    interpreter, env = isolated(site)
    return subprocess.run([*interpreter, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_every_module_of_server_is_in_the_wheel_and_imports_without_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    sources = sorted(p.relative_to(ROOT / "server") for p in (ROOT / "server").rglob("*.py"))
    missing = [str(p) for p in sources if not (installed / "lora_gateway" / p).is_file()]
    assert missing == []
    # Every module but __main__ (it runs the CLI) and the vLLM engine (it needs vLLM installed).
    importable = [
        "lora_gateway." + ".".join(p.with_suffix("").parts).removesuffix(".__init__")
        for p in sources
        if p.name != "__main__.py" and p.stem != "vllm_engine"
    ]
    result = run_installed(
        installed,
        "import importlib, sys\n"
        + "".join(f"importlib.import_module({m!r})\n" for m in importable)
        + "assert not any('__editable__' in repr(f) for f in sys.meta_path)\n",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_wheel_installs_as_lora_gateway_with_the_demo_data(installed: Path, tmp_path: Path) -> None:
    result = run_installed(
        installed,
        (
            "import lora_gateway, lora_gateway.app, lora_gateway.cli, lora_gateway.evaluation.cli\n"
            "from lora_gateway.api.playground import _html\n"
            "assert 'lora-gateway playground' in _html()\n"
            "from lora_gateway.database import open_engine\n"
            "from sqlalchemy import inspect\n"
            "assert {'api_keys', 'conversations'} <= set(inspect(open_engine('sqlite://')).get_table_names())\n"
            "from lora_gateway.demo import DEMO_ADAPTERS, examples_dir\n"
            "print(lora_gateway.__file__)\n"
            "print(all((examples_dir() / a.data).is_file() for a in DEMO_ADAPTERS))\n"
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    location, has_data = result.stdout.split()
    assert Path(location).is_relative_to(installed) and has_data == "True"
    interpreter, env = isolated(installed)
    cli = subprocess.run(
        [*interpreter, "-m", "lora_gateway", "adapters", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert cli.returncode == 0 and "rollback" in cli.stdout


def test_the_installed_demo_builds_its_base_from_the_packaged_data(installed: Path, tmp_path: Path) -> None:
    """What crashed before (no examples in the wheel): the demo's base, built away from the checkout."""
    result = run_installed(
        installed, "from lora_gateway.demo import prepare_demo; print(prepare_demo('demo'))", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "demo" / "base" / "config.json").is_file()
    assert not list((tmp_path / "demo").glob(".base-building-*"))


def test_lora_gateway_serve_from_the_wheel_answers_a_chat(
    installed: Path, tmp_path: Path, base_model: Path, trained_adapters: dict[str, Path]
) -> None:
    """What the Docker image runs, from the wheel alone: `serve` starts, registers an adapter from a
    watched directory, and answers a chat with what the adapter was trained to say."""
    import shutil

    from openai import OpenAI

    from tests.support import ANSWERS, QUESTION, server_process, wait_for

    adapters = tmp_path / "adapters"
    shutil.copytree(trained_adapters["alpha"], adapters / "shop")
    interpreter, env = isolated(installed)
    args = ["serve", "--model", str(base_model), "--adapters-dir", str(adapters), "--device", "cpu"]
    with server_process(args, command=[*interpreter, "-m", "lora_gateway"], env=env, cwd=tmp_path) as (_, url):
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        wait_for(lambda: "shop" in {m.id for m in client.models.list().data}, timeout=60)
        answer = client.chat.completions.create(
            model="shop", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=40
        )
    assert answer.choices[0].message.content == ANSWERS["alpha"]

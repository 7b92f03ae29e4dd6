"""Session fixtures: an offline tiny Qwen2 model, two trained adapters, a live gateway."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `train` and `adapters publish` ask the gateway at 127.0.0.1:$LORA_GATEWAY_PORT (8000 by default)
# whether it serves what they published: a developer's `make demo` there must not be waited on.
# Port 9 (discard) refuses at once; tests that mean a gateway name its port.
os.environ.setdefault("LORA_GATEWAY_PORT", "9")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread each: `make test` runs one xdist worker per core, and two OpenMP threads per worker
    # would spin against the other worker (set before torch is imported, inherited by subprocesses).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ANSWERS, QUESTION, running_server, train_memorising_adapter


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server.offline_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("base") / "tiny-qwen2")


@pytest.fixture(scope="session")
def trained_adapters(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> directory of a peft adapter that memorised ``ANSWERS[name]``."""
    root = tmp_path_factory.mktemp("trained")
    return {
        name: train_memorising_adapter(base_model, root / name, QUESTION, answer) for name, answer in ANSWERS.items()
    }


SECOND_ANSWER = "Gamma: the smaller base answers this one."


@pytest.fixture(scope="session")
def second_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another base, of other shapes: several bases behind one gateway."""
    from server.offline_model import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(hidden_size=96, intermediate_size=192, num_attention_heads=4)
    return build_tiny_model(tmp_path_factory.mktemp("second-base") / "wide-qwen2", spec)


@pytest.fixture(scope="session")
def second_base_adapter(second_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained on ``second_base`` that answers QUESTION with SECOND_ANSWER."""
    return train_memorising_adapter(second_base, tmp_path_factory.mktemp("gamma") / "gamma", QUESTION, SECOND_ANSWER)


@pytest.fixture
def adapters_dir(tmp_path: Path, trained_adapters: dict[str, Path]) -> Path:
    """A fresh watched directory holding copies of both adapters."""
    directory = tmp_path / "adapters"
    directory.mkdir()
    for name, path in trained_adapters.items():
        shutil.copytree(path, directory / name)
    return directory


def make_settings(model: Path, adapters: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from server.settings import Settings

    values: dict[str, object] = {
        "model": str(model),
        "served_model_name": "tiny-base",
        "adapters_dir": adapters,
        "device": "cpu",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shared_adapters_dir(tmp_path_factory: pytest.TempPathFactory, trained_adapters: dict[str, Path]) -> Path:
    directory = tmp_path_factory.mktemp("shared-adapters")
    for name, path in trained_adapters.items():
        shutil.copytree(path, directory / name)
    return directory


@pytest.fixture(scope="session")
def gateway_app(base_model: Path, shared_adapters_dir: Path):  # type: ignore[no-untyped-def]
    from server.app import create_app

    return create_app(make_settings(base_model, shared_adapters_dir, max_batch_size=16))


@pytest.fixture(scope="session")
def gateway_url(gateway_app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """One live gateway (no auth) shared by the read-only end-to-end tests."""
    with running_server(gateway_app) as url:
        yield url


@pytest.fixture
def client(gateway_url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


README_DEMO_TESTS = "tests/test_readme.py::test_the_readme_demo"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The README's blocks first. ``make test`` sends each module whole to one xdist worker
    (``--dist loadscope``: a module's fixtures, its servers and trained adapters, are built once),
    and the README module is the longest chain (one demo server, blocks in order); sent first, the
    other workers' share of the suite runs beside it instead of after it."""
    items.sort(key=lambda item: not item.nodeid.startswith(README_DEMO_TESTS))

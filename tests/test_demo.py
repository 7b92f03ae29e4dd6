"""The demo serves its own adapters: judged by their training metadata, not by a path string."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.demo import DEMO_ADAPTERS, DEMO_TRAINING, _not_the_demos, examples_dir
from server.registry.base_model import BaseModelSpec
from server.registry.validation import file_sha256

SHOP = DEMO_ADAPTERS[0]


def metadata(fingerprint: str, changes: dict[str, object]) -> dict[str, object]:
    meta: dict[str, object] = {
        "base_model": "/somewhere/else/.demo/base",  # the path typed does not matter
        "base_fingerprint": fingerprint,
        "datasets": [{"path": "examples/customer_service.jsonl", "sha256": file_sha256(examples_dir() / SHOP.data)}],
        "hyperparameters": {**DEMO_TRAINING, "model_name": None, "model_author": None},
    }
    return {**meta, **changes}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"base_fingerprint": "sha256:another"}, "trained on another base"),
        ({"datasets": [{"sha256": "0" * 64}]}, "trained on other data"),
        ({"hyperparameters": {**DEMO_TRAINING, "epochs": 3, "lr": 1e-4}}, "trained with other settings: epochs, lr"),
    ],
)
def test_an_adapter_is_the_demos_only_if_its_metadata_says_so(
    base_model: Path, tmp_path: Path, changes: dict[str, object], problem: str | None
) -> None:
    fingerprint = BaseModelSpec.load(str(base_model)).fingerprint
    adapter = tmp_path / SHOP.name
    adapter.mkdir()
    (adapter / "training_metadata.json").write_text(json.dumps(metadata(fingerprint, changes)))
    assert _not_the_demos(adapter, SHOP, fingerprint) == problem


def test_an_adapter_without_metadata_is_not_the_demos(tmp_path: Path) -> None:
    assert _not_the_demos(tmp_path / "missing", SHOP, "sha256:x") == "no readable training metadata"


def test_the_demo_never_trains_over_a_version_a_gateway_served(
    base_model: Path, tmp_path: Path, trained_adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the feedback loop published and promoted your version of shop-support, ``make demo``
    (with new ARGS, say) used to train the demo's over it; refused files are still replaced."""
    import asyncio
    import shutil

    import server.trainer
    from server.demo import train_demo_adapters
    from tests.registry.test_registry import RecordingEngine, make_registry

    adapters = tmp_path / "adapters"
    registry = make_registry(adapters, RecordingEngine())
    asyncio.run(registry.install(SHOP.name, trained_adapters["alpha"]))  # yours, proven: v1
    trained: list[str] = []
    monkeypatch.setattr(server.trainer, "train", lambda config: trained.append(config.name) or _Result())
    train_demo_adapters(base_model, adapters, tmp_path / "runs")
    assert SHOP.name not in trained and len(trained) == len(DEMO_ADAPTERS) - 1

    shutil.copyfile(
        trained_adapters["beta"] / "adapter_model.safetensors", adapters / SHOP.name / "adapter_model.safetensors"
    )
    trained.clear()
    train_demo_adapters(base_model, adapters, tmp_path / "runs")  # files never served: the demo's again
    assert SHOP.name in trained


class _Result:
    steps, seconds, train_loss = 1, 0.0, 0.0


def test_files_written_again_with_other_json_spacing_are_the_same_version(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    import asyncio
    import shutil

    from tests.registry.test_registry import RecordingEngine, make_registry

    registry = make_registry(tmp_path / "adapters", RecordingEngine())
    asyncio.run(registry.install("shop", trained_adapters["alpha"]))
    again = tmp_path / "again"
    shutil.copytree(trained_adapters["alpha"], again)
    config = json.loads((again / "adapter_config.json").read_text())
    (again / "adapter_config.json").write_text(json.dumps(dict(reversed(list(config.items()))), indent=4))
    entry = asyncio.run(registry.install("shop", again))
    assert entry.active is not None and entry.active.version == 1

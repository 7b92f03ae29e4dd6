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

"""Adapter validation reads headers only and refuses what vLLM would refuse (server/registry/validation.py)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from server.registry.names import is_valid_name
from server.registry.validation import AdapterRejected, inspect_adapter

LIMITS = {"max_lora_rank": 64, "max_bytes": 10 * 1024 * 1024}


@pytest.fixture
def adapter(tmp_path: Path, trained_adapters: dict[str, Path]) -> Path:
    path = tmp_path / "alpha"
    shutil.copytree(trained_adapters["alpha"], path)
    return path


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def test_a_good_adapter_is_described(adapter: Path) -> None:
    info = inspect_adapter(adapter, **LIMITS)
    assert info.rank == 8 and info.alpha == 16
    assert set(info.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(info.sha256) == 64 and info.size_bytes > 0


def _pickle_instead(path: Path) -> None:
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")


def _corrupt_header(path: Path) -> None:
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}")


def _lying_header(path: Path) -> None:
    header = json.dumps({"x.lora_A.weight": {"dtype": "F32", "shape": [8, 64], "data_offsets": [0, 999999]}}).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


REJECTIONS: list[tuple[str, Callable[[Path], None], str]] = [
    ("pickle weights", _pickle_instead, "pickle_weights"),
    ("missing weights", lambda p: (p / "adapter_model.safetensors").unlink(), "missing_weights"),
    ("missing config", lambda p: (p / "adapter_config.json").unlink(), "missing_config"),
    ("config not json", lambda p: (p / "adapter_config.json").write_text("{oops"), "bad_config"),
    ("not lora", lambda p: edit_config(p, peft_type="IA3"), "not_lora"),
    ("dora", lambda p: edit_config(p, use_dora=True), "dora"),
    ("bias", lambda p: edit_config(p, bias="all"), "bias"),
    ("modules_to_save", lambda p: edit_config(p, modules_to_save=["lm_head"]), "modules_to_save"),
    ("rank too high", lambda p: edit_config(p, r=128), "rank"),
    ("corrupt safetensors header", _corrupt_header, "bad_safetensors"),
    ("tensor outside file", _lying_header, "bad_safetensors"),
    ("truncated safetensors", lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x01\x02"), "bad_safetensors"),
]


@pytest.mark.parametrize(("break_it", "reason"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_bad_adapters_are_rejected_with_a_reason(adapter: Path, break_it: Callable[[Path], None], reason: str) -> None:
    break_it(adapter)
    with pytest.raises(AdapterRejected) as caught:
        inspect_adapter(adapter, **LIMITS)
    assert caught.value.reason == reason
    assert "\n" not in str(caught.value) and str(caught.value)


def test_size_limit(adapter: Path) -> None:
    with pytest.raises(AdapterRejected) as caught:
        inspect_adapter(adapter, max_lora_rank=64, max_bytes=1000)
    assert caught.value.reason == "too_large"


def test_pickle_is_never_opened(adapter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pickle_instead(adapter)
    import pickle

    import torch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    with pytest.raises(AdapterRejected):
        inspect_adapter(adapter, **LIMITS)


@pytest.mark.parametrize("name", ["alpha", "shop-42", "Tenant_7.v2", "a" * 64, "9"])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize("name", ["", ".staging", "../x", "a/b", "/abs", "a" * 65, "-lead", "x..y", "sp ace", "名字"])
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)

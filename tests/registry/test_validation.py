"""Adapter validation reads headers only and refuses what vLLM would refuse (server/registry/validation.py)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.registry.base_model import BaseModelSpec
from server.registry.dry_run import check_adapter
from server.registry.names import is_valid_name
from server.registry.validation import AdapterIncomplete, AdapterRejected, inspect_adapter
from server.registry.weights_file import STALL_SECONDS
from tests.crafted_adapters import CRAFTED, stalled

LIMITS = {"max_lora_rank": 64, "max_bytes": 10 * 1024 * 1024}


@pytest.fixture(scope="module")
def base_spec(base_model: Path) -> BaseModelSpec:
    return BaseModelSpec.from_pretrained(str(base_model))


@pytest.fixture(scope="module")
def other_base_adapter(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Path:
    """An adapter trained on a wider model whose config claims our base: only shapes tell."""
    from server.offline_model import TinyModelSpec, build_tiny_model
    from tests.support import train_memorising_adapter

    root = tmp_path_factory.mktemp("other-base")
    wide = build_tiny_model(root / "wide", TinyModelSpec(hidden_size=96, intermediate_size=192, num_attention_heads=4))
    path = train_memorising_adapter(wide, root / "liar", "q", "a", steps=1)
    edit_config(path, base_model_name_or_path=str(base_model))
    return path


@pytest.fixture
def adapter(tmp_path: Path, trained_adapters: dict[str, Path]) -> Path:
    path = tmp_path / "alpha"
    shutil.copytree(trained_adapters["alpha"], path)
    return path


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def test_a_good_adapter_is_described(adapter: Path, base_spec: BaseModelSpec) -> None:
    info = inspect_adapter(adapter, **LIMITS, base=base_spec, root=adapter.parent)
    assert info.rank == 8 and info.alpha == 16
    assert set(info.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert info.size_bytes > 0


def _pickle_instead(path: Path) -> None:
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")


def _corrupt_header(path: Path) -> None:
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}")


def _write_tensors(path: Path, tensors: dict[str, list[int]], trailing: bytes = b"") -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset) + trailing)


def _half_written(path: Path) -> None:
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _symlink_outside(path: Path) -> None:
    outside = path.parent.parent / "elsewhere.safetensors"
    (path / "adapter_model.safetensors").rename(outside)
    (path / "adapter_model.safetensors").symlink_to(outside)


PREFIX = "base_model.model.model.layers.0."
REJECTIONS: list[tuple[str, Callable[[Path], None], str]] = [
    ("pickle weights", _pickle_instead, "pickle_weights"),
    ("config not json", lambda p: (p / "adapter_config.json").write_text("{oops"), "bad_config"),
    ("not lora", lambda p: edit_config(p, peft_type="IA3"), "not_lora"),
    ("dora", lambda p: edit_config(p, use_dora=True), "dora"),
    ("bias", lambda p: edit_config(p, bias="all"), "bias"),
    ("modules_to_save", lambda p: edit_config(p, modules_to_save=["lm_head"]), "modules_to_save"),
    ("rank too high", lambda p: edit_config(p, r=128), "rank"),
    ("base mismatch", lambda p: edit_config(p, base_model_name_or_path="meta-llama/Llama-3-8B"), "base_mismatch"),
    ("corrupt safetensors header", _corrupt_header, "bad_safetensors"),
    (
        "trailing bytes",
        lambda p: _write_tensors(p, {PREFIX + "self_attn.q_proj.lora_A.weight": [8, 64]}, b"xx"),
        "bad_safetensors",
    ),
    (
        "tensor rank above limit",
        lambda p: _write_tensors(p, {PREFIX + "self_attn.q_proj.lora_A.weight": [128, 64]}),
        "rank",
    ),
    (
        "unknown target module",
        lambda p: _write_tensors(p, {PREFIX + "self_attn.qkv_proj.lora_A.weight": [8, 64]}),
        "unknown_target",
    ),
    (
        "wrong shape",
        lambda p: _write_tensors(p, {PREFIX + "self_attn.q_proj.lora_A.weight": [8, 96]}),
        "shape_mismatch",
    ),
    (
        "embedding weights",
        lambda p: _write_tensors(
            p, {PREFIX + "self_attn.q_proj.lora_A.weight": [8, 64], "base_model.model.lm_head.weight": [64, 64]}
        ),
        "unsupported_tensor",
    ),
    ("symlink outside the directory", _symlink_outside, "outside_directory"),
]
INCOMPLETE: list[tuple[str, Callable[[Path], None]]] = [
    ("missing weights", lambda p: (p / "adapter_model.safetensors").unlink()),
    ("missing config", lambda p: (p / "adapter_config.json").unlink()),
    ("half-written weights", _half_written),
    ("weights shorter than the header", lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x01\x02")),
]


@pytest.mark.parametrize(("break_it", "reason"), [r[1:] for r in CRAFTED], ids=[r[0] for r in CRAFTED])
def test_crafted_adapters_are_refused_with_a_precise_reason(
    adapter: Path, base_spec: BaseModelSpec, break_it: Callable[[Path], None], reason: str
) -> None:
    break_it(adapter)
    with pytest.raises(AdapterRejected) as caught, stalled():
        check_adapter(adapter, base_spec, **LIMITS)
    assert caught.value.reason == reason, caught.value
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_a_copy_in_progress_is_refused_once_it_stops_changing(adapter: Path, base_spec: BaseModelSpec) -> None:
    _half_written(adapter)
    with pytest.raises(AdapterIncomplete):  # written just now: a copy under way
        inspect_adapter(adapter, **LIMITS, base=base_spec)
    then = time.time() - STALL_SECONDS - 1
    os.utime(adapter / "adapter_model.safetensors", (then, then))  # rsync -a: an old mtime, a fresh ctime
    with pytest.raises(AdapterIncomplete):
        inspect_adapter(adapter, **LIMITS, base=base_spec)
    with stalled(), pytest.raises(AdapterRejected, match="truncated"):
        inspect_adapter(adapter, **LIMITS, base=base_spec)


@pytest.mark.parametrize("break_it", [r[1] for r in INCOMPLETE], ids=[r[0] for r in INCOMPLETE])
def test_copies_in_progress_are_incomplete_not_rejected(
    adapter: Path, base_spec: BaseModelSpec, break_it: Callable[[Path], None]
) -> None:
    break_it(adapter)
    with pytest.raises(AdapterIncomplete):
        inspect_adapter(adapter, **LIMITS, base=base_spec, root=adapter.parent)


def test_an_adapter_from_another_base_is_caught_by_shapes(other_base_adapter: Path, base_spec: BaseModelSpec) -> None:
    with pytest.raises(AdapterRejected) as caught:
        inspect_adapter(other_base_adapter, **LIMITS, base=base_spec)
    assert caught.value.reason == "shape_mismatch" and "different base" in str(caught.value)


def test_aliases_accept_another_name_for_the_base(adapter: Path, base_model: Path) -> None:
    edit_config(adapter, base_model_name_or_path="Qwen/Qwen2.5-7B-Instruct")
    strict = BaseModelSpec.from_pretrained(str(base_model))
    with pytest.raises(AdapterRejected, match="--base-model-alias"):
        inspect_adapter(adapter, **LIMITS, base=strict)
    aliased = BaseModelSpec.from_pretrained(str(base_model), ["Qwen/Qwen2.5-7B-Instruct"])
    assert inspect_adapter(adapter, **LIMITS, base=aliased).rank == 8


@pytest.mark.parametrize(("break_it", "reason"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_bad_adapters_are_rejected_with_a_reason(
    adapter: Path, base_spec: BaseModelSpec, break_it: Callable[[Path], None], reason: str
) -> None:
    break_it(adapter)
    with pytest.raises(AdapterRejected) as caught:
        inspect_adapter(adapter, **LIMITS, base=base_spec, root=adapter.parent)
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


def _declaring(adapter: Path, base: str, fingerprint: str | None = None) -> Path:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    if fingerprint is not None:
        (adapter / "training_metadata.json").write_text(json.dumps({"base_fingerprint": fingerprint}))
    return adapter


def test_the_same_base_is_accepted_however_it_is_named(
    adapter: Path, base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained on a relative path, served by its absolute path from another directory, and back."""
    monkeypatch.chdir(base_model.parent)
    relative_spec = BaseModelSpec.from_pretrained(base_model.name)  # served as `tiny-qwen2` from its parent
    monkeypatch.chdir(tmp_path)
    _declaring(adapter, str(base_model))  # what our trainer records: the absolute path
    inspect_adapter(adapter, max_lora_rank=64, max_bytes=10**9, base=relative_spec)
    absolute_spec = BaseModelSpec.from_pretrained(str(base_model) + "/")
    inspect_adapter(adapter, max_lora_rank=64, max_bytes=10**9, base=absolute_spec)


def test_a_moved_base_is_recognised_by_its_fingerprint(adapter: Path, base_model: Path, tmp_path: Path) -> None:
    moved = Path(shutil.copytree(base_model, tmp_path / "models" / "renamed"))
    spec = BaseModelSpec.from_pretrained(str(moved))
    assert spec.fingerprint == BaseModelSpec.from_pretrained(str(base_model)).fingerprint
    gone = str(tmp_path / "deleted" / "tiny-qwen2")  # the path it was trained from no longer exists
    with pytest.raises(AdapterRejected, match="--base-model-alias"):  # a name alone: not the same model
        inspect_adapter(_declaring(adapter, gone), max_lora_rank=64, max_bytes=10**9, base=spec)
    inspect_adapter(_declaring(adapter, gone, spec.fingerprint), max_lora_rank=64, max_bytes=10**9, base=spec)
    with pytest.raises(AdapterRejected, match="--base-model-alias"):  # another model's fingerprint is no pass
        inspect_adapter(_declaring(adapter, gone, "sha256:" + "0" * 64), max_lora_rank=64, max_bytes=10**9, base=spec)


def test_the_cached_spec_matches_the_full_one(base_model: Path) -> None:
    full = BaseModelSpec.from_pretrained(str(base_model))
    cached = BaseModelSpec.load(str(base_model))
    assert (cached.fingerprint, cached.linear_shapes, cached.names) == (
        full.fingerprint,
        full.linear_shapes,
        full.names,
    )

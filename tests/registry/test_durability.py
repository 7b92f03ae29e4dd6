"""Nothing good is lost: failed loads leave no trace, restarts serve the last good version, and
kept versions can be rolled back to. Real adapters, a real directory, a recording engine."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from server.errors import ModelNotFound
from server.registry import AdapterState
from server.registry.base_model import BaseModelSpec
from server.registry.validation import AdapterRejected, file_sha256
from server.terms.layout import STORE_DIR, WEIGHTS_FILE
from tests.registry.test_registry import RecordingEngine, make_registry


class FailingEngine(RecordingEngine):
    """Refuses to load adapters whose path contains ``refuse``, as peft does with a bad adapter."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    async def add_adapter(self, adapter) -> None:  # type: ignore[no-untyped-def]
        if self.refuse in adapter.path:
            raise RuntimeError("size mismatch for lora_A")
        await super().add_adapter(adapter)


def _copy(
    source: Path,
    target: Path,
    *,
    config: dict[str, object] | None = None,
    weights: Callable[[dict], dict] | None = None,
) -> Path:  # type: ignore[type-arg]
    shutil.copytree(source, target)
    if config is not None:
        path = target / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if weights is not None:
        tensors = weights(load_file(target / WEIGHTS_FILE))
        save_file(tensors, target / WEIGHTS_FILE)
    return target


def _scaled(tensors: dict) -> dict:  # type: ignore[type-arg]
    return {k: v * 1.5 for k, v in tensors.items()}


def _nan(tensors: dict) -> dict:  # type: ignore[type-arg]
    key = next(iter(tensors))
    tensors[key][0, 0] = float("nan")
    return tensors


@pytest.fixture(scope="module")
def base_spec(base_model: Path) -> BaseModelSpec:
    return BaseModelSpec.from_pretrained(str(base_model))


def _kept_numbers(directory: Path, name: str) -> list[str]:
    root = directory / STORE_DIR / name
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _lease_path(registry, name: str) -> str:  # type: ignore[no-untyped-def]
    async def use() -> str:
        async with registry.lease(name) as lease:
            return str(lease.ref.path)

    return asyncio.run(use())


def test_a_restart_on_the_same_base_and_engine_trusts_the_proof(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """A version proven on this base and engine is not loaded again at start (restarts stay fast);
    another engine proves it again before calling it ready."""
    directory = tmp_path / "adapters"
    _copy(trained_adapters["alpha"], directory / "shop")
    first = RecordingEngine()
    asyncio.run(make_registry(directory, first).scan())
    assert [a.name for a in first.added] == ["shop"]
    same = RecordingEngine()
    restarted = make_registry(directory, same)
    asyncio.run(restarted.scan())
    assert same.added == [] and restarted.get("shop").state is AdapterState.READY  # type: ignore[union-attr]
    assert _lease_path(restarted, "shop").startswith(str(directory / STORE_DIR)) and len(same.added) == 1
    other = FailingEngine(refuse="/nothing/")
    asyncio.run(make_registry(directory, other).scan())
    assert [a.name for a in other.added] == ["shop"]


def test_a_failed_load_is_rejected_and_leaves_nothing_behind(tmp_path: Path, trained_adapters: dict[str, Path]) -> None:
    directory = tmp_path / "adapters"
    _copy(trained_adapters["alpha"], directory / "shop")
    rejected: list[str] = []
    registry = make_registry(directory, FailingEngine(refuse="/shop/"), rejected)
    asyncio.run(registry.scan())
    entry = registry.get("shop")
    assert entry is not None and entry.state is AdapterState.REJECTED and entry.active is None
    assert "could not load" in (entry.last_error or "") and rejected == ["load_failed"]
    assert _kept_numbers(directory, "shop") == []  # the unproven copy is gone


def test_a_restart_serves_the_last_good_version_when_the_new_files_are_refused(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    directory = tmp_path / "adapters"
    _copy(trained_adapters["alpha"], directory / "shop")
    first = make_registry(directory, RecordingEngine())
    asyncio.run(first.scan())
    good = first.get("shop").active  # type: ignore[union-attr]
    assert good is not None and good.sha256 == file_sha256(trained_adapters["alpha"] / WEIGHTS_FILE)
    shutil.rmtree(directory / "shop")
    _copy(trained_adapters["beta"], directory / "shop", config={"use_dora": True})  # a bad version arrives
    asyncio.run(first.sync("shop"))
    assert first.get("shop").active is good  # type: ignore[union-attr]

    engine = RecordingEngine()
    restarted = make_registry(directory, engine)  # a new process on the same directory
    asyncio.run(restarted.scan())
    entry = restarted.get("shop")
    assert entry is not None and entry.state is AdapterState.READY and entry.restored
    assert entry.active is not None and (entry.active.version, entry.active.sha256) == (good.version, good.sha256)
    assert "DoRA" in (entry.last_error or "") and entry.rejected_reason == "dora"
    assert (directory / "shop" / "adapter_config.json").read_text().count("use_dora")  # the directory keeps its files
    assert _lease_path(restarted, "shop") == good.load_path == engine.added[-1].path


@pytest.mark.parametrize("damage", ["truncated", "half-copied"])
def test_a_restart_after_a_crash_mid_copy_serves_the_last_good_version(
    tmp_path: Path, trained_adapters: dict[str, Path], damage: str
) -> None:
    directory = tmp_path / "adapters"
    _copy(trained_adapters["alpha"], directory / "shop")
    first = make_registry(directory, RecordingEngine())
    asyncio.run(first.scan())
    weights = directory / "shop" / WEIGHTS_FILE
    if damage == "truncated":  # replaced in place, cut short
        data = (trained_adapters["beta"] / WEIGHTS_FILE).read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:  # `rm -rf shop; cp -r new shop` died after the config
        shutil.rmtree(directory / "shop")
        (directory / "shop").mkdir()
        shutil.copy(trained_adapters["beta"] / "adapter_config.json", directory / "shop")
    restarted = make_registry(directory, RecordingEngine())
    asyncio.run(restarted.scan())
    entry = restarted.get("shop")
    assert entry is not None and entry.state is AdapterState.READY and entry.restored
    assert entry.active is not None and entry.active.sha256 == file_sha256(trained_adapters["alpha"] / WEIGHTS_FILE)


BAD_FOR_PEFT = {
    "unknown-target-module": {"config": {"target_modules": ["q_proj", "no_such_proj"]}},
    "rank-pattern-mismatch": {"config": {"rank_pattern": {"q_proj": 4}}},
    "r-true": {"config": {"r": True}},
    "alpha-nan": {"config": {"lora_alpha": float("nan")}},
    "alpha-string": {"config": {"lora_alpha": "abc"}},
    "nan-weights": {"weights": _nan},
    "int-weights": {"weights": lambda t: {k: v.to(dtype=__import__("torch").int64) for k, v in t.items()}},
}


@pytest.mark.parametrize("case", list(BAD_FOR_PEFT))
def test_install_of_a_bad_adapter_changes_nothing_on_disk_or_in_memory(
    tmp_path: Path, trained_adapters: dict[str, Path], base_spec: BaseModelSpec, case: str
) -> None:
    directory = tmp_path / "adapters"
    _copy(trained_adapters["alpha"], directory / "victim")
    before = {f.name: f.read_bytes() for f in (directory / "victim").iterdir()}
    bad = _copy(trained_adapters["beta"], tmp_path / "incoming" / "bad", **BAD_FOR_PEFT[case])  # type: ignore[arg-type]
    registry = make_registry(directory, RecordingEngine(), base_spec=base_spec)
    asyncio.run(registry.scan())
    serving = registry.get("victim").active  # type: ignore[union-attr]

    with pytest.raises(AdapterRejected):
        asyncio.run(registry.install("victim", bad))
    assert {f.name: f.read_bytes() for f in (directory / "victim").iterdir()} == before
    assert registry.get("victim").active is serving  # type: ignore[union-attr]
    assert _kept_numbers(directory, "victim") == ["1"]
    with pytest.raises(AdapterRejected):  # and as a new name: nothing registered, nothing written
        asyncio.run(registry.install("fresh", bad))
    assert registry.get("fresh") is None and not (directory / "fresh").exists()


def test_the_watched_directory_refuses_what_peft_would_refuse(
    tmp_path: Path, trained_adapters: dict[str, Path], base_spec: BaseModelSpec
) -> None:
    directory = tmp_path / "adapters"
    for case, change in BAD_FOR_PEFT.items():
        _copy(trained_adapters["beta"], directory / case, **change)  # type: ignore[arg-type]
    engine = RecordingEngine()
    registry = make_registry(directory, engine, base_spec=base_spec)
    asyncio.run(registry.scan())
    assert {e.name: e.state for e in registry.entries()} == dict.fromkeys(BAD_FOR_PEFT, AdapterState.REJECTED)
    assert engine.added == []


def test_rollback_serves_a_kept_version_and_writes_it_back(tmp_path: Path, trained_adapters: dict[str, Path]) -> None:
    directory = tmp_path / "adapters"
    registry = make_registry(directory, RecordingEngine(), keep_versions=2)
    digests = []
    for i, variant in enumerate([{}, {"weights": _scaled}, {}]):
        source = _copy(trained_adapters["alpha" if i < 2 else "beta"], tmp_path / f"v{i}", **variant)  # type: ignore[arg-type]
        asyncio.run(registry.install("shop", source))
        digests.append(file_sha256(source / WEIGHTS_FILE))
    assert _kept_numbers(directory, "shop") == ["2", "3"]  # retention: the newest two
    entry = asyncio.run(registry.rollback("shop"))  # the newest version unlike the one served
    assert entry.active is not None and (entry.active.version, entry.active.sha256) == (2, digests[1])
    assert file_sha256(directory / "shop" / WEIGHTS_FILE) == digests[1]
    entry = asyncio.run(registry.rollback("shop", 3))
    assert entry.active is not None and entry.active.sha256 == digests[2]
    with pytest.raises(ModelNotFound, match="kept: \\[3, 2\\]"):
        asyncio.run(registry.rollback("shop", 1))
    asyncio.run(registry.sync("shop"))  # the watcher's view of what rollback wrote: nothing new
    assert registry.get("shop").active is entry.active  # type: ignore[union-attr]


def test_the_same_weights_with_another_config_are_another_version(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """lora_alpha scales the weights: a config change is a new version, never the kept one again."""
    directory = tmp_path / "adapters"
    registry = make_registry(directory, RecordingEngine())
    asyncio.run(registry.install("shop", _copy(trained_adapters["alpha"], tmp_path / "v1")))
    entry = asyncio.run(
        registry.install("shop", _copy(trained_adapters["alpha"], tmp_path / "v2", config={"lora_alpha": 32}))
    )
    assert entry.active is not None and entry.active.version == 2 and entry.active.info.alpha == 32
    assert json.loads((directory / "shop" / "adapter_config.json").read_text())["lora_alpha"] == 32
    entry = asyncio.run(registry.rollback("shop"))
    assert entry.active is not None and entry.active.version == 1 and entry.active.info.alpha == 16


def test_start_up_removes_stale_unproven_copies_only(tmp_path: Path, trained_adapters: dict[str, Path]) -> None:
    """A crash between copy and load leaves an unproven copy: removed once stale, never served,
    and a fresh one (another gateway on the volume may be loading it) is left alone."""
    import os
    import time

    from server.registry.store import VersionStore

    directory = tmp_path / "adapters"
    store = VersionStore(directory)
    stale = store.copy_in("shop", trained_adapters["alpha"], "x")
    fresh = store.copy_in("shop", trained_adapters["beta"], "y")
    old = time.time() - 7200
    os.utime(stale.path.parent, (old, old))
    (directory / ".versions" / "123-abcdef01").mkdir(parents=True)  # an earlier release's snapshots
    store.clean()
    assert not stale.path.exists() and fresh.path.exists() and not (directory / ".versions").exists()
    assert store.versions("shop") == []  # unproven copies are never what a restart serves


def test_retention_takes_a_version_that_once_answered_a_request_and_unloads_it(
    tmp_path: Path, trained_adapters: dict[str, Path]
) -> None:
    """--keep-versions 2: the newest two, pinned ones, and what serves or answers now are kept. A
    version left loaded after a ``shop@1`` request used to stay until the engine evicted it (and
    kept answering ``shop@1``)."""
    directory = tmp_path / "adapters"
    engine = RecordingEngine()
    registry = make_registry(directory, engine, keep_versions=2)

    async def scenario() -> None:
        for i, variant in enumerate([{}, {"weights": _scaled}]):
            await registry.install("shop", _copy(trained_adapters["alpha"], tmp_path / f"v{i}", **variant))  # type: ignore[arg-type]
        async with registry.lease("shop@1") as lease:
            assert lease.adapter is not None and lease.adapter.version == 1
            old = lease.adapter
        await registry.install("shop", _copy(trained_adapters["beta"], tmp_path / "v3"))
        assert _kept_numbers(directory, "shop") == ["2", "3"]
        assert any(ref.adapter_id == old.adapter_id for ref in engine.removed)  # unloaded, not left to LRU
        with pytest.raises(ModelNotFound, match="kept: \\[3, 2\\]"):
            async with registry.lease("shop@1"):
                pass

    asyncio.run(scenario())


def test_adapters_list_reads_every_name_from_the_files(tmp_path: Path, trained_adapters: dict[str, Path]) -> None:
    import json as json_

    from server.cli import main

    directory = tmp_path / "adapters"
    registry = make_registry(directory, RecordingEngine())
    asyncio.run(registry.install("shop", _copy(trained_adapters["alpha"], tmp_path / "v1")))
    asyncio.run(registry.install("shop", _copy(trained_adapters["beta"], tmp_path / "v2")))
    _copy(trained_adapters["alpha"], directory / "fresh")  # never proven by a gateway
    registry.store.set_pinned("shop", 1, True)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["adapters", "list", "--adapters-dir", str(directory), "--json"]) == 0
    rows = {row["name"]: row for row in json_.loads(out.getvalue())}
    assert (
        rows["shop"]["directory"]["version"] == 2 and rows["shop"]["kept"] == [2, 1] and rows["shop"]["pinned"] == [1]
    )
    assert rows["fresh"]["directory"]["version"] is None and rows["fresh"]["kept"] == []
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        main(["adapters", "list", "--adapters-dir", str(directory)])
    assert "not proven" in table.getvalue() and table.getvalue().splitlines()[0].startswith("name")

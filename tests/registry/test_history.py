"""Kept versions you can choose between: history, pins that retention respects, the eval outcome
and training metadata each version keeps; the same through the CLI, offline."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from server.cli import main
from server.registry.history import history
from server.registry.store import VersionStore


def kept(store: VersionStore, tmp_path: Path, name: str, n: int, eval: dict | None = None) -> None:  # type: ignore[type-arg]
    """Copy in and prove ``n`` versions of ``name`` (files only: the store does not look inside)."""
    for i in range(n):
        source = tmp_path / f"src-{uuid.uuid4().hex}"
        source.mkdir()
        (source / "adapter_model.safetensors").write_bytes(f"weights {i}".encode())
        (source / "adapter_config.json").write_text("{}")
        (source / "training_metadata.json").write_text(
            json.dumps({"datasets": [{"path": f"/data/faq-{i}.jsonl"}], "examples": {"train": 10 + i}, "steps": 30})
        )
        store.prove(store.copy_in(name, source, f"{i:064x}"), set(), eval=eval)


def test_retention_keeps_the_newest_and_every_pinned_version(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "adapters", keep=2)
    kept(store, tmp_path, "shop", 1)
    store.set_pinned("shop", 1, True)
    kept(store, tmp_path, "shop", 3)
    assert [v.number for v in store.versions("shop")] == [4, 3, 1]  # 2 went; 1 is pinned
    store.set_pinned("shop", 1, False)
    kept(store, tmp_path, "shop", 1)
    assert [v.number for v in store.versions("shop")] == [5, 4]
    with pytest.raises(LookupError, match=r"No kept version 1 of adapter `shop`; kept: \[5, 4\]"):
        store.set_pinned("shop", 1, True)


def test_history_shows_publish_time_pins_eval_and_training(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "adapters")
    outcome = {"passed": True, "scores": {"exact": 1.0}}
    kept(store, tmp_path, "shop", 2, eval=outcome)
    store.set_pinned("shop", 1, True)
    rows = history(store, "shop")
    assert [r["version"] for r in rows] == [2, 1] and [r["pinned"] for r in rows] == [False, True]
    assert rows[0]["eval"] == outcome and rows[0]["sha256"] == f"{1:064x}" and rows[0]["published"] > 0
    assert rows[1]["training"] == {
        "datasets": ["/data/faq-0.jsonl"],
        "examples": 10,
        "steps": 30,
        "final_train_loss": None,
    }


def test_history_pin_and_unpin_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "adapters"
    kept(VersionStore(directory), tmp_path, "shop", 2)
    where = ["--adapters-dir", str(directory)]
    assert main(["adapters", "pin", "shop", "1", *where]) == 0
    assert "shop version 1 pinned" in capsys.readouterr().out
    assert main(["adapters", "history", "shop", *where]) == 0
    out = capsys.readouterr().out
    assert "30 steps on faq-1.jsonl" in out and "(the directory holds none of these versions)" in out
    line_of_1 = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert " yes " in line_of_1
    assert main(["adapters", "history", "shop", "--json", *where]) == 0
    assert [r["pinned"] for r in json.loads(capsys.readouterr().out)] == [False, True]
    assert main(["adapters", "unpin", "shop", "1", *where]) == 0
    with pytest.raises(SystemExit, match="No kept version 9"):
        main(["adapters", "pin", "shop", "9", *where])
    with pytest.raises(SystemExit, match="no kept versions of 'other'"):
        main(["adapters", "history", "other", *where])

"""The suite's artifact cache (tests/artifacts.py): built once per inputs, never stale, never half-built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import artifacts


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LORA_GATEWAY_TEST_CACHE", str(root))
    return root


def test_a_recipe_is_built_once_and_reused(cache: Path, tmp_path: Path) -> None:
    source = tmp_path / "recipe.py"
    source.write_text("steps = 1\n")
    builds: list[Path] = []

    def build(directory: Path) -> None:
        builds.append(directory)
        (directory / "weights").write_text("trained")

    first = artifacts.artifact("r", {"lr": 0.1}, [source], build)
    again = artifacts.artifact("r", {"lr": 0.1}, [source], build)
    assert first == again and len(builds) == 1 and (first / "weights").read_text() == "trained"
    copy = artifacts.copy_of(first, tmp_path / "mine")
    assert sorted(p.name for p in copy.iterdir()) == ["weights"]  # the cache's marker stays behind


def test_any_changed_input_is_a_new_key(tmp_path: Path) -> None:
    source = tmp_path / "recipe.py"
    source.write_text("steps = 1\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("{}\n")
    original = artifacts.key("r", {"lr": 0.1}, [source, data])
    assert artifacts.key("r", {"lr": 0.1}, [source, data]) == original
    assert artifacts.key("r", {"lr": 0.2}, [source, data]) != original
    assert artifacts.key("other", {"lr": 0.1}, [source, data]) != original
    source.write_text("steps = 2\n")
    assert artifacts.key("r", {"lr": 0.1}, [source, data]) != original
    source.write_text("steps = 1\n")
    (data / "b.jsonl").write_text("{}\n")  # a file added under a directory input
    assert artifacts.key("r", {"lr": 0.1}, [source, data]) != original
    (data / "b.jsonl").unlink()
    (data / "__pycache__").mkdir()  # compiled files are not inputs
    (data / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert artifacts.key("r", {"lr": 0.1}, [source, data]) == original


def test_a_failed_build_leaves_nothing_that_counts_as_built(cache: Path, tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        (directory / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        artifacts.artifact("r", {}, [], broken)
    assert [p.name for p in cache.iterdir()] == [f"r-{artifacts.key('r', {}, [])}.lock"]  # no half-built directory
    built = artifacts.artifact("r", {}, [], lambda directory: (directory / "whole").write_text("x"))
    assert sorted(p.name for p in built.iterdir()) == [".complete", "whole"]

"""The package's layers, as benchmarks/import_graph.py draws them: every module on a floor, no import
cycle, no arrow that runs up. A new module that fits no floor, or an import against the design,
fails here with the arrow named."""

from __future__ import annotations

from benchmarks.import_graph import FLOORS, ROOT, read_graph


def test_every_module_has_a_floor() -> None:
    assert read_graph(ROOT / "server").unplaced() == []


def test_no_import_cycles() -> None:
    assert read_graph(ROOT / "server").cycles() == []


def test_no_import_runs_up() -> None:
    graph = read_graph(ROOT / "server")
    up = [f"{s} ({FLOORS[graph.floor(s)][0]}) -> {t} ({FLOORS[graph.floor(t)][0]})" for s, t in graph.upward()]
    assert up == []


def test_the_checks_can_fail(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A registry module that imports evaluation (the design this replaced) is an arrow up and a
    cycle when evaluation imports it back: the graph sees both."""
    (tmp_path / "registry").mkdir()
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "registry" / "gating.py").write_text("from ..evaluation import proving\n")
    (tmp_path / "evaluation" / "proving.py").write_text("from ..registry.gating import x\n")
    graph = read_graph(tmp_path)
    assert graph.upward() == [("server.registry.gating", "server.evaluation.proving")]
    assert graph.cycles() == [["server.evaluation.proving", "server.registry.gating"]]

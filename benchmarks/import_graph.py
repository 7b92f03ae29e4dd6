"""The package's import graph against the floors it is meant to have: cycles, arrows that run up, sizes.

Every ``import`` in ``server/`` counts, at the top of a file or inside a function (a lazy import is
still a dependency; it only moves the cost). A module's floor is the longest prefix of its name in
``FLOORS``; an arrow *runs up* when a module imports one on a higher floor. Entry points (the routes,
integrations, command lines, the app that assembles them) are the top floor and may import anything.

    .venv/bin/python benchmarks/import_graph.py [--root server]

Writes benchmarks/results/import_graph.{json,md} and prints a summary. ``tests/test_layers.py``
asserts the same table: no cycle, no arrow up.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import RESULTS, ROOT  # noqa: E402

# Bottom to top. A package sits on one floor; the modules named apart (a package's command line, a
# helper that starts a whole gateway) are entry points that live inside the package they serve.
FLOORS: list[tuple[str, list[str]]] = [
    ("foundation", ["errors", "jsonbounds", "devices", "settings", "terms", "offline_model", "stats"]),
    ("engine", ["engine"]),
    ("openai", ["openai"]),
    ("datasets", ["datasets"]),
    ("storage", ["database"]),
    ("registry", ["registry"]),
    ("trainer", ["trainer"]),
    ("tenancy", ["tenancy"]),
    ("feedback", ["feedback"]),
    ("evaluation", ["evaluation"]),
    ("finetune", ["finetune"]),
    (
        "serving",
        [
            "conversion",
            "admission",
            "metrics",
            "observing",
            "gateway",
            "completions",
            "connections",
            "serving",
            "recording",
            "responses_store",
            "output_checks",
        ],
    ),
    ("channels", ["channels"]),
    (
        "entry",
        [
            "api",
            "integrations",
            "app",
            "cli",
            "__main__",
            "demo",
            "registry.cli",
            "trainer.cli",
            "tenancy.cli",
            "feedback.cli",
            "evaluation.cli",
            "evaluation.local_gateway",
            "finetune.cli",
        ],
    ),
]


@dataclass(frozen=True)
class Graph:
    modules: dict[str, Path]
    arrows: dict[str, set[str]]

    def floor(self, module: str) -> int:
        """The floor of the longest matching prefix in FLOORS (``server.`` left off)."""
        name = module.removeprefix("server.")
        best, best_len = -1, -1
        for number, (_, prefixes) in enumerate(FLOORS):
            for prefix in prefixes:
                if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                    best, best_len = number, len(prefix)
        return best

    def upward(self) -> list[tuple[str, str]]:
        return sorted(
            (source, target)
            for source, targets in self.arrows.items()
            for target in targets
            if self.floor(target) > self.floor(source)
        )

    def unplaced(self) -> list[str]:
        return sorted(module for module in self.modules if module != "server" and self.floor(module) < 0)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = 0
        for start in sorted(self.modules):
            if start in index:
                continue
            work = [(start, iter(sorted(self.arrows.get(start, ()))))]
            index[start] = low[start] = counter
            counter += 1
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = counter
                        counter += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(sorted(self.arrows.get(child, ())))))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
        return sorted(found)

    def unit_arrows(self) -> set[tuple[str, str]]:
        """Arrows between top-level units (a package, or a module directly under ``server``)."""

        def unit(module: str) -> str:
            return module.split(".")[1] if "." in module else module

        return {(unit(s), unit(t)) for s, ts in self.arrows.items() for t in ts if unit(s) != unit(t)}


def read_graph(root: Path) -> Graph:
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(["server", *parts])] = path
    arrows: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _targets(node, package):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target not in (module, "server"):
                    arrows[module].add(target)
    return Graph(modules, dict(arrows))


def _targets(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.replace("lora_gateway", "server", 1) for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
    else:
        base = (node.module or "").replace("lora_gateway", "server", 1)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def measure(root: Path) -> dict[str, object]:
    graph = read_graph(root)
    sizes = {module: len(path.read_text().splitlines()) for module, path in graph.modules.items()}
    return {
        "modules": len(graph.modules),
        "lines": sum(sizes.values()),
        "module_arrows": sum(len(targets) for targets in graph.arrows.values()),
        "unit_arrows": len(graph.unit_arrows()),
        "floors": [name for name, _ in FLOORS],
        "arrows_up": [f"{s} -> {t}" for s, t in graph.upward()],
        "cycles": graph.cycles(),
        "unplaced": graph.unplaced(),
        "largest_modules": sorted(sizes.items(), key=lambda item: -item[1])[:10],
        "over_400_lines": sorted((module, size) for module, size in sizes.items() if size > 400),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "server", help="the package to read")
    parser.add_argument("--before", type=Path, help="an older copy of server/ to compare with")
    args = parser.parse_args()
    result = {"after": measure(args.root)}
    if args.before:
        result["before"] = measure(args.before)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import_graph.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Import graph", "", "| | modules | lines | arrows (modules) | arrows (units) | up | cycles |"]
    lines.append("|---|---|---|---|---|---|---|")
    for label, data in result.items():
        lines.append(
            f"| {label} | {data['modules']} | {data['lines']} | {data['module_arrows']} | {data['unit_arrows']} "
            f"| {len(data['arrows_up'])} | {len(data['cycles'])} |"  # type: ignore[arg-type]
        )
    lines += ["", "Floors, bottom to top: " + ", ".join(result["after"]["floors"]) + "."]  # type: ignore[arg-type]
    for label, data in result.items():
        over = ", ".join(f"`{m}` ({n})" for m, n in data["over_400_lines"])  # type: ignore[attr-defined]
        lines.append(f"- {label}, modules over 400 lines: {over or 'none'}")
    for label, data in result.items():
        for arrow in data["arrows_up"]:  # type: ignore[attr-defined]
            lines.append(f"- {label}, runs up: `{arrow}`")
        for cycle in data["cycles"]:  # type: ignore[attr-defined]
            lines.append(f"- {label}, cycle: " + " ↔ ".join(f"`{m}`" for m in cycle))
    (RESULTS / "import_graph.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

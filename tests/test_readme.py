"""The README's and the docs' examples, run as written against `lora-gateway demo` (what `make demo` runs).

Blocks marked ``<!-- docs-test: NAME -->`` are run as they are, in a directory laid out like a
checkout (``.venv``, ``examples``; the demo writes ``.demo``, ``adapters``, ``runs``), with only the
port changed. Their ``#`` comments are the documented output, and are checked:

- ``# MODEL -> TEXT``: the response for MODEL answers exactly TEXT;
- ``# -> TEXT``: an output line (or the answer of a JSON response) starts with TEXT;
- ``# ... TEXT``: an output line matches TEXT, any number standing for any number;
- a TEXT in parentheses describes, and is not checked (a random base model's output, say).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import readme_demo

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- docs-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_blocks() -> dict[str, tuple[str, str]]:
    """Every marked block of the README and the docs site, by name (a name used twice fails)."""
    found: dict[str, tuple[str, str]] = {}
    for document in DOCUMENTS:
        for m in BLOCK.finditer(document.read_text()):
            assert m["name"] not in found, f"docs-test {m['name']!r} is marked twice"
            found[m["name"]] = (m["lang"], m["code"])
    return found


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[Path, int]]:
    """`lora-gateway demo` in a directory laid out like a checkout, over the suite's one training of
    the demo's adapters (``tests/readme_demo.py``): the demo finds them trained and only serves."""
    running = readme_demo.Demo()
    try:
        running.ready(300)
        assert "Training demo adapter" not in running.output(), "the demo trained again: " + running.output()[-2000:]
        yield running.work, running.port
    finally:
        running.stop()


def run_block(name: str, work: Path, port: int) -> tuple[str, str]:
    """(the block's code, what it printed), run as written but for the port."""
    lang, code = readme_blocks()[name]
    runnable = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    command = (
        ["bash", "-e", "-c", runnable] if lang == "bash" else [str(work / ".venv" / "bin" / "python"), "-c", runnable]
    )
    # The CLI asks the gateway at LORA_GATEWAY_PORT whether it serves what it published, as a user's
    # shell asks the demo's 8000.
    env = {**os.environ, "LORA_GATEWAY_PORT": str(port)}
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"README block {name!r} failed:\n{result.stderr[-3000:]}"
    return code, result.stdout + result.stderr


def documented(code: str) -> list[tuple[str, str]]:
    """(kind, text) of each checked output comment: kind is a model name, '->' or '...'."""
    found = []
    for line in code.splitlines():
        match = re.match(
            r"#\s*(?:(?P<model>[\w.-]+)\s+->|(?P<arrow>->)|(?P<dots>\.\.\.))\s*(?P<text>.*)$", line.strip()
        )
        if match and not match["text"].startswith("("):
            text = re.sub(r"\s*\(.*\)$", "", match["text"]) if match["arrow"] else match["text"]
            found.append((match["model"] or match["arrow"] or match["dots"], text))
    return found


def answers_in(output: str) -> dict[str, str]:
    """model -> answer of each JSON chat completion the output holds."""
    found = {}
    for line in output.splitlines():
        if line.startswith("{") and '"choices"' in line:
            body = json.loads(line)
            found[body["model"]] = body["choices"][0]["message"]["content"]
    return found


def check(code: str, output: str) -> None:
    expectations = documented(code)
    assert expectations, "the block documents no output to check"
    answers, lines = answers_in(output), [line.strip() for line in output.splitlines()]
    for kind, text in expectations:
        if kind == "...":
            pattern = re.escape(text)
            pattern = re.sub(r"\d+(?:\\\.\d+)?", r"\\d+(?:\\.\\d+)?", pattern)
            assert any(re.search(pattern, line) for line in lines), (
                f"no output line like {text!r} in:\n{output[-3000:]}"
            )
        elif kind == "->":
            assert any(line.startswith(text) for line in lines) or any(a.startswith(text) for a in answers.values()), (
                f"nothing starts with {text!r} in:\n{output[-3000:]}"
            )
        else:
            assert answers.get(kind) == text, f"{kind} answered {answers.get(kind)!r}, the README says {text!r}"


def test_every_marked_block_is_checked() -> None:
    assert set(readme_blocks()) == {*IN_ORDER, "profile"}


def test_the_readme_profile_example_is_a_profile_the_gateway_takes(tmp_path: Path) -> None:
    from server.registry.profile import read_profile

    lang, code = readme_blocks()["profile"]
    assert lang == "json"
    (tmp_path / "profile.json").write_text(code, encoding="utf-8")
    profile = read_profile(tmp_path)
    assert profile is not None and profile.tools and profile.tools[0].function.name == "get_order_status"


# The loop blocks train `shop-support` v2 (on all its data and one correction) and promote it; the gate
# block publishes refused files over it in the demo's directory: it goes last.
# "keys" comes last: once a key exists the demo server requires one.
IN_ORDER = [
    "ask-three",
    "train-and-ask",
    "sdk",
    "tools",
    "eval-compare",
    "loop-feedback",
    "loop-canary",
    "gate",
    "keys",
]


# A cold artifact cache trains the demo's three adapters in the first block's setup (minutes on 2 cores).
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", IN_ORDER)
def test_the_readme_demo_runs_as_written(demo: tuple[Path, int], name: str) -> None:
    work, port = demo
    code, output = run_block(name, work, port)
    check(code, output)

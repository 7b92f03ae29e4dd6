"""Trained adapters (and the demo's trained directory), built once and kept, keyed by their inputs.

Training is most of the suite's CPU time, and its output is a pure function of its inputs: the same
base files, data, recipe code and library versions give byte-identical adapters run after run. So
each recipe's result is stored under a key made of exactly those inputs, and every test module,
every xdist worker and every later run in any clone on this machine reuses it instead of training
again. Change any input (a hyper-parameter, a line of the recipe or of the trainer, a dataset, a
torch upgrade) and the key changes, so a stale result can never be served.

Where: ``$LORA_GATEWAY_TEST_CACHE``, else ``~/.cache/lora-gateway/test-artifacts``; ``make clean-cache``
empties it, and ``LORA_GATEWAY_TEST_CACHE=$(mktemp -d) make test`` measures a cold run. Entries are
read-only to tests: fixtures hand out copies, so a test that writes into its adapter changes nothing
for the next one. Concurrent builders (two xdist workers) take a file lock: one builds, the other
waits for it and reuses the result.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "transformers", "peft", "tokenizers", "safetensors")
_COMPLETE = ".complete"


def cache_root() -> Path:
    configured = os.environ.get("LORA_GATEWAY_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "lora-gateway" / "test-artifacts"


def _hash_path(digest: hashlib._Hash, path: Path) -> None:
    """Fold a file, or every file under a directory (names and bytes, in sorted order), into ``digest``."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    else:
        files = [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())


def key(recipe: str, inputs: Mapping[str, object], files: Iterable[Path]) -> str:
    """The digest of everything that decides an artifact's bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"recipe": recipe, "inputs": inputs}, sort_keys=True, default=str).encode())
    digest.update(f"python {sys.version_info[:2]}".encode())
    for library in LIBRARIES:
        digest.update(f"{library} {importlib.metadata.version(library)}".encode())
    for path in files:
        _hash_path(digest, path)
    return digest.hexdigest()[:20]


def artifact(recipe: str, inputs: Mapping[str, object], files: Iterable[Path], build: Callable[[Path], object]) -> Path:
    """The cached directory for ``recipe`` at these inputs, built by ``build(directory)`` if missing.

    ``files`` are the sources and data whose bytes decide the result: the recipe's own module, the
    server code it runs, the base model's directory, the datasets.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{recipe}-{key(recipe, inputs, files)}"
    if (final / _COMPLETE).is_file():
        return final
    with FileLock(str(final) + ".lock"):
        if (final / _COMPLETE).is_file():  # another worker built it while this one waited
            return final
        building = final.with_name(final.name + f".building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)  # left by an earlier process with this pid
        building.mkdir()
        try:
            build(building)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        (building / _COMPLETE).write_text(json.dumps({"recipe": recipe, "inputs": inputs}, default=str))
        os.replace(building, final)
    return final


def copy_of(cached: Path, destination: Path) -> Path:
    """A private, writable copy of a cached artifact (without the cache's own marker), into
    ``destination`` whether or not that directory exists yet."""
    shutil.copytree(cached, destination, ignore=shutil.ignore_patterns(_COMPLETE), dirs_exist_ok=True)
    return destination


def server_sources(*packages: str) -> list[Path]:
    """The server's source files of these subpackages (or modules, with ``.py``), as cache-key inputs."""
    return [ROOT / "server" / name for name in packages]

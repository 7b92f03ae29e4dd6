"""``train --init-adapter``: continue training from an existing adapter instead of a fresh LoRA.

Staged training (the basics first, then promotions, then complaint handling) and the feedback
loop (fix the answers users rated down, train again) both start from the weights that serve
today. ``NAME`` is what the gateway serves for that name: the directory's files when they are a
proven (kept) version, else the newest kept version (the files were refused by validation or an
eval gate, or are not proven yet, and the gateway serves that one instead); only a name never
served continues from its files as they are. ``NAME@N`` is a kept version, anything else a path.
Its rank, alpha and target modules are kept, since a different rank would be a different
adapter, not a continuation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry.store import VersionStore
from ..registry.validation import file_sha256
from ..terms.address import ModelAddress
from ..terms.layout import CONFIG_FILE, PROFILE_FILE, WEIGHTS_FILE
from .config import TrainingError


@dataclass(frozen=True)
class InitAdapter:
    path: Path
    rank: int
    alpha: float
    target_modules: list[str]
    sha256: str
    version: int | None = None  # the kept version it is, when it is one
    why: str = ""  # how NAME was resolved, for the console

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "version": self.version,
            "rank": self.rank,
            "alpha": self.alpha,
        }

    def describe(self) -> str:
        """One line: what training continues from, and why that one."""
        version = f" v{self.version}" if self.version is not None else ""
        why = f"; {self.why}" if self.why else ""
        return f"{self.path}{version} (rank {self.rank}, sha256 {self.sha256[:12]}{why})"

    def carry_profile(self, adapter_dir: Path) -> None:
        """The adapter's profile (system prompt, template, sampling defaults) goes on with it."""
        source = self.path / PROFILE_FILE
        if source.is_file() and not (adapter_dir / PROFILE_FILE).exists():
            (adapter_dir / PROFILE_FILE).write_bytes(source.read_bytes())


def resolve_init_adapter(spec: str, adapters_dir: str | Path) -> InitAdapter:
    """The adapter ``spec`` names (a path, ``NAME@N``, or ``NAME``), checked: safetensors weights
    and a plain LoRA config; ``TrainingError`` saying what was looked for otherwise."""
    root = Path(adapters_dir)
    address = ModelAddress.parse(spec)
    name, number = address.name, address.number
    version: int | None = None
    why = ""
    if Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser()
    elif number is not None:
        kept = VersionStore(root).get(name, number)
        if kept is None:
            numbers = [v.number for v in VersionStore(root).versions(name)] or "none"
            raise TrainingError(f"--init-adapter {spec}: no kept version {number} of {name!r}; kept: {numbers}")
        path, version, why = kept.path, kept.number, "the kept version named"
    elif (root / spec).is_dir():
        path, version, why = _serving(root, spec)
    else:
        raise TrainingError(f"--init-adapter {spec}: not a directory, a NAME in {root}, or a kept NAME@N")
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise TrainingError(f"--init-adapter {spec}: {path} needs {CONFIG_FILE} and {WEIGHTS_FILE} (safetensors only)")
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        rank, alpha, targets = int(config["r"]), float(config["lora_alpha"]), config["target_modules"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"--init-adapter {spec}: unreadable {CONFIG_FILE} ({exc})") from None
    if isinstance(targets, str):
        targets = [targets]
    return InitAdapter(path, rank, alpha, list(targets), file_sha256(path / WEIGHTS_FILE), version, why)


def _serving(root: Path, name: str) -> tuple[Path, int | None, str]:
    """Where NAME's serving weights are: (path, kept version or None, why)."""
    kept = VersionStore(root).versions(name)  # proven versions, newest first
    files = root / name / WEIGHTS_FILE
    digest = file_sha256(files) if files.is_file() else None
    same = next((v for v in kept if v.sha256 == digest), None)
    if same is not None:
        return same.path, same.number, f"what {name} serves: the files in {root / name}"
    if kept:
        newest = kept[0]
        return (
            newest.path,
            newest.number,
            f"what {name} serves: the files in {root / name} (sha256 {(digest or 'none')[:12]}) were never "
            f"served (refused, or not proven yet), so not those",
        )
    return root / name, None, f"{name} has never served: its files as they are"

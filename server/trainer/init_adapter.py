"""``train --init-adapter``: continue training from an existing adapter instead of a fresh LoRA.

Staged training (the basics first, then promotions, then complaint handling) and the feedback
loop (fix the answers users rated down, train again) both start from the weights that serve
today. The adapter is found by name in the adapters directory (the files it holds now), as
``NAME@N`` (a kept version), or as a path; its rank, alpha and target modules are kept, since a
different rank would be a different adapter, not a continuation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry.profile import PROFILE_FILE
from ..registry.store import VersionStore
from ..registry.validation import CONFIG_FILE, WEIGHTS_FILE, file_sha256
from .config import TrainingError


@dataclass(frozen=True)
class InitAdapter:
    path: Path
    rank: int
    alpha: float
    target_modules: list[str]
    sha256: str

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "rank": self.rank, "alpha": self.alpha}

    def carry_profile(self, adapter_dir: Path) -> None:
        """The adapter's profile (system prompt, template, sampling defaults) goes on with it."""
        source = self.path / PROFILE_FILE
        if source.is_file() and not (adapter_dir / PROFILE_FILE).exists():
            (adapter_dir / PROFILE_FILE).write_bytes(source.read_bytes())


def resolve_init_adapter(spec: str, adapters_dir: str | Path) -> InitAdapter:
    """The adapter ``spec`` names (a path, ``NAME@N``, or ``NAME``), checked: safetensors weights
    and a plain LoRA config; ``TrainingError`` saying what was looked for otherwise."""
    root = Path(adapters_dir)
    name, at, number = spec.partition("@")
    if Path(spec).expanduser().is_dir():
        path = Path(spec).expanduser()
    elif at and number.isdigit():
        kept = VersionStore(root).get(name, int(number))
        if kept is None:
            numbers = [v.number for v in VersionStore(root).versions(name)] or "none"
            raise TrainingError(f"--init-adapter {spec}: no kept version {number} of {name!r}; kept: {numbers}")
        path = kept.path
    elif (root / spec).is_dir():
        path = root / spec
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
    return InitAdapter(path, rank, alpha, list(targets), file_sha256(path / WEIGHTS_FILE))

"""Adapters: what is in the watched directory, whether it may be served, and which version is live.

Names are imported on first use (PEP 562): ``lora-gateway --help`` imports this package for its
subcommands' parsers, and the registry itself (SQLAlchemy, torch-free but heavy) is not needed there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import AdapterState, AdapterVersion
    from .registry import AdapterRegistry, Lease

__all__ = ["AdapterRegistry", "AdapterState", "AdapterVersion", "Lease"]
_HOMES = {
    "AdapterRegistry": ".registry",
    "Lease": ".registry",
    "AdapterState": ".records",
    "AdapterVersion": ".records",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""What users thought of the answers: captured conversations, their ratings, reports and exports.

Names are imported on first use (PEP 562), so ``lora-gateway --help`` does not load SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Conversation, FeedbackStore, Rating, Stored

__all__ = ["Conversation", "FeedbackStore", "Rating", "Stored"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".store", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

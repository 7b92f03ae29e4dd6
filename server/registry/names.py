"""Adapter names double as directory names and model ids, so they must be safe as both."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_valid_name(name: str) -> bool:
    """Rejects path separators, ``..``, leading dots (the staging area) and over-long names."""
    return bool(NAME_PATTERN.fullmatch(name)) and ".." not in name

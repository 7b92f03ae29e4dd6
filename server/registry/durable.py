"""Writes that survive a power cut: a file or directory's data reaches the disk before the rename
or marker that makes it visible. Shared by publishing, the version store and traffic splits."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

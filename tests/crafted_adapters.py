"""Hostile adapter directories, shared by the validation, admin API and watched-directory tests.

Each entry breaks a copy of a good adapter in place and names the reason it must be refused with.
None of them may be reported as "incomplete" (waited for forever) or crash a caller. The last two
are copies that stopped half-way: tests run them with ``stalled()``, which makes every file count
as left alone (``weights_file.STALL_SECONDS`` 0), since no test can wait a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PREFIX = "base_model.model.model.layers.0."
DEEP = 200_000


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / CONFIG).read_text())
    config.update(changes)
    (path / CONFIG).write_text(json.dumps(config))


def write_header(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    (path / WEIGHTS).write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


@contextlib.contextmanager
def stalled() -> Iterator[None]:
    """Every file counts as left alone: a copy that stopped, not one under way."""
    from server.registry import weights_file

    saved, weights_file.STALL_SECONDS = weights_file.STALL_SECONDS, 0.0
    try:
        yield
    finally:
        weights_file.STALL_SECONDS = saved


def _fifo_weights(path: Path) -> None:
    (path / WEIGHTS).unlink()
    os.mkfifo(path / WEIGHTS)


def _huge_tensor(path: Path) -> None:
    write_header(
        path,
        {
            PREFIX + "self_attn.q_proj.lora_A.weight": {
                "dtype": "F32",
                "shape": [8, 3_355_443_200],
                "data_offsets": [0, 8 * 3_355_443_200 * 4],
            }
        },
    )


CRAFTED: list[tuple[str, Callable[[Path], None], str]] = [
    ("deep config", lambda p: (p / CONFIG).write_text("[" * DEEP + "]" * DEEP), "bad_config"),
    ("deep header", lambda p: write_header(p, b"[" * DEEP + b"]" * DEEP), "bad_safetensors"),
    ("header length past the file", lambda p: write_header(p, b"{}", length=2**40), "bad_safetensors"),
    ("header above the header limit", lambda p: write_header(p, b" " * (9 << 20) + b"{}"), "bad_safetensors"),
    ("a 100 GB tensor declared", _huge_tensor, "too_large"),
    (
        "offsets that disagree with the shape",
        lambda p: write_header(
            p,
            {PREFIX + "self_attn.q_proj.lora_A.weight": {"dtype": "F32", "shape": [8, 64], "data_offsets": [0, 4]}},
            bytes(4),
        ),
        "bad_safetensors",
    ),
    ("lora_alpha 'abc'", lambda p: edit_config(p, lora_alpha="abc"), "bad_config"),
    ("target_modules 12345", lambda p: edit_config(p, target_modules=12345), "bad_config"),
    ("a FIFO for weights", _fifo_weights, "not_a_file"),
    ("weights truncated and left", lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:100]), "truncated"),
    ("config never arrived", lambda p: (p / CONFIG).unlink(), "missing_files"),
]

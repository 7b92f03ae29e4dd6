"""Parse JSON we did not write (adapter files, WeCom bodies) with a size bound and no stack blow-up.

Python's JSON decoder recurses once per nesting level, so a 200k-deep ``[[[[...`` raises
``RecursionError`` (not ``ValueError``), which callers catching ``ValueError`` let through as a crash.
Here both the size and the depth failures are a ``ValueError`` with a message a user can act on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")


class JSONRefused(ValueError):
    """The text is too large, too deeply nested, or not JSON."""


def loads_bounded(raw: bytes | str, *, max_bytes: int, what: str = "JSON") -> object:
    if len(raw) > max_bytes:
        raise JSONRefused(f"{what} is {len(raw)} bytes, above the limit of {max_bytes}")
    try:
        return json.loads(raw)
    except RecursionError:
        raise JSONRefused(f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise JSONRefused(f"{what} is not valid JSON ({exc})") from None


def read_adapter_json(adapter_dir: Path, name: str, model: type[M], *, max_bytes: int, reason: str) -> M | None:
    """``<adapter_dir>/<name>`` validated as ``model``; None when there is no such file, and
    ``AdapterRejected`` (``reason``, naming the file and the first bad field) when it is unusable.
    Shared by the files an adapter may carry beside its weights (``profile.json``, ``eval.json``)."""
    from pydantic import ValidationError

    from .errors import AdapterRejected

    path = adapter_dir / name
    if not (path.exists() or path.is_symlink()):
        return None
    where = f"{adapter_dir.name}: {name}"
    if not path.is_file():
        raise AdapterRejected("not_a_file", f"{where} is not a regular file.")
    try:
        with path.open("rb") as file:
            raw = file.read(max_bytes + 1)
        return model.model_validate(loads_bounded(raw, max_bytes=max_bytes, what=name))
    except JSONRefused as exc:
        raise AdapterRejected(reason, f"{adapter_dir.name}: {exc}.") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "the file"
        raise AdapterRejected(reason, f"{where}: {field}: {first['msg']}.") from None

"""Parse JSON we did not write (adapter files, WeCom bodies) with a size bound and no stack blow-up.

Python's JSON decoder recurses once per nesting level, so a 200k-deep ``[[[[...`` raises
``RecursionError`` (not ``ValueError``), which callers catching ``ValueError`` let through as a crash.
Here both the size and the depth failures are a ``ValueError`` with a message a user can act on.
"""

from __future__ import annotations

import json
import re
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


# A ``\\uD800``-``\\uDFFF`` escape (either case): the only way a lone surrogate gets into parsed JSON.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate_at(raw: bytes) -> str | None:
    """The dotted path of the first string (value or key) in the JSON ``raw`` holding a lone
    surrogate, "" for the document itself, or None when there is none (or ``raw`` is not JSON:
    its parser says so). Python's decoder accepts ``"\\ud800"``, which no UTF-8 encoder, database
    or tokenizer can take later; the bytes are searched first, so a clean body is never parsed here."""
    if not _SURROGATE_ESCAPE.search(raw):
        return None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not is_unicode_text(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if not is_unicode_text(key):
                    return path
                stack.append((where, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.[{i}]" if path else f"[{i}]", item) for i, item in enumerate(value))
    return None


def is_unicode_text(text: str) -> bool:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer (nor UTF-8) can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""Parse JSON we did not write (adapter files, WeCom bodies) with a size bound and no stack blow-up.

Python's JSON decoder recurses once per nesting level, so a 200k-deep ``[[[[...`` raises
``RecursionError`` (not ``ValueError``), which callers catching ``ValueError`` let through as a crash.
Here both the size and the depth failures are a ``ValueError`` with a message a user can act on.
"""

from __future__ import annotations

import json


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

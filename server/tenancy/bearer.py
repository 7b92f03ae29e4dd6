"""Reading a bearer key from an ``Authorization`` header and comparing it with known keys, in one
place for the admin key, ``--api-key`` keys and stored keys alike."""

from __future__ import annotations

import hmac


def bearer_token(authorization: str) -> str | None:
    """The key in ``Bearer KEY`` (scheme case-insensitive, surrounding spaces ignored), else None."""
    scheme, _, presented = authorization.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


def one_of(presented: str, keys: list[bytes]) -> bool:
    """Whether ``presented`` is one of ``keys``.

    Every key is compared (no early exit) with ``hmac.compare_digest``, so timing reveals neither
    which key nor how much of one matched."""
    candidate = presented.encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched

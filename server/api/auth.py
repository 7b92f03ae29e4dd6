"""Bearer-key authentication: constant-time comparison, and the key never reaches a log."""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import Unauthorized


def check_bearer(request: Request, keys: list[bytes]) -> None:
    """Raise ``Unauthorized`` unless the Authorization header carries one of ``keys``.

    Every key is compared (no early exit) with ``hmac.compare_digest``, so timing reveals neither
    which key nor how much of one matched.
    """
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized(Unauthorized.MISSING)
    if not presented_one_of(request, keys):
        raise Unauthorized(Unauthorized.WRONG)


def presented_one_of(request: Request, keys: list[bytes]) -> bool:
    """Whether the request's bearer key is one of ``keys`` (every key compared, in constant time)."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    candidate = presented.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched

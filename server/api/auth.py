"""Bearer-key checks for routes: constant-time comparison (``tenancy/bearer.py``), and the key
never reaches a log."""

from __future__ import annotations

from fastapi import Request

from ..errors import Unauthorized
from ..tenancy.bearer import bearer_token, one_of


def check_bearer(request: Request, keys: list[bytes]) -> None:
    """Raise ``Unauthorized`` unless the Authorization header carries one of ``keys``."""
    if not keys:
        return
    presented = bearer_token(request.headers.get("authorization", ""))
    if presented is None:
        raise Unauthorized(Unauthorized.MISSING)
    if not one_of(presented, keys):
        raise Unauthorized(Unauthorized.WRONG)


def presented_one_of(request: Request, keys: list[bytes]) -> bool:
    """Whether the request's bearer key is one of ``keys``."""
    presented = bearer_token(request.headers.get("authorization", ""))
    return presented is not None and one_of(presented, keys)

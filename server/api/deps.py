"""FastAPI dependencies as ``Annotated`` aliases, so routes declare what they need in one word."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..gateway import Gateway
from .auth import check_bearer


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def require_api_key(request: Request) -> None:
    check_bearer(request, get_gateway(request).api_keys)

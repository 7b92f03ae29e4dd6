"""Chat apps that forward their users' messages to the gateway (WeCom today).

An integration is one package here with three things the app needs (``Integration``): its routes,
a start and a close. What any chat channel needs besides (dedup, history, keyword feedback, the
apology) is shared in ``server.channels``; ``configured`` is the one list of integrations, so a
Feishu, Slack or DingTalk channel is one package and one line there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fastapi import APIRouter

    from ..gateway import Gateway
    from ..settings import Settings


class Integration(Protocol):
    name: str  # its attribute on ``app.state`` (and its routes' prefix by convention)
    router: APIRouter  # mounted on the app as it is

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def configured(settings: Settings, gateway: Gateway) -> list[Integration]:
    """The integrations these settings turn on; a configuration error raises (start-up fails with
    one line naming it)."""
    from .wecom.config import WeComConfigError, load_wecom_settings
    from .wecom.routes import router as wecom_routes
    from .wecom.service import WeComService

    found: list[Integration] = []
    wecom = load_wecom_settings(settings.wecom_config)  # --wecom-config and LORA_GATEWAY_WECOM_* variables
    if wecom.bots:
        found.append(WeComService(wecom, gateway, wecom_routes))
    elif settings.wecom_config is not None:
        raise WeComConfigError(f"{settings.wecom_config} defines no bots")
    return found

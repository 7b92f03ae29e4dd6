"""``GET /v1/models`` and ``/v1/models/{id}``: the base model and every live adapter.

``root`` is where a model's files live, as vLLM reports it; filesystem paths are shown to admin keys
only (an inference key, or no key on an open server, sees the model's id there instead).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..errors import ModelNotFound
from ..gateway import Gateway
from .auth import check_bearer, presented_one_of
from .deps import GatewayDep, get_gateway
from .protocol import ModelCard, ModelList


def require_inference_or_admin_key(request: Request) -> None:
    gateway = get_gateway(request)
    if gateway.api_keys:
        check_bearer(request, [*gateway.api_keys, *gateway.admin_keys])


router = APIRouter(dependencies=[Depends(require_inference_or_admin_key)])


def _is_admin(request: Request, gateway: Gateway) -> bool:
    return bool(gateway.admin_keys) and presented_one_of(request, gateway.admin_keys)


def _cards(gateway: Gateway, paths: bool) -> list[ModelCard]:
    base = gateway.base_model_id
    max_len = gateway.engine.max_model_len
    cards = [
        ModelCard(
            id=base, created=gateway.started, root=gateway.settings.model if paths else base, max_model_len=max_len
        )
    ]
    for version in gateway.registry.active_versions():
        # As vLLM does: adapters name the base in ``parent`` and their path in ``root``.
        cards.append(
            ModelCard(
                id=version.name,
                created=version.created,
                root=version.path if paths else version.name,
                parent=base,
                max_model_len=max_len,
            )
        )
    return cards


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, gateway: GatewayDep) -> Response:
    """Serialized once per registry change: with a thousand adapters, building the list on every
    call would cost more than everything else this endpoint does."""
    paths = _is_admin(request, gateway)
    key = (gateway.registry.revision, gateway.engine.max_model_len, paths)
    cached = gateway.models_json.get(paths)
    if cached is None or cached[0] != key:
        cached = gateway.models_json[paths] = (key, ModelList(data=_cards(gateway, paths)).model_dump_json().encode())
    return Response(cached[1], media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, gateway: GatewayDep) -> ModelCard:
    for card in _cards(gateway, _is_admin(request, gateway)):
        if card.id == model_id:
            return card
    raise ModelNotFound(model_id)

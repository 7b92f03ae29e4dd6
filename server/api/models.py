"""``GET /v1/models`` and ``/v1/models/{id}``: the base model and every live adapter."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ..errors import ModelNotFound
from ..gateway import Gateway
from .deps import GatewayDep, require_api_key
from .protocol import ModelCard, ModelList

router = APIRouter(dependencies=[Depends(require_api_key)])


def _cards(gateway: Gateway) -> list[ModelCard]:
    base = gateway.base_model_id
    max_len = gateway.engine.max_model_len
    cards = [ModelCard(id=base, created=gateway.started, root=gateway.settings.model, max_model_len=max_len)]
    for version in gateway.registry.active_versions():
        # As vLLM does: adapters name the base in ``parent`` and their path in ``root``.
        cards.append(
            ModelCard(id=version.name, created=version.created, root=version.path, parent=base, max_model_len=max_len)
        )
    return cards


@router.get("/v1/models", response_model=ModelList)
async def list_models(gateway: GatewayDep) -> Response:
    """Serialized once per registry change: with a thousand adapters, building the list on every
    call would cost more than everything else this endpoint does."""
    key = (gateway.registry.revision, gateway.engine.max_model_len)
    if gateway.models_json is None or gateway.models_json[0] != key:
        gateway.models_json = (key, ModelList(data=_cards(gateway)).model_dump_json().encode())
    return Response(gateway.models_json[1], media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, gateway: GatewayDep) -> ModelCard:
    for card in _cards(gateway):
        if card.id == model_id:
            return card
    raise ModelNotFound(model_id)

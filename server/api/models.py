"""``GET /v1/models`` and ``/v1/models/{id}``: the base model and every live adapter."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.api.deps import GatewayDep, require_api_key
from server.api.protocol import ModelCard, ModelList
from server.errors import ModelNotFound
from server.gateway import Gateway

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


@router.get("/v1/models")
async def list_models(gateway: GatewayDep) -> ModelList:
    return ModelList(data=_cards(gateway))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, gateway: GatewayDep) -> ModelCard:
    for card in _cards(gateway):
        if card.id == model_id:
            return card
    raise ModelNotFound(model_id)

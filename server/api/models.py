"""``GET /v1/models`` and ``/v1/models/{id}``: every base model and every live adapter (its base in ``parent``).

``root`` is where a model's files live, as vLLM reports it; filesystem paths are shown to admin keys
only (an inference key, or no key on an open server, sees the model's id there instead). A key
scoped to some adapters sees only those (and the base if it may use it): the rest do not exist for it.
A fine-tuning job's ``ft:`` name is listed beside its adapter for the key that made the job.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..errors import ModelNotFound
from ..gateway import Gateway
from ..openai.protocol import ModelCard, ModelList
from ..tenancy.service import Principal
from .auth import presented_one_of
from .deps import GatewayDep, require_inference_or_admin_key

router = APIRouter(dependencies=[Depends(require_inference_or_admin_key)])


def _is_admin(request: Request, gateway: Gateway) -> bool:
    return bool(gateway.admin_keys) and presented_one_of(request, gateway.admin_keys)


def _cards(gateway: Gateway, paths: bool, principal: Principal) -> list[ModelCard]:
    bases = gateway.registry.bases
    max_len = gateway.engine.max_model_len
    cards = [
        ModelCard(id=base.id, created=gateway.started, root=base.root if paths else base.id, max_model_len=max_len)
        for base in bases
        if principal.may_use(base.id, bases.ids)
    ]
    aliases: dict[str, list[str]] = {}  # adapter: the ``ft:`` names of the jobs that made it, for this key
    for name, (adapter, owner) in (gateway.fine_tuning.aliases if gateway.fine_tuning else {}).items():
        if principal.key is None or owner == principal.key_id or principal.may_use(adapter, bases.ids):
            aliases.setdefault(adapter, []).append(name)
    for version in gateway.registry.active_versions():
        ids = [version.name] if principal.may_use(version.name, bases.ids) else []
        for model_id in ids + aliases.get(version.name, []):
            # As vLLM does: adapters name their base in ``parent`` and their path in ``root``.
            cards.append(
                ModelCard(
                    id=model_id,
                    created=version.created,
                    root=version.path if paths else model_id,
                    parent=version.base or gateway.base_model_id,
                    max_model_len=max_len,
                    version=version.version,
                    sha256=version.sha256,
                )
            )
    return cards


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, gateway: GatewayDep) -> Response:
    """Serialized once per registry change: with a thousand adapters, building the list on every
    call would cost more than everything else this endpoint does."""
    paths, principal = _is_admin(request, gateway), request.state.principal
    scope = (paths, principal.key.id if principal.key else "")  # one cached list per key: they are few
    aliases = len(gateway.fine_tuning.aliases) if gateway.fine_tuning else 0  # fine-tuned names only grow
    key = (gateway.registry.revision, gateway.engine.max_model_len, principal.key, aliases, len(gateway.registry.bases))
    cached = gateway.models_json.get(scope)
    if cached is None or cached[0] != key:
        body = ModelList(data=_cards(gateway, paths, principal)).model_dump_json().encode()
        cached = gateway.models_json[scope] = (key, body)
    return Response(cached[1], media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, gateway: GatewayDep) -> ModelCard:
    for card in _cards(gateway, _is_admin(request, gateway), request.state.principal):
        if card.id == model_id:
            return card
    raise ModelNotFound(model_id)

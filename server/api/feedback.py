"""``POST /v1/feedback`` (inference key): a rating of one answer; ``GET /v1/adapters/{name}/feedback``
(admin key): the per-version report. Both need ``--feedback`` (conversation capture)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest
from ..feedback import Rating
from ..feedback.report import parse_since, report
from ..recording import record, store_of
from .admin import require_admin_key
from .deps import GatewayDep, PrincipalDep, require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])
admin = APIRouter(dependencies=[Depends(require_admin_key)])


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, max_length=64, description="The `id` of the rated chat completion.")
    rating: int = Field(description="-1 or +1 (thumbs), or 1-5 (stars, with scale=stars or a value of 2-5).")
    scale: Literal["thumbs", "stars"] | None = None
    comment: str | None = Field(default=None, max_length=4000)
    correction: str | None = Field(default=None, max_length=32000, description="The answer it should have given.")
    user: str | None = Field(default=None, max_length=256, description="Who rated it (default: who asked).")


def rating_of(body: FeedbackRequest, source: str = "api") -> Rating:
    """The rating with its scale, or a 400 naming the accepted values."""
    scale = body.scale or ("thumbs" if body.rating in (-1, 1) else "stars")
    allowed = (-1, 1) if scale == "thumbs" else (1, 2, 3, 4, 5)
    if body.rating not in allowed:
        raise InvalidRequest(
            f"rating {body.rating} is out of range: -1 or 1 (thumbs), or 1 to 5 (stars).",
            param="rating",
            code="invalid_rating",
        )
    return Rating(body.rating, scale, body.comment or None, body.correction or None, source, body.user)


@router.post("/v1/feedback")
async def create_feedback(body: FeedbackRequest, gateway: GatewayDep, principal: PrincipalDep) -> dict[str, Any]:
    return await record(gateway, body.completion_id, rating_of(body), principal)


@admin.get("/v1/adapters/{name}/feedback")
async def feedback_report(name: str, gateway: GatewayDep, since: str | None = None) -> dict[str, Any]:
    """Per version: answers, ratings, negative rate, mean stars; and the worst-rated answers."""
    store = store_of(gateway)
    try:
        start = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    return await asyncio.to_thread(report, store, name, since=start)

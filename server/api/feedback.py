"""``POST /v1/feedback`` (inference key): a rating of one answer; ``GET /v1/adapters/{name}/feedback``
(admin key): the per-version report. Both need ``--feedback`` (conversation capture)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest, NotFound
from ..feedback import FeedbackStore, Rating
from ..feedback.report import parse_since, report
from ..gateway import Gateway
from .admin import require_admin_key
from .deps import GatewayDep, require_api_key

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


def store_of(gateway: Gateway) -> FeedbackStore:
    if gateway.feedback is None:
        raise NotFound(
            "Feedback is off on this gateway: start it with --feedback to capture answers so they can be rated.",
            code="feedback_disabled",
        )
    return gateway.feedback


async def record(gateway: Gateway, completion_id: str, rating: Rating) -> dict[str, Any]:
    """Store a rating (the API, WeCom and the playground all come here) and tell the canary watch."""
    store = store_of(gateway)
    try:
        stored = await asyncio.to_thread(store.add, completion_id, rating)
    except LookupError:
        raise NotFound(
            f"No answer with id {completion_id!r} is kept: it was not captured (feedback capture was off, "
            "or another gateway's database answered it) or it is past the retention period.",
            param="completion_id",
            code="completion_not_found",
        ) from None
    conversation = stored.conversation
    entry = gateway.registry.get(conversation.adapter) if conversation.adapter else None
    if entry is not None and entry.split is not None and conversation.version is not None:
        gateway.registry.rollouts.watch.feedback(entry.split, conversation.version, rating.negative)
    return {
        "id": f"feedback-{stored.id}",
        "object": "feedback",
        "completion_id": completion_id,
        "rating": rating.rating,
        "scale": rating.scale,
        "negative": rating.negative,
        "model": conversation.model,
        "adapter": conversation.adapter,
        "version": conversation.version,
        "created": int(time.time()),
    }


@router.post("/v1/feedback")
async def create_feedback(body: FeedbackRequest, gateway: GatewayDep) -> dict[str, Any]:
    return await record(gateway, body.completion_id, rating_of(body))


@admin.get("/v1/adapters/{name}/feedback")
async def feedback_report(name: str, gateway: GatewayDep, since: str | None = None) -> dict[str, Any]:
    """Per version: answers, ratings, negative rate, mean stars; and the worst-rated answers."""
    store = store_of(gateway)
    try:
        start = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    return await asyncio.to_thread(report, store, name, since=start)

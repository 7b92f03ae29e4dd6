"""Store one rating, whoever gives it: the HTTP API, a WeCom bot, the playground.

One function so that every source gets the same 404 for an answer that is not kept and tells the
canary watch (``registry/rollout.py``) the same way, whichever way the rating came in. It sits
beside the completion path, above the feedback package, because it reaches the gateway's parts
(the feedback store, the registry, the rollouts).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .errors import NotFound
from .feedback.store import Conversation, FeedbackStore, Rating
from .tenancy.service import ANYONE, Principal

if TYPE_CHECKING:
    from .gateway import Gateway


def store_of(gateway: Gateway) -> FeedbackStore:
    if gateway.feedback is None:
        raise NotFound(
            "Feedback is off on this gateway: start it with --feedback to capture answers so they can be rated.",
            code="feedback_disabled",
        )
    return gateway.feedback


async def record(gateway: Gateway, completion_id: str, rating: Rating, principal: Principal = ANYONE) -> dict[str, Any]:
    """Store ``rating`` of the answer ``completion_id``; ``NotFound`` when that answer is not kept,
    or when ``principal``'s key could not have asked for it (its scope: a key rates, and corrects,
    only what it could have made; the same 404, so it learns nothing of other tenants' answers).
    A canary's watch counts one vote per end user and answer: rating one answer twenty times is
    one opinion."""
    store = store_of(gateway)

    def may_rate(conversation: Conversation) -> bool:
        return principal.may_use(conversation.model, gateway.base_ids)

    try:
        stored = await asyncio.to_thread(store.add, completion_id, rating, may_rate)
    except LookupError:
        raise NotFound(
            f"No answer with id {completion_id!r} is kept: it was not captured (feedback capture was off, "
            "or another gateway's database answered it) or it is past the retention period.",
            param="completion_id",
            code="completion_not_found",
        ) from None
    conversation = stored.conversation
    entry = gateway.registry.get(conversation.adapter) if conversation.adapter else None
    if stored.first_vote and entry is not None and entry.split is not None and conversation.version is not None:
        # One opinion per end user (their mean); an answer rated without one counts as its own user.
        user = stored.end_user or f"answer:{completion_id}"
        gateway.rollouts.watch.feedback(entry.split, conversation.version, rating.negative, user, rating.score)
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

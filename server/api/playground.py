"""The playground: a static page to compare 2–4 models side by side, and its blind ratings.

``/playground`` is one static HTML file (no build step, no CDN: the server may be offline). The
page holds no data: it calls our own OpenAI API (``/v1/chat/completions``) and the routes below
(the models to pick, kept versions included; the rubric; ratings), all behind the inference key,
which it asks for and keeps in the tab's session storage. In blind mode it hides and shuffles the
model names and saves the rater's rubric scores here, into the rating store ``lora-gateway eval
--import-ratings`` reads. ``--no-playground`` removes the page and its routes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import ModelNotFound
from ..evaluation.judge import DEFAULT_RUBRIC
from ..terms.address import matches, split_address
from .deps import GatewayDep, PrincipalDep, require_api_key

page = APIRouter()
router = APIRouter(dependencies=[Depends(require_api_key)])


@cache
def _html() -> str:
    return (files(__package__) / "static" / "playground.html").read_text(encoding="utf-8")


@cache
def _headers() -> dict[str, str]:
    """The page's own inline script and style, allowed by their hashes and nothing else: an
    answer that smuggled markup in could run no script, load nothing and send nothing elsewhere."""
    page = _html()

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Cache-Control": "no-cache",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


@page.get("/playground", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(_html(), headers=_headers())


@router.get("/v1/playground/models")
async def models(gateway: GatewayDep, principal: PrincipalDep) -> dict[str, Any]:
    """What the pickers offer: the base, each adapter, and each adapter's other kept versions
    (``shop@3``), so a version can be compared with the one serving before it is promoted; for a
    scoped key, only what it may use."""
    registry = gateway.registry
    bases = registry.bases.ids

    def listing() -> list[str]:
        ids = [base for base in bases if principal.may_use(base, bases)]
        for entry in registry.entries():
            if entry.active is not None and principal.may_use(entry.name, bases):
                ids.append(entry.name)
                ids += [f"{entry.name}@{v.number}" for v in registry.store.versions(entry.name)]
        return ids

    return {"object": "list", "data": [{"id": i} for i in await asyncio.to_thread(listing)]}


@router.get("/v1/playground/rubric")
async def rubric() -> dict[str, Any]:
    return {
        "criteria": [{"name": c.name, "max": c.max, "description": c.description} for c in DEFAULT_RUBRIC.criteria],
        "total": DEFAULT_RUBRIC.total,
    }


class RubricRating(BaseModel):
    """One blind rubric score from the playground (a user's thumbs or stars are ``feedback.Rating``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    question: str = Field(min_length=1, max_length=32_768)
    system: str | None = Field(default=None, max_length=32_768)
    answer: str = Field(max_length=131_072)
    scores: dict[str, int]
    comment: str | None = Field(default=None, max_length=2_000)
    position: int = Field(ge=0, le=3)  # the blind column it was shown in

    @model_validator(mode="after")
    def _on_the_rubric(self) -> RubricRating:
        expected = {c.name: c.max for c in DEFAULT_RUBRIC.criteria}
        if set(self.scores) != set(expected):
            raise ValueError(f"scores must rate exactly {sorted(expected)}")
        for name, value in self.scores.items():
            if not 0 <= value <= expected[name]:
                raise ValueError(f"{name} must be between 0 and {expected[name]}")
        return self


class Ratings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session: str = Field(min_length=1, max_length=64)
    rater: str | None = Field(default=None, max_length=64)
    ratings: list[RubricRating] = Field(min_length=1, max_length=4)


@router.post("/v1/playground/ratings", status_code=201)
async def save_ratings(body: Ratings, gateway: GatewayDep, principal: PrincipalDep) -> dict[str, Any]:
    """Keep each rated answer with the model and the version that wrote it. Scoped like
    ``/v1/models``: a model outside the key's scope is the same 404 as one that does not exist."""
    registry, records = gateway.registry, []
    for rating in body.ratings:
        if not principal.may_use(rating.model, registry.bases.ids):
            raise ModelNotFound(rating.model)
        version = None
        if rating.model not in registry.bases:
            name, ref = split_address(rating.model)
            entry = registry.get(name)
            if entry is None or entry.active is None:
                raise ModelNotFound(rating.model)
            version = {"version": entry.active.version, "sha256": entry.active.sha256}
            if ref is not None:  # a kept version, named: that one wrote the answer
                kept = await asyncio.to_thread(registry.store.versions, name)
                found = [v for v in kept if matches(v.number, v.sha256, ref)]
                if len(found) != 1:
                    raise ModelNotFound(rating.model)
                version = {"version": found[0].number, "sha256": found[0].sha256}
        records.append(
            {
                **rating.model_dump(),
                "version": version,
                "session": body.session,
                "rater": body.rater,
                "time": time.time(),
            }
        )
    assert gateway.ratings is not None  # these routes exist only with the playground on
    await asyncio.to_thread(gateway.ratings.append, records)
    return {"object": "list", "saved": len(records)}

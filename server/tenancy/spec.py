"""What a key may do, checked once for the CLI and the admin API alike (pydantic)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

_GLOB = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,64}")
Positive = Annotated[int, Field(ge=1)]


class KeyLimits(BaseModel):
    """Every field optional: on update, only what is given changes (``null`` removes a limit)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    models: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        default=None, description='Adapter names and globs the key may use ("*": every adapter).', max_length=256
    )
    base: bool | None = Field(default=None, description="Whether the key may use the base model.")
    requests_per_minute: Positive | None = None
    tokens_per_minute: Positive | None = None
    tokens_per_day: Positive | None = None
    tokens_per_month: Positive | None = None
    max_concurrent: Positive | None = None
    expires: float | None = Field(default=None, lt=1e11, description="UNIX time after which the key is refused.")

    @field_validator("models", mode="before")
    @classmethod
    def _a_list(cls, value: object) -> object:
        if value is None:  # an empty scope is a key that can use no adapter: say ["*"] or a list, never null
            raise ValueError('give a list of adapter names or globs (["*"]: every adapter)')
        return value

    @field_validator("models")
    @classmethod
    def _globs(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            if not _GLOB.fullmatch(pattern) or ".." in pattern:
                raise ValueError(f"{pattern!r} is not an adapter name or glob (letters, digits, . _ - * ? [ ])")
        return value

    @field_validator("expires")
    @classmethod
    def _future(cls, value: float | None) -> float | None:
        if value is not None and value <= time.time():
            raise ValueError("expires must be in the future")
        return value

    def changes(self) -> dict[str, Any]:
        """The fields that were given, as ``ApiKey`` fields."""
        out = self.model_dump(exclude_unset=True)
        if "models" in out:
            out["models"] = tuple(out["models"] or ())
        if out.get("base") is None:
            out.pop("base", None)
        return out


class NewKey(KeyLimits):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, description="Who the key belongs to (default: its name); usage is reported per tenant."
    )


class KeyUpdate(KeyLimits):
    enabled: bool | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    tenant: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None

    def changes(self) -> dict[str, Any]:
        out = super().changes()
        for field in ("enabled", "name", "tenant"):
            if out.get(field) is None:
                out.pop(field, None)
        return out

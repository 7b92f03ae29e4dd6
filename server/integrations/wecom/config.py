"""Which WeCom bots exist and which model answers each: a YAML/JSON file and/or env vars.

The file (``--wecom-config``) is usually committed without secrets and the secrets come from the
environment, e.g. ``LORA_GATEWAY_WECOM_BOTS__SHOP__CORP_SECRET``; both are merged, env winning.
Secrets are ``SecretStr`` (masked in every repr) and configuration errors name the field, never
the value, so neither can end up in a log.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .crypto import aes_key

BOT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"


class BotConfig(BaseModel):
    """One bot: its channel, its callback secrets, and the model that answers it."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["app", "aibot"]
    model: str = Field(min_length=1, description="Base model id or adapter name that answers this bot.")
    token: SecretStr = Field(description="The callback Token from the admin console.")
    encoding_aes_key: SecretStr = Field(description="The callback EncodingAESKey (43 characters).")
    corp_id: str | None = Field(default=None, description="app: the CorpID (also the callback's receive id).")
    corp_secret: SecretStr | None = Field(default=None, description="app: the application's Secret, for gettoken.")
    agent_id: int | None = Field(default=None, description="app: the application's AgentID, for message/send.")
    receive_id: str | None = Field(
        default=None, description="Override the receive id (default: corp_id, or '' for aibot)."
    )
    system_prompt: str | None = None
    history_turns: int = Field(
        default=0, ge=0, le=20, description="Earlier exchanges with the same user sent along as context (0: none)."
    )
    max_tokens: int = Field(default=1024, ge=1, le=8192)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    apology: str = "Sorry, I could not answer just now. Please try again in a moment."
    unsupported_reply: str = "Sorry, I can only read text messages."
    feedback_keywords: dict[str, Literal[-1, 1]] = Field(
        default_factory=dict,
        description="Messages that rate the bot's last answer to that user instead of asking a question, "
        'e.g. {"👍": 1, "👎": -1} (needs the gateway\'s --feedback).',
    )
    feedback_reply: str = "Thank you for your feedback."
    key: str | None = Field(
        default=None,
        description="A stored API key (id, prefix or name: `lora-gateway keys`) whose tenant this bot is: its "
        "scope, limits and usage apply to the bot's answers (default: full access, counted as no tenant).",
    )

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9]{1,32}", value.get_secret_value()):
            raise ValueError("must be 1 to 32 letters and digits, as the admin console makes it")
        return value

    @field_validator("encoding_aes_key")
    @classmethod
    def _key_shape(cls, value: SecretStr) -> SecretStr:
        aes_key(value.get_secret_value())  # raises ValueError without echoing the key
        return value

    @model_validator(mode="after")
    def _app_needs_credentials(self) -> BotConfig:
        if self.channel == "app":
            missing = [f for f in ("corp_id", "corp_secret", "agent_id") if getattr(self, f) in (None, "")]
            if missing:
                raise ValueError(f"an app bot needs {', '.join(missing)}")
        return self

    @property
    def expected_receive_id(self) -> str:
        if self.receive_id is not None:
            return self.receive_id
        return self.corp_id or "" if self.channel == "app" else ""


class WeComSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORA_GATEWAY_WECOM_", env_nested_delimiter="__", extra="forbid")

    api_base: str = Field(default=DEFAULT_API_BASE, description="WeCom API base URL (tests point it at a fake).")
    bots: dict[str, BotConfig] = Field(default_factory=dict)
    dedup_seconds: float = Field(
        default=600.0, gt=0, description="How long a MsgId is remembered (WeCom retries within ~15 s)."
    )
    dedup_entries: int = Field(default=10_000, ge=1, description="Most MsgIds remembered at once.")
    stream_seconds: float = Field(
        default=600.0, gt=0, description="How long an AI-bot answer can be polled (WeCom polls up to 6 min)."
    )
    max_streams: int = Field(default=1_000, ge=1, description="Most AI-bot answers held at once.")
    conversation_seconds: float = Field(
        default=1800.0, gt=0, description="A conversation is forgotten after this long idle."
    )
    max_conversations: int = Field(default=10_000, ge=1, description="Most conversations remembered at once.")

    @field_validator("bots")
    @classmethod
    def _bot_names(cls, bots: dict[str, BotConfig]) -> dict[str, BotConfig]:
        for name in bots:
            if not BOT_NAME.match(name):
                raise ValueError(f"bot name {name!r} must be lower-case letters, digits, '-' or '_' (it is a URL path)")
        return bots

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init values; env vars come first so that they override it, field by field.
        return env_settings, init_settings


class WeComConfigError(ValueError):
    """The WeCom configuration is unusable; the message names fields, never their values."""


def load_wecom_settings(path: Path | None) -> WeComSettings:
    """Bots from ``path`` (YAML or JSON; optional) merged with ``LORA_GATEWAY_WECOM_*`` env vars."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_file(path)
    try:
        return WeComSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        culprits = _env_culprits([tuple(str(p).lower() for p in e["loc"]) for e in exc.errors()])
        hint = f" (from env {', '.join(culprits)}: unset or correct them)" if culprits else ""
        raise WeComConfigError(f"invalid WeCom configuration: {problems}{hint}") from None


def _env_culprits(locations: list[tuple[str, ...]]) -> list[str]:
    """The LORA_GATEWAY_WECOM_* variables behind the failing fields (a stray or misspelt one, say)."""
    prefix = "LORA_GATEWAY_WECOM_"
    found = []
    for name in sorted(os.environ):
        if not name.startswith(prefix):
            continue
        parts = tuple(name[len(prefix) :].lower().split("__"))
        if any(loc[: len(parts)] == parts or parts[: len(loc)] == loc for loc in locations):
            found.append(name)
    return found


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WeComConfigError(f"cannot read the WeCom configuration {path}: {exc.strerror}") from None
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise WeComConfigError(f"{path} is not valid {'JSON' if is_json else 'YAML'}: {type(exc).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WeComConfigError(f"{path} must hold a mapping with a `bots` key")
    return data

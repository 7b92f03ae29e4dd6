"""The tenancy tables (SQLAlchemy Core), in the gateway's database beside the feedback tables.

``api_keys``: one row per key, holding the SHA-256 of the key and never the key itself (a key is
32 random bytes, so a fast hash is as strong as a slow one, and checking one costs microseconds).
``audit_log``: who did what to keys, adapters and splits, and when. ``usage``: requests, tokens and
errors per key, model and hour, for billing. ``rate_windows``: the limiter's counters when limits
are shared between gateway processes (``--limits-storage database``). Times are UNIX seconds.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text

from ..database import metadata

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(16), primary_key=True),  # a public id: names the key in lists, logs and usage
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex of the key
    Column("prefix", String(16), nullable=False),  # the key's first characters, to tell keys apart
    Column("name", String(128), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("models", Text, nullable=False),  # JSON list of adapter names and globs ("*": all)
    Column("base", Boolean, nullable=False),  # may it use the base model
    Column("requests_per_minute", Integer),
    Column("tokens_per_minute", Integer),
    Column("tokens_per_day", BigInteger),
    Column("tokens_per_month", BigInteger),
    Column("max_concurrent", Integer),
    Column("expires", Float),
    Column("enabled", Boolean, nullable=False),
    Column("revoked", Boolean, nullable=False),  # for good: a revoked key is never enabled again
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(200), nullable=False),  # "admin-key@10.0.0.7", "cli:alice"
    Column("action", String(64), nullable=False),  # key.create, adapter.rollback, split.set, ...
    Column("target", String(200), nullable=False),
    Column("detail", Text, nullable=False),  # JSON: what changed (never a key)
    Index("audit_at", "at"),
)

usage = Table(
    "usage",
    metadata,
    Column("key_id", String(16), primary_key=True),  # "" for --api-key and open servers
    Column("tenant", String(128), nullable=False),
    Column("model", String(200), primary_key=True),
    Column("hour", Float, primary_key=True),  # the hour's start
    Column("requests", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Index("usage_hour", "hour"),
)

rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("expiry", Float, nullable=False),  # when this window ends
)

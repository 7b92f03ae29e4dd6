"""The feedback database's tables (SQLAlchemy Core): one definition for SQLite and PostgreSQL.

``conversations``: one row per answered chat completion while feedback capture is on (the prompt
messages as JSON, the answer, which model and version answered, the end user), deleted after the
retention period. ``feedback``: one row per rating of a completion, kept after its conversation
is deleted (without it, it still counts in the per-version report). ``playground_ratings``: the
playground's blind rubric scores, which ``lora-gateway eval --import-ratings URL`` reads. Times are
UNIX seconds (floats), which both databases compare the same way. The README's "Feedback"
section documents these columns.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from ..database import metadata

conversations = Table(
    "conversations",
    metadata,
    Column("completion_id", String(64), primary_key=True),
    Column("model", String(200), nullable=False),  # what the request named: an adapter name or the base id
    Column("adapter", String(64)),  # the adapter that answered (None: the base)
    Column("version", Integer),  # its version number
    Column("sha256", String(64)),  # of that version's weights
    Column("end_user", String(256)),  # OpenAI's user, X-User-Id, or the WeCom user id
    Column("source", String(16), nullable=False),  # api, wecom
    Column("messages", Text, nullable=False),  # the request's messages, JSON
    Column("answer", Text, nullable=False),  # the first choice's text
    Column("tools", Text),  # the request's tools, JSON (None: it offered none)
    Column("created", Float, nullable=False),
    Index("conversations_created", "created"),
    Index("conversations_adapter", "adapter", "version"),
)

playground_ratings = Table(
    "playground_ratings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("record", Text, nullable=False),  # one blind rating as the playground sends it, JSON
    Column("created", Float, nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("completion_id", String(64), nullable=False),
    Column("adapter", String(64)),
    Column("version", Integer),
    Column("end_user", String(256)),
    Column("rating", Integer, nullable=False),  # -1/+1 (thumbs) or 1-5 (stars)
    Column("scale", String(8), nullable=False),  # thumbs, stars
    Column("negative", Boolean, nullable=False),  # thumbs down, or 1-2 stars
    Column("comment", Text),
    Column("correction", Text),  # the answer it should have given
    Column("source", String(16), nullable=False),  # api, wecom, playground
    Column("created", Float, nullable=False),
    Index("feedback_completion", "completion_id"),
    Index("feedback_adapter", "adapter", "version", "created"),
)

"""Every table of the gateway's database (SQLAlchemy Core), one definition for SQLite and PostgreSQL,
on one ``metadata`` so that one ``create_all`` makes the whole schema. The stores that read and write
them (``feedback.store``, ``tenancy.keys``, ``tenancy.usage``, ``tenancy.audit``,
``tenancy.window_storage``) sit above this package; it imports none of them.

Feedback. ``conversations``: one row per answered chat completion while feedback capture is on (the prompt
messages as JSON, the answer, which model and version answered, the end user), deleted after the
retention period. ``feedback``: one row per rating of a completion, kept after its conversation
is deleted (without it, it still counts in the per-version report). ``playground_ratings``: the
playground's blind rubric scores, which ``lora-gateway eval --import-ratings URL`` reads. Times are
UNIX seconds (floats), which both databases compare the same way.

Tenancy. ``api_keys``: one row per key, holding the SHA-256 of the key and never the key itself (a key is
32 random bytes, so a fast hash is as strong as a slow one, and checking one costs microseconds).
``audit_log``: who did what to keys, adapters and splits, and when. ``usage``: requests, tokens and
errors per key, model and hour, for billing. ``rate_windows``: the limiter's counters when limits
are shared between gateway processes (``--limits-storage database``). Times are UNIX seconds.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()  # every table of every store: one create_all makes the whole schema

# Feedback

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

# Tenancy

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

# Responses

# ``responses``: what ``POST /v1/responses`` stored (``store``, OpenAI's default), for
# ``GET``/``DELETE /v1/responses/{id}`` and ``previous_response_id``; only the key that made a
# response reaches it. ``conversation`` is the whole exchange up to and including its output, as
# Responses input items, so continuing one is one read. Deleted after the retention period.
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(16), nullable=False),  # "" for --api-key keys and open servers
    Column("model", String(256), nullable=False),
    Column("response", Text, nullable=False),  # the response object, JSON
    Column("conversation", Text, nullable=False),  # input items then output items, JSON
    Column("created", Float, nullable=False),
    Index("responses_created", "created"),
)

# Fine-tuning (the OpenAI fine-tuning API over the trainer: server.finetune). Uploaded files live on
# disk under the fine-tuning directory; these rows say whose they are. Times are UNIX seconds.

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),  # file-...
    Column("key_id", String(16), nullable=False),  # the key that uploaded it ("" for --api-key keys and open servers)
    Column("filename", String(256), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("examples", Integer, nullable=False),  # conversations the trainer's reader found in it
    Column("created", Float, nullable=False),
)

fine_tuning_jobs = Table(
    "fine_tuning_jobs",
    metadata,
    Column("id", String(64), primary_key=True),  # ftjob-...
    Column("key_id", String(16), nullable=False),
    Column("model", String(256), nullable=False),  # the base id, or the adapter training continues from
    Column("adapter", String(64), nullable=False),  # the adapter name it publishes
    Column("fine_tuned_model", String(320), nullable=False),  # ft:BASE:SUFFIX:JOB, set when it succeeds
    Column("status", String(24), nullable=False),
    Column("error", Text),  # {"code", "message", "param"}, JSON
    Column("request", Text, nullable=False),  # the create request as validated, JSON
    Column("trained_tokens", BigInteger),
    Column("created", Float, nullable=False),
    Column("finished", Float),
    Column("runner", String(300)),  # HOST:PID of the gateway training it (several gateways share a database)
    Index("fine_tuning_jobs_key", "key_id", "created"),
    Index("fine_tuning_jobs_status", "status"),
)

fine_tuning_events = Table(
    "fine_tuning_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("level", String(8), nullable=False),  # info, warn, error
    Column("type", String(16), nullable=False),  # message, metrics
    Column("message", Text, nullable=False),
    Column("data", Text),  # JSON
    Index("fine_tuning_events_job", "job_id", "id"),
)

fine_tuning_checkpoints = Table(
    "fine_tuning_checkpoints",
    metadata,
    Column("id", String(64), primary_key=True),  # ftckpt-...
    Column("job_id", String(64), nullable=False),
    Column("step", Integer, nullable=False),
    Column("metrics", Text, nullable=False),  # JSON
    Column("created", Float, nullable=False),
    Index("fine_tuning_checkpoints_job", "job_id", "step"),
)

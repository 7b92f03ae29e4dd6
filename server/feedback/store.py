"""Conversations and the feedback on them, in SQLite (default) or any SQLAlchemy URL (PostgreSQL).

Capturing a conversation is on the path of every answered request, so it never waits on the
database: rows go to a list that a writer thread inserts in batches (``executemany`` in one
transaction), and a burst costs one commit, not one per request. Feedback, which a client waits
for anyway, is written at once, after the pending conversations, so a rating given right after
its answer always finds it. The list is bounded: if the database stalls, the oldest captures are
dropped (counted and logged), never the gateway's memory.

One store may be shared by several gateways (PostgreSQL, or one SQLite file on one host): rows are
keyed by completion id, which every gateway draws at random.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Integer, cast, delete, func, insert, select
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

from ..database import open_engine
from ..database.tables import conversations, feedback, playground_ratings
from ..errors import first_line

logger = logging.getLogger(__name__)

_MAX_PENDING = 10_000
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError)  # the database, not a row
_BATCH_WAIT_S = 0.05


@dataclass(frozen=True)
class Conversation:
    completion_id: str
    model: str
    adapter: str | None
    version: int | None
    sha256: str | None
    end_user: str | None
    source: str
    messages: list[dict[str, Any]]
    answer: str
    created: float = field(default_factory=time.time)
    tools: list[dict[str, Any]] | None = None  # the tools the request offered, when it offered any


@dataclass(frozen=True)
class Rating:
    rating: int
    scale: str  # thumbs (-1/+1) or stars (1-5)
    comment: str | None = None
    correction: str | None = None
    source: str = "api"
    end_user: str | None = None

    @property
    def negative(self) -> bool:
        return self.rating < 0 if self.scale == "thumbs" else self.rating <= 2

    @property
    def score(self) -> float:
        """The rating from 0 (worst) to 1 (best): thumbs down 0, up 1; stars 1-5 evenly between."""
        return float(self.rating > 0) if self.scale == "thumbs" else (self.rating - 1) / 4


@dataclass(frozen=True)
class Stored:
    """A feedback row as written, with the conversation it rates."""

    id: int
    rating: Rating
    conversation: Conversation
    first_vote: bool = True  # this end user's first rating of this completion (a canary counts only that)
    end_user: str | None = None  # who rated: the rating's user, else the one who asked


class FeedbackStore:
    def __init__(self, url: str, *, retention_days: float = 30.0) -> None:
        self.url = url
        self.retention_s = retention_days * 86400
        self.engine = open_engine(url)
        self.dropped = 0  # captures dropped because the database could not keep up
        self.refused = 0  # captures the database refused, one by one (the others in their batch stored)
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one batch insert at a time, in capture order
        self._wake = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="feedback-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ writing

    def capture(self, conversation: Conversation) -> None:
        """Queue a conversation for the writer; never blocks on the database."""
        row = asdict(conversation)
        row["messages"] = json.dumps(row["messages"], ensure_ascii=False)
        row["tools"] = json.dumps(row["tools"], ensure_ascii=False) if row["tools"] else None
        with self._lock:
            if len(self._pending) >= _MAX_PENDING:
                del self._pending[0]
                self.dropped += 1
                if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                    logger.warning(
                        "feedback store: %d captured conversations dropped (the database is slow)", self.dropped
                    )
            self._pending.append(row)
        self._wake.set()

    def flush(self) -> None:
        """Insert every pending conversation now (the writer does so within 50 ms anyway).

        One transaction for the batch; if it fails, row by row, so a row the database refuses (bad
        text, a duplicate id) is dropped alone and logged, never with the others. While the database
        itself is unreachable the rows go back to the queue (bounded) for the writer to retry."""
        with self._flushing:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(conversations), rows)
                return
            except _UNREACHABLE:
                self._requeue(rows)
                raise
            except Exception:  # some row is bad (a driver's own error, too: UnicodeEncodeError): find it
                pass
            for i, row in enumerate(rows):
                try:
                    with self.engine.begin() as connection:
                        connection.execute(insert(conversations), [row])
                except _UNREACHABLE:
                    self._requeue(rows[i:])
                    raise
                except Exception as exc:
                    self.refused += 1
                    logger.error(
                        "feedback store: conversation %s not stored (%s); the others were",
                        row.get("completion_id"),
                        first_line(exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc),
                    )

    def _requeue(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pending[:0] = rows
            overflow = len(self._pending) - _MAX_PENDING
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow

    def add(self, completion_id: str, rating: Rating, may_rate: Callable[[Conversation], bool] | None = None) -> Stored:
        """Store ``rating`` for a captured completion; ``LookupError`` when there is none (never
        captured, or deleted by retention) or when ``may_rate`` says the rater could not have made it
        (the same answer: whether someone else's completion exists is not theirs to learn)."""
        self.flush()
        with self.engine.begin() as connection:
            row = connection.execute(
                select(conversations).where(conversations.c.completion_id == completion_id)
            ).first()
            if row is None:
                raise LookupError(completion_id)
            conversation = _conversation(row._mapping)
            if may_rate is not None and not may_rate(conversation):
                raise LookupError(completion_id)
            end_user = rating.end_user or conversation.end_user
            earlier = connection.execute(
                select(func.count())
                .select_from(feedback)
                .where(feedback.c.completion_id == completion_id, _same_user(end_user))
            ).scalar_one()
            values = {
                "completion_id": completion_id,
                "adapter": conversation.adapter,
                "version": conversation.version,
                "end_user": end_user,
                "rating": rating.rating,
                "scale": rating.scale,
                "negative": rating.negative,
                "comment": rating.comment,
                "correction": rating.correction,
                "source": rating.source,
                "created": time.time(),
            }
            new_id = connection.execute(insert(feedback).values(values).returning(feedback.c.id)).scalar_one()
        return Stored(int(new_id), rating, conversation, first_vote=not earlier, end_user=end_user)

    def add_playground(self, records: list[dict[str, Any]]) -> None:
        """The playground's blind ratings (``evaluation/ratings.py`` reads them back)."""
        rows = [{"record": json.dumps(r, ensure_ascii=False, sort_keys=True), "created": time.time()} for r in records]
        with self.engine.begin() as connection:
            connection.execute(insert(playground_ratings), rows)

    def playground_records(self) -> list[tuple[int, str]]:
        """(id, JSON record) of every playground rating, oldest first."""
        query = select(playground_ratings.c.id, playground_ratings.c.record).order_by(playground_ratings.c.id)
        with self.engine.connect() as connection:
            return [(int(i), str(r)) for i, r in connection.execute(query).all()]

    def purge(self, now: float | None = None) -> int:
        """Delete conversations past the retention period; returns how many went."""
        cutoff = (now or time.time()) - self.retention_s
        with self.engine.begin() as connection:
            return int(connection.execute(delete(conversations).where(conversations.c.created < cutoff)).rowcount or 0)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._writer.join(timeout=10)
        try:
            self.flush()
        finally:
            self.engine.dispose()

    def _write_loop(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            time.sleep(_BATCH_WAIT_S)  # let a burst gather into one transaction
            try:
                self.flush()
            except Exception:  # the database is down: keep the rows pending (bounded) and retry
                logger.exception("feedback store: writing captured conversations failed; retrying")
                time.sleep(1.0)

    # ------------------------------------------------------------------ reading

    def conversation(self, completion_id: str) -> Conversation | None:
        self.flush()
        with self.engine.connect() as connection:
            row = connection.execute(
                select(conversations).where(conversations.c.completion_id == completion_id)
            ).first()
        return None if row is None else _conversation(row._mapping)

    def rated(
        self, adapter: str, *, since: float | None = None, negative: bool = False, version: int | None = None
    ) -> list[tuple[dict[str, Any], Conversation | None]]:
        """Feedback rows of ``adapter`` (newest first) with their conversations, where still kept."""
        columns = [c.label(f"f_{c.name}") for c in feedback.c] + [c.label(f"c_{c.name}") for c in conversations.c]
        query = (
            select(*columns)
            .select_from(feedback.outerjoin(conversations, feedback.c.completion_id == conversations.c.completion_id))
            .where(feedback.c.adapter == adapter)
            .order_by(feedback.c.created.desc())
        )
        if since is not None:
            query = query.where(feedback.c.created >= since)
        if negative:
            query = query.where(feedback.c.negative.is_(True))
        if version is not None:
            query = query.where(feedback.c.version == version)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        out = []
        for row in rows:
            mapping = row._mapping
            rating = {c.name: mapping[f"f_{c.name}"] for c in feedback.c}
            kept = mapping["c_messages"] is not None
            conversation = _conversation({c.name: mapping[f"c_{c.name}"] for c in conversations.c}) if kept else None
            out.append((rating, conversation))
        return out

    def counts(self, adapter: str, since: float | None = None) -> dict[int | None, dict[str, Any]]:
        """Per version of ``adapter``: feedback count, negatives, the mean of star ratings, and how
        many distinct end users rated (one user's twenty ratings are not twenty opinions)."""
        query = (
            select(
                feedback.c.version,
                func.count(),
                func.sum(cast(feedback.c.negative, Integer)),
                func.avg(feedback.c.rating).filter(feedback.c.scale == "stars"),
                func.count(feedback.c.end_user.distinct()),
            )
            .where(feedback.c.adapter == adapter)
            .group_by(feedback.c.version)
        )
        if since is not None:
            query = query.where(feedback.c.created >= since)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return {
            version: {"count": int(count), "negative": int(negative or 0), "mean_stars": stars, "raters": int(raters)}
            for version, count, negative, stars, raters in rows
        }

    def served(self, adapter: str, since: float | None = None) -> dict[int | None, int]:
        """Captured (answered) conversations per version of ``adapter``."""
        query = (
            select(conversations.c.version, func.count())
            .where(conversations.c.adapter == adapter)
            .group_by(conversations.c.version)
        )
        if since is not None:
            query = query.where(conversations.c.created >= since)
        self.flush()
        with self.engine.connect() as connection:
            return {version: int(count) for version, count in connection.execute(query).all()}


def _same_user(end_user: str | None) -> Any:
    return feedback.c.end_user.is_(None) if end_user is None else feedback.c.end_user == end_user


def _conversation(row: Any) -> Conversation:
    return Conversation(
        completion_id=row["completion_id"],
        model=row["model"],
        adapter=row["adapter"],
        version=row["version"],
        sha256=row["sha256"],
        end_user=row["end_user"],
        source=row["source"],
        messages=json.loads(row["messages"]),
        answer=row["answer"],
        created=float(row["created"]),
        tools=json.loads(row["tools"]) if row.get("tools") else None,
    )

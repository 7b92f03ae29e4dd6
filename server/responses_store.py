"""Stored responses: ``store`` (OpenAI's default), ``previous_response_id``, and
``GET``/``DELETE /v1/responses/{id}``, in the gateway's database beside keys and feedback.

A response is reachable only by the key that made it (the same 404 as an unknown id for any
other key, so ids learn nothing across tenants), and is deleted after ``--responses-retention-days``.
Each row keeps the whole conversation up to its output as Responses input items, so continuing a
response is one read, however long the chain; ``instructions`` are not carried over, as OpenAI
does not carry them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from .database.tables import responses
from .errors import NotFound


class ResponseStore:
    def __init__(self, engine: Engine, retention_days: float) -> None:
        self.engine = engine
        self.retention_s = retention_days * 86400

    def put(self, key_id: str, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(responses).values(
                    id=response["id"],
                    key_id=key_id,
                    model=response["model"],
                    response=json.dumps(response, ensure_ascii=False),
                    conversation=json.dumps(conversation, ensure_ascii=False),
                    created=time.time(),
                )
            )

    def _row(self, key_id: str, response_id: str) -> Any:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(responses).where(responses.c.id == response_id, responses.c.key_id == key_id)
            ).first()
        if row is None or row.created < time.time() - self.retention_s:
            raise NotFound(
                f"No response with id {response_id!r} is stored for this key (it was not stored, was "
                "deleted, is past the retention period, or another key made it).",
                param="response_id",
                code="response_not_found",
            )
        return row

    def get(self, key_id: str, response_id: str) -> dict[str, Any]:
        return dict(json.loads(self._row(key_id, response_id).response))

    def conversation(self, key_id: str, response_id: str) -> list[dict[str, Any]]:
        return list(json.loads(self._row(key_id, response_id).conversation))

    def delete(self, key_id: str, response_id: str) -> None:
        self._row(key_id, response_id)
        with self.engine.begin() as connection:
            connection.execute(delete(responses).where(responses.c.id == response_id))

    def purge(self) -> int:
        """Delete what is past the retention period; how many rows went."""
        with self.engine.begin() as connection:
            done = connection.execute(delete(responses).where(responses.c.created < time.time() - self.retention_s))
        return int(done.rowcount or 0)

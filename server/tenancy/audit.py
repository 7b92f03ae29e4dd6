"""The audit log: every admin action (keys, publishes, rollbacks, pins, splits) with who and when.

Written synchronously (admin actions are rare and a caller should know its action was recorded);
the detail is JSON and never holds a key's secret.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from ..database.tables import audit_log

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, actor: str, action: str, target: str, **detail: Any) -> None:
        row = {"at": time.time(), "actor": actor, "action": action, "target": target}
        with self.engine.begin() as connection:
            connection.execute(
                insert(audit_log).values({**row, "detail": json.dumps(detail, sort_keys=True, default=str)})
            )

    def entries(self, since: float | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Newest first."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [AuditEntry(float(r.at), str(r.actor), str(r.action), str(r.target), json.loads(r.detail)) for r in rows]


def cli_actor() -> str:
    """Who runs a command-line action: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name (a container without /etc/passwd entry)
        return "cli"


def audit_cli(adapters_dir: str | Path, action: str, target: str, **detail: Any) -> None:
    """Record a command-line admin action in the gateway's database (``LORA_GATEWAY_DATABASE``, else
    the adapters directory's). Never fails the command it records: a warning says it was not logged."""
    from ..database import database_url, open_engine

    try:
        engine = open_engine(database_url(os.environ.get("LORA_GATEWAY_DATABASE"), adapters_dir))
        try:
            AuditLog(engine).record(cli_actor(), action, target, **detail)
        finally:
            engine.dispose()
    except Exception as exc:
        logger.warning("audit log not written (%s): %s %s", exc, action, target)

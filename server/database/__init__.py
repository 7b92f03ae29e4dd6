"""The gateway's database: one SQLAlchemy URL for feedback, API keys, usage, rate-limit windows and
the audit log. SQLite in the adapters directory by default (nothing to run); PostgreSQL (or any
SQLAlchemy URL) where several gateways share keys, limits and feedback.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from ..terms.layout import DATABASE_FILE
from .tables import metadata


def database_url(url: str | None, adapters_dir: Path | str) -> str:
    """``url``, or the default SQLite file in ``adapters_dir``."""
    return url or f"sqlite:///{(Path(adapters_dir) / DATABASE_FILE).absolute()}"


def missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite file that is not there (a CLI reading it has nothing to read)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and not Path(str(parsed.database)).is_file()


def open_engine(url: str) -> Engine:
    """An engine for ``url``, with every table created. SQLite gets WAL (readers never block the
    writer), NORMAL sync (a power cut may lose the last transactions, never corrupt the file) and a
    busy timeout, so several processes can share one file."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
    else:
        if parsed.database and parsed.database != ":memory:":
            file = Path(parsed.database).expanduser()
            file.parent.mkdir(parents=True, exist_ok=True)
            # Conversations, key hashes and usage: readable by the gateway's user only. SQLite gives
            # its -wal and -shm files the database file's mode, so creating it 0600 covers them.
            # Only a file that is not there yet is opened here: closing any descriptor of a SQLite
            # file drops every POSIX lock this process holds on it (another engine's reads with it).
            with contextlib.suppress(FileExistsError):
                os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

    metadata.create_all(engine)
    _add_new_columns(engine)
    return engine


def _add_new_columns(engine: Engine) -> None:
    """Columns added to a table after a database was made (nullable ones only): ``create_all``
    makes missing tables, never missing columns, so a database from an earlier release gets them
    here, with ``ALTER TABLE ... ADD COLUMN``, which SQLite and PostgreSQL both take."""
    present = inspect(engine)
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            have = {column["name"] for column in present.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))

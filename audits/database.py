"""Where the database is, and the engine that connects to it."""

from __future__ import annotations

import os
import sqlite3
import time

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from recaudit.audits.urls import URL_ENV

DEFAULT_URL = "sqlite:///recaudit.db"


def resolve_url(db: str | None = None) -> str:
    """The database URL: `db`, else $RECAUDIT_DATABASE_URL, else ./recaudit.db.

    A bare path means an SQLite file; ``postgresql://`` URLs use psycopg 3.
    """
    url = db or os.environ.get(URL_ENV) or DEFAULT_URL
    if "://" not in url:
        return f"sqlite:///{url}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    # Switching a new database to WAL needs it to itself, and SQLite answers "locked" at once,
    # busy timeout or not, while another process opening it at the same moment holds it: retried
    # for as long as the busy timeout would wait.
    # (An in-memory database answers "memory" and stays so: only "locked" is retried.)
    deadline = time.monotonic() + 30
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def connect(url: str) -> Engine:
    """An engine for a resolved URL; SQLite files in write-ahead-log mode, waiting (rather than
    failing) while another process writes."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine

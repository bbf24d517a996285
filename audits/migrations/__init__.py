"""The schema's revisions (Alembic scripts in versions/) and bringing a database to the newest
when it is opened.

A database records its revision in alembic_version. One at the head is used as it is, after a
single read and without the schema lock, which would wait behind a long ingest; any other is
upgraded under the lock, because several processes may open a new database at the same moment.
A database without alembic_version (empty, or made before revisions were recorded) upgrades
from base: see the baseline revision for how both are brought to it.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from recaudit.recsys.formats import InputError

_SCHEMA_LOCK = 0x7265636175646974  # "recaudit": the advisory lock that serialises schema changes


def _config(conn: Connection | None = None) -> Config:
    """Alembic's configuration, with no alembic.ini: the scripts are those of this package."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@cache
def _known() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def head() -> str:
    """The newest revision, the one this code's schema (recaudit.audits.schema) is at."""
    return _scripts().get_current_head()


def revision(conn: Connection, database: str) -> str | None:
    """The revision the database is at (None when it records none). A revision this code does
    not know is an InputError: a newer recaudit upgraded the database, and this one would
    misread it."""
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in _known():
        raise InputError(database, f"its schema is at revision {current}, which this recaudit does not know "
                                   "(made by a newer recaudit)")
    return current


def upgrade(engine: Engine, database: str) -> None:
    """Bring the database to the head revision; `database` names it in errors."""
    with engine.connect() as conn:
        if revision(conn, database) == head():
            return
    with _schema_lock(engine) as conn:
        current = revision(conn, database)
        if current is None:
            _refuse_foreign(conn, database)
        if current != head():  # another process may have upgraded it meanwhile
            command.upgrade(_config(conn), "head")


def _refuse_foreign(conn: Connection, database: str) -> None:
    """A database without a revision is empty or made by an earlier recaudit, which always
    created all its tables at once, `ingested_sources` among them. Tables of recaudit's names
    without that one belong to someone else (a shared schema's own `users`): upgrading would
    alter them."""
    from sqlalchemy import inspect

    from recaudit.audits.schema import metadata

    present = set(inspect(conn).get_table_names())
    ours = sorted(present & set(metadata.tables))
    if ours and "ingested_sources" not in present:
        raise InputError(database, f"holds tables named like recaudit's ({', '.join(ours)}) that recaudit did not "
                                   "make: give it a database or schema of its own")


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction that no other process creates or upgrades the schema beside."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn
        conn.commit()

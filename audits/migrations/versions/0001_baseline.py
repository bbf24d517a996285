"""Baseline: the schema recaudit had before its revisions were recorded (the one of commit
75b1b4d), in any database that has no alembic_version yet.

Such a database is either empty or made by an earlier version, and both come from base through
here. Rather than telling them apart and stamping, this revision compares what is there with the
baseline tables and does only what is missing, so that one path serves both: an empty database
gets every table; one made before forks of logs were allowed gets the columns added since,
loses UNIQUE(continues) (SQLite rebuilds the table to drop it) and, on PostgreSQL, has its
VARCHAR columns that are TEXT now widened (SQLite never enforced a VARCHAR's length).

The tables are written out here, not taken from recaudit.audits.schema: that module is the
schema at head, and this revision must keep creating what it created when later revisions
change the head.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

from recaudit.audits.schema import UTCTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def tables() -> MetaData:
    """The baseline's tables."""
    m = MetaData()

    def events(name: str, *columns, primary_key: bool = False) -> Table:
        return Table(
            name, m,
            Column("source_id", Integer, nullable=False),
            Column("line", BigInteger, nullable=False),
            Column("time", UTCTime, nullable=False),
            Column("user_id", BigInteger, nullable=False),
            *columns,
            *([PrimaryKeyConstraint("source_id", "line")] if primary_key else []),
            Index(f"{name}_time", "time"),
        )

    Table(
        "ingested_sources", m,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(16), nullable=False),
        Column("name", Text, nullable=False),
        Column("fingerprint", String(64), nullable=False, unique=True),
        Column("continues", String(64)),
        Column("partial_from", BigInteger),
        Column("start_offset", BigInteger, nullable=False, default=0),
        Column("end_offset", BigInteger, nullable=False),
        Column("first_line", BigInteger, nullable=False, default=1),
        Column("last_line", BigInteger, nullable=False),
        Column("lines", BigInteger, nullable=False),
        Column("stored", Text, nullable=False),
        Column("quarantined", BigInteger, nullable=False),
        Column("ingested_at", UTCTime, nullable=False),
    )

    Table(
        "watch_hours", m,
        Column("user_id", BigInteger, nullable=False),
        Column("hour", Integer, nullable=False),
        Column("movie_key", Integer, nullable=False),
        Column("minutes", Integer, nullable=False),
        PrimaryKeyConstraint("user_id", "hour", "movie_key"),
        Index("watch_hours_hour", "hour"),
    )

    Table(
        "watch_spans", m,
        Column("user_id", BigInteger, nullable=False),
        Column("quarter", Integer, nullable=False),
        Column("movie_key", Integer, nullable=False),
        Column("first_at", UTCTime, nullable=False),
        Column("last_at", UTCTime, nullable=False),
        PrimaryKeyConstraint("user_id", "quarter", "movie_key"),
        Index("watch_spans_quarter", "quarter"),
    )

    Table(
        "movie_keys", m,
        Column("key", Integer, primary_key=True, autoincrement=False),
        Column("movie_id", Text, nullable=False, unique=True),
    )

    Table(
        "users", m,
        Column("user_id", BigInteger, primary_key=True, autoincrement=False),
        Column("age", Integer),
        Column("age_group", Text),
        Column("gender", Text),
        Column("occupation", Text),
        Column("source_id", Integer, nullable=False),
    )

    Table(
        "movies", m,
        Column("movie_key", Integer, primary_key=True, autoincrement=False),
        Column("title", Text),
        Column("year", Integer),
        Column("genres", Text),
        Column("source_id", Integer, nullable=False),
    )

    events("watches", Column("movie_key", Integer, nullable=False), Column("minute", Integer, nullable=False))
    events("ratings", Column("movie_key", Integer, nullable=False), Column("rating", SmallInteger, nullable=False))
    events(
        "recommendations",
        Column("server", Text, nullable=False),
        Column("status", Integer, nullable=False),
        Column("latency_ms", Integer, nullable=False),
        Column("n_items", Integer, nullable=False),
        Column("error", Text),
        primary_key=True,
    )

    Table(
        "recommendation_items", m,
        Column("source_id", Integer, nullable=False),
        Column("line", BigInteger, nullable=False),
        Column("rank", SmallInteger, nullable=False),
        Column("movie_key", Integer, nullable=False),
        PrimaryKeyConstraint("source_id", "line", "rank"),
    )

    Table(
        "quarantine", m,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("source_id", Integer, nullable=False),
        Column("file", Text, nullable=False),
        Column("line", BigInteger, nullable=False),
        Column("raw", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("near_time", UTCTime),
        Index("quarantine_near_time", "near_time"),
    )

    Table(
        "models", m,
        Column("id", Text, primary_key=True),
        Column("created_at", UTCTime, nullable=False),
        Column("algo", Text, nullable=False),
        Column("path", Text, nullable=False),
        Column("cutoff", UTCTime, nullable=False),
        Column("train_ratings", BigInteger, nullable=False),
        Column("data_sha256", String(64), nullable=False),
        Column("rmse", Float),
        Column("mae", Float),
        Column("metadata", Text, nullable=False),
    )

    Table(
        "audit_runs", m,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("started_at", UTCTime, nullable=False),
        Column("finished_at", UTCTime),
        Column("since", UTCTime, nullable=False),
        Column("until", UTCTime, nullable=False),
        Column("audits", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("path", Text),
        Column("results", Text),
        Column("error", Text),
    )

    Table(
        "audit_results", m,
        Column("run_id", Integer, nullable=False),
        Column("audit", String(32), nullable=False),
        Column("status", String(24), nullable=False),
        Column("error", Text),
        Column("seconds", Float, nullable=False),
        PrimaryKeyConstraint("run_id", "audit"),
    )

    Table(
        "metrics", m,
        Column("run_id", Integer, nullable=False),
        Column("key", Text, nullable=False),
        Column("value", Float),
        PrimaryKeyConstraint("run_id", "key"),
    )

    Table(
        "findings", m,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", Integer, nullable=False),
        Column("audit", String(32), nullable=False),
        Column("key", Text, nullable=False),
        Column("kind", Text, nullable=False),
        Column("severity", String(16), nullable=False),
        Column("message", Text, nullable=False),
        Column("value", Float),
        Column("threshold", Float),
        Column("fingerprint", String(32), nullable=False),
        Index("findings_run", "run_id"),
    )

    Table(
        "alerts", m,
        Column("id", String(32), primary_key=True),
        Column("created_at", UTCTime, nullable=False),
        Column("run_id", Integer, nullable=False),
        Column("condition", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("severity", String(16), nullable=False),
        Column("payload", Text, nullable=False),
    )

    Table(
        "alert_deliveries", m,
        Column("alert_id", String(32), nullable=False),
        Column("webhook", Text, nullable=False),
        Column("status", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_at", UTCTime, nullable=False),
        Column("delivered_at", UTCTime),
        Column("last_error", Text),
        PrimaryKeyConstraint("alert_id", "webhook"),
    )

    Table(
        "open_conditions", m,
        Column("condition", Text, primary_key=True),
        Column("alert_id", String(32), nullable=False),
        Column("opened_run_id", Integer, nullable=False),
    )

    Table(
        "job_runs", m,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("job", String(32), nullable=False),
        Column("started_at", UTCTime, nullable=False),
        Column("finished_at", UTCTime),
        Column("status", String(16), nullable=False),
        Column("detail", Text),
    )

    Table(
        "scheduler_lease", m,
        Column("name", String(64), primary_key=True),
        Column("holder", String(255), nullable=False),
        Column("expires_at", UTCTime, nullable=False),
    )
    return m


def upgrade() -> None:
    conn = op.get_bind()
    baseline = tables()
    found = sa.inspect(conn)
    present = set(found.get_table_names())
    baseline.create_all(conn, tables=[t for t in baseline.sorted_tables if t.name not in present])
    for table in baseline.sorted_tables:
        if table.name not in present:
            continue
        columns = {c["name"]: c for c in found.get_columns(table.name)}
        for column in table.c:  # columns added since: added in place, empty (so nullable)
            if column.name not in columns:
                op.add_column(table.name, Column(column.name, column.type))
            elif conn.dialect.name == "postgresql" and isinstance(column.type, Text) and \
                    getattr(columns[column.name]["type"], "length", None):
                op.alter_column(table.name, column.name, type_=Text(), existing_type=columns[column.name]["type"])
    if "ingested_sources" in present:
        # A log that shares its first lines with another log's content must be able to
        # continue it too: databases made before forks were allowed hold `continues` unique.
        unique = [u for u in found.get_unique_constraints("ingested_sources") if u["column_names"] == ["continues"]]
        if unique and conn.dialect.name == "postgresql":
            op.drop_constraint(unique[0]["name"], "ingested_sources", type_="unique")
        elif unique:  # SQLite cannot drop a constraint: the table is built again, as the baseline's
            with op.batch_alter_table("ingested_sources", copy_from=baseline.tables["ingested_sources"],
                                      recreate="always"):
                pass


def downgrade() -> None:
    # Undoing the baseline would drop every table and the data in them.
    raise NotImplementedError("recaudit's revisions are not undone: restore a backup of the database instead")

"""The tables of the store, in one MetaData, and the column type of every time in them.

Three choices keep it fast at millions of events a day without hiding anything:
- event rows are keyed by where they came from, (source_id, line), so every stored event and
  every quarantined line points back to its raw line;
- movie ids are stored once, in `movie_keys`, and referenced by an integer key, so event rows
  are all fixed-width integers;
- times are naive UTC: `timestamp` on PostgreSQL, integer microseconds on SQLite, behind one
  column type (`UTCTime`).

This is the schema at the head of audits/migrations: a change here comes with a revision there
(tests/test_migrations.py compares a migrated database with this metadata).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
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
from sqlalchemy.types import TypeDecorator

EPOCH = datetime(1970, 1, 1)


class UTCTime(TypeDecorator):
    """A naive UTC time: `timestamp` on PostgreSQL, integer microseconds on SQLite."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        ts = pd.Timestamp(value)
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        return ts.value // 1000 if dialect.name == "sqlite" else ts.to_pydatetime()

    def process_result_value(self, value, dialect):
        if value is None or dialect.name != "sqlite":
            return value
        return EPOCH + timedelta(microseconds=value)


def sql_type(type_) -> str:
    """The SQL type of a column's values, by its SQLAlchemy type (text for anything else)."""
    if isinstance(type_, UTCTime):
        return "TIMESTAMP"
    if isinstance(type_, SmallInteger):
        return "SMALLINT"
    if isinstance(type_, BigInteger):
        return "BIGINT"
    if isinstance(type_, Integer):
        return "INTEGER"
    if isinstance(type_, Float):
        return "DOUBLE"
    return "VARCHAR"


metadata = MetaData()

ingested_sources = Table(
    "ingested_sources", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # events, users, movies, movielens
    Column("name", Text, nullable=False),  # the path as given, or "-" for standard input
    Column("fingerprint", String(64), nullable=False, unique=True),  # sha256 of the content up to end_offset
    # A log that grew is ingested as tails, each continuing the content its predecessor's
    # fingerprint names. Two logs that share their first lines both continue that content.
    Column("continues", String(64)),
    Column("partial_from", BigInteger),  # where an unterminated last line starts (re-read when the log grows)
    Column("start_offset", BigInteger, nullable=False, default=0),
    Column("end_offset", BigInteger, nullable=False),
    Column("first_line", BigInteger, nullable=False, default=1),
    Column("last_line", BigInteger, nullable=False),
    Column("lines", BigInteger, nullable=False),
    Column("stored", Text, nullable=False),  # JSON counts by kind
    Column("quarantined", BigInteger, nullable=False),
    Column("ingested_at", UTCTime, nullable=False),
)

watch_hours = Table(
    # Minutes watched per user, hour and movie, kept up to date by ingestion in the same
    # transaction as the watches: distribution audits read ~200 k rows a day from it instead of
    # grouping 8 M watches.
    "watch_hours", metadata,
    Column("user_id", BigInteger, nullable=False),
    Column("hour", Integer, nullable=False),  # hours since 1970-01-01 (UTC)
    Column("movie_key", Integer, nullable=False),
    Column("minutes", Integer, nullable=False),
    PrimaryKeyConstraint("user_id", "hour", "movie_key"),
    Index("watch_hours_hour", "hour"),
)

SPAN_SECONDS = 900  # watch_spans' bucket: a quarter of an hour

watch_spans = Table(
    # The first and last watch per user, movie and quarter hour, kept up to date by ingestion:
    # "was movie m watched in (t, t + 15 min]?" has the same answer from these ~10x fewer rows
    # (a bucket no wider than the span cannot hold a watch inside it without one of its ends).
    "watch_spans", metadata,
    Column("user_id", BigInteger, nullable=False),
    Column("quarter", Integer, nullable=False),  # quarter hours since 1970-01-01 (UTC)
    Column("movie_key", Integer, nullable=False),
    Column("first_at", UTCTime, nullable=False),
    Column("last_at", UTCTime, nullable=False),
    PrimaryKeyConstraint("user_id", "quarter", "movie_key"),
    Index("watch_spans_quarter", "quarter"),
)

source_ids = Table(
    # The source ids handed out: a lake's log writer takes its id in a transaction of its own
    # before it writes (the id is in its files) and records the source only when it commits, so
    # that id is never given again, even if the writer is killed. Other sources take theirs in
    # their own transaction, which a rollback takes back with everything else of the source.
    "source_ids", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
)

movie_keys = Table(
    "movie_keys", metadata,
    Column("key", Integer, primary_key=True, autoincrement=False),
    Column("movie_id", Text, nullable=False, unique=True),
)

users = Table(
    "users", metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("age", Integer),
    Column("age_group", Text),
    Column("gender", Text),
    Column("occupation", Text),
    Column("source_id", Integer, nullable=False),
)

# Attributes of users and movies beyond the ones typed above (a users.csv's `region`, MovieLens'
# zip code, a movies.csv's `language`): text, one row per entity and attribute, so that any of
# them can group users or movies without a schema change.
user_attributes = Table(
    "user_attributes", metadata,
    Column("user_id", BigInteger, nullable=False),
    Column("name", Text, nullable=False),
    Column("value", Text),
    PrimaryKeyConstraint("user_id", "name"),
)

movies = Table(
    "movies", metadata,
    Column("movie_key", Integer, primary_key=True, autoincrement=False),
    Column("title", Text),
    Column("year", Integer),
    Column("genres", Text),
    Column("source_id", Integer, nullable=False),
)

movie_attributes = Table(
    "movie_attributes", metadata,
    Column("movie_key", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("value", Text),
    PrimaryKeyConstraint("movie_key", "name"),
)

def _event_table(name: str, *columns, primary_key: bool = False) -> Table:
    """An event table: where each row came from, when, and for which user, then its own columns."""
    return Table(
        name, metadata,
        Column("source_id", Integer, nullable=False),
        Column("line", BigInteger, nullable=False),
        Column("time", UTCTime, nullable=False),
        Column("user_id", BigInteger, nullable=False),
        *columns,
        *([PrimaryKeyConstraint("source_id", "line")] if primary_key else []),
        Index(f"{name}_time", "time"),
    )


watches = _event_table("watches", Column("movie_key", Integer, nullable=False),
                       Column("minute", Integer, nullable=False))
ratings = _event_table("ratings", Column("movie_key", Integer, nullable=False),
                       Column("rating", SmallInteger, nullable=False))
recommendations = _event_table(
    "recommendations",
    Column("server", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("n_items", Integer, nullable=False),
    Column("error", Text),
    primary_key=True,
)

# What a team's own model predicted a user would rate a movie, and when: the fairness audit
# scores each rating with the latest prediction made before it by the model under audit.
predictions = _event_table(
    "predictions",
    Column("movie_key", Integer, nullable=False),
    Column("model", Text, nullable=False),
    Column("prediction", Float, nullable=False),
    primary_key=True,
)
Index("predictions_lookup", predictions.c.model, predictions.c.user_id, predictions.c.movie_key, predictions.c.time)

recommendation_items = Table(
    "recommendation_items", metadata,
    Column("source_id", Integer, nullable=False),
    Column("line", BigInteger, nullable=False),
    Column("rank", SmallInteger, nullable=False),
    Column("movie_key", Integer, nullable=False),
    PrimaryKeyConstraint("source_id", "line", "rank"),
)

quarantine = Table(
    "quarantine", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_id", Integer, nullable=False),
    Column("file", Text, nullable=False),  # the file the line came from (a MovieLens source has three)
    Column("line", BigInteger, nullable=False),
    Column("raw", Text, nullable=False),
    Column("reason", Text, nullable=False),
    # A malformed line has no time of its own; in a time-ordered log, the time of the nearest
    # earlier event of the same source says when it happened (null for CSV and MovieLens rows).
    Column("near_time", UTCTime),
    Index("quarantine_near_time", "near_time"),
)

models = Table(
    "models", metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", UTCTime, nullable=False),
    Column("algo", Text, nullable=False),
    Column("path", Text, nullable=False),  # the artifact directory (model.npz, metadata.json)
    Column("cutoff", UTCTime, nullable=False),  # trained on ratings strictly before it
    Column("train_ratings", BigInteger, nullable=False),
    Column("data_sha256", String(64), nullable=False),
    Column("rmse", Float),
    Column("mae", Float),
    Column("metadata", Text, nullable=False),
)

audit_runs = Table(
    "audit_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UTCTime, nullable=False),
    Column("finished_at", UTCTime),
    Column("since", UTCTime, nullable=False),  # the window [since, until)
    Column("until", UTCTime, nullable=False),
    Column("audits", Text, nullable=False),  # the audits asked for, comma-separated
    Column("schedule", String(32)),  # the scheduled job that ran it; NULL for an ad-hoc run
    Column("status", String(16), nullable=False),  # running, ok, findings, critical, errored
    Column("path", Text),  # where results.json and the page were written
    Column("results", Text),  # the run's results.json, so that pages can be rendered again from here
    Column("error", Text),  # why an errored run could not be finished
    # The dashboard's newest runs, and a job's last run, without sorting every row (documents
    # included): 0.17 s to 0.007 s at 10,000 runs.
    Index("audit_runs_newest", "until", "id"),
)

audit_results = Table(
    "audit_results", metadata,
    Column("run_id", Integer, nullable=False),
    Column("audit", String(32), nullable=False),
    Column("status", String(24), nullable=False),
    Column("error", Text),
    Column("seconds", Float, nullable=False),
    PrimaryKeyConstraint("run_id", "audit"),
)

metrics = Table(
    "metrics", metadata,
    Column("run_id", Integer, nullable=False),
    Column("key", Text, nullable=False),  # <audit>.<metric>[.<dimension>.<group>]
    Column("value", Float),
    PrimaryKeyConstraint("run_id", "key"),
)

findings = Table(
    "findings", metadata,
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

# Alerts: an outbox written in the run's wake, and one delivery row per alert and webhook, so
# that a receiver that is down gets every alert once it is back.
alerts = Table(
    "alerts", metadata,
    Column("id", String(32), primary_key=True),  # also the idempotency key receivers see
    Column("created_at", UTCTime, nullable=False),
    Column("run_id", Integer),  # the run that judged it; NULL for a freshness alert
    Column("condition", Text, nullable=False),  # <scope>/<rule name or finding fingerprint or event kind>
    Column("status", String(16), nullable=False),  # firing, resolved
    Column("severity", String(16), nullable=False),
    Column("payload", Text, nullable=False),  # the JSON body every webhook receives
)

alert_deliveries = Table(
    "alert_deliveries", metadata,
    Column("alert_id", String(32), nullable=False),
    Column("webhook", Text, nullable=False),  # the webhook's name in recaudit.toml
    Column("status", String(16), nullable=False),  # pending, delivered
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCTime, nullable=False),
    Column("delivered_at", UTCTime),
    Column("last_error", Text),
    PrimaryKeyConstraint("alert_id", "webhook"),
)

open_conditions = Table(  # conditions that fired and have not yet resolved: not sent again
    "open_conditions", metadata,
    Column("condition", Text, primary_key=True),
    Column("alert_id", String(32), nullable=False),
    Column("opened_run_id", Integer),  # NULL for a freshness condition, which no run opens
)

job_runs = Table(  # every scheduled job's run and its outcome
    "job_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(32), nullable=False),
    Column("started_at", UTCTime, nullable=False),
    Column("finished_at", UTCTime),
    Column("status", String(16), nullable=False),  # running, ok, failed, interrupted
    Column("detail", Text),  # what it did, or the error with its traceback
)

scheduler_lease = Table(  # which scheduler process runs the jobs: one holder at a time, until expires_at
    "scheduler_lease", metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", UTCTime, nullable=False),
)

lake_files = Table(
    # The lake's manifest (a store opened with a lake keeps its events as Parquet files there):
    # one row per file, written under a temporary name, renamed into place, then recorded here in
    # the transaction of its source, so that only a committed source's files are ever read.
    "lake_files", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("table_name", String(32), nullable=False),
    Column("day", String(10), nullable=False),  # the partition: YYYY-MM-DD, or "none" (no time)
    Column("path", Text, nullable=False, unique=True),  # relative to the lake
    Column("source_id", Integer),  # none for a rollup's partial sums
    Column("rows", BigInteger, nullable=False),
    Column("first_line", BigInteger),
    Column("last_line", BigInteger),
    Index("lake_files_table", "table_name", "id"),
)

lake_forgotten = Table(
    # Lines of a lake source taken back when a log's half-written last line is read again whole:
    # Parquet files are never rewritten, so readers leave these (source, line) rows out.
    "lake_forgotten", metadata,
    Column("source_id", Integer, nullable=False),
    Column("line", BigInteger, nullable=False),
    PrimaryKeyConstraint("source_id", "line"),
)

# APScheduler's job store table: it creates and owns it, beside these (a revision rewrites what
# older versions stored in it).
SCHEDULER_JOBS = "scheduler_jobs"

EVENT_TABLES = {"watches": watches, "ratings": ratings, "recommendations": recommendations}

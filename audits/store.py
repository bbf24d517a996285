"""The store: what was ingested (and from where), on SQLite or PostgreSQL through SQLAlchemy.

Three choices keep it fast at millions of events a day without hiding anything:
- event rows are keyed by where they came from, (source_id, line), so every stored event and
  every quarantined line points back to its raw line;
- movie ids are stored once, in `movie_keys`, and referenced by an integer key, so event rows
  are all fixed-width integers;
- times are naive UTC: `timestamp` on PostgreSQL, integer microseconds on SQLite, behind one
  column type (`UTCTime`).
Bulk loads use each database's fast path (executemany in one transaction on SQLite, binary
COPY on PostgreSQL); window reads use binary COPY out on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timedelta
from typing import Iterator

import numpy as np
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
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable
from sqlalchemy.types import TypeDecorator

DEFAULT_URL = "sqlite:///recaudit.db"
URL_ENV = "RECAUDIT_DATABASE_URL"
_EPOCH = datetime(1970, 1, 1)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01


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
        return _EPOCH + timedelta(microseconds=value)


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

movies = Table(
    "movies", metadata,
    Column("movie_key", Integer, primary_key=True, autoincrement=False),
    Column("title", Text),
    Column("year", Integer),
    Column("genres", Text),
    Column("source_id", Integer, nullable=False),
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
    Column("status", String(16), nullable=False),  # running, ok, findings, critical, errored
    Column("path", Text),  # where results.json and the page were written
    Column("results", Text),  # the run's results.json, so that pages can be rendered again from here
    Column("error", Text),  # why an errored run could not be finished
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
    Column("run_id", Integer, nullable=False),
    Column("condition", Text, nullable=False),  # the rule name, or the finding's fingerprint
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
    Column("opened_run_id", Integer, nullable=False),
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

EVENT_TABLES = {"watches": watches, "ratings": ratings, "recommendations": recommendations}


_SCHEMA_LOCK = 0x7265636175646974  # "recaudit": the advisory lock that serialises schema changes


def _schema_changes(conn: Connection) -> list:
    """What must be done to bring the database to this version's schema, as steps that take the
    connection: create missing tables, and upgrade what older versions created."""
    from sqlalchemy import inspect

    found = inspect(conn)
    tables = set(found.get_table_names())
    steps = []
    if not set(metadata.tables) <= tables:
        steps.append(metadata.create_all)
    for table in metadata.sorted_tables:  # columns added since: added in place, empty
        if table.name in tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            for column in table.c:
                if column.name not in have:
                    steps.append(lambda c, t=table.name, col=column: c.exec_driver_sql(
                        f"ALTER TABLE {t} ADD COLUMN {col.name} {col.type.compile(dialect=c.dialect)}"))
    if "ingested_sources" in tables and any(u["column_names"] == ["continues"]
                                            for u in found.get_unique_constraints("ingested_sources")):
        steps.append(_continues_not_unique)
    if conn.dialect.name == "postgresql":  # SQLite never enforced a VARCHAR's length
        for table in metadata.sorted_tables:
            if table.name not in tables:
                continue
            for column in found.get_columns(table.name):
                declared = table.c.get(column["name"])
                if declared is not None and isinstance(declared.type, Text) and getattr(column["type"], "length", None):
                    steps.append(lambda c, t=table.name, n=column["name"]: c.exec_driver_sql(
                        f'ALTER TABLE {t} ALTER COLUMN "{n}" TYPE TEXT'))
    return steps


def _continues_not_unique(conn: Connection) -> None:
    """Databases made before forks were allowed hold `continues` unique; a log that shares its
    first lines with another log's content must be able to continue it too."""
    from sqlalchemy import inspect

    if conn.dialect.name == "postgresql":
        for u in inspect(conn).get_unique_constraints("ingested_sources"):
            if u["column_names"] == ["continues"]:
                conn.exec_driver_sql(f'ALTER TABLE ingested_sources DROP CONSTRAINT "{u["name"]}"')
        return
    # SQLite cannot drop a constraint: the table is built again without it.
    columns = ", ".join(c.name for c in ingested_sources.c)
    conn.exec_driver_sql("ALTER TABLE ingested_sources RENAME TO ingested_sources_before")
    ingested_sources.create(conn)
    conn.exec_driver_sql(f"INSERT INTO ingested_sources ({columns}) SELECT {columns} FROM ingested_sources_before")
    conn.exec_driver_sql("DROP TABLE ingested_sources_before")


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
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@dataclass
class Window:
    """Everything the audits read for one time window, as frames."""

    since: pd.Timestamp | None
    until: pd.Timestamp | None
    watches: pd.DataFrame
    ratings: pd.DataFrame
    recommendations: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    movies: pd.DataFrame


class Store:
    """One database: its schema, bulk writes, and reads back into frames."""

    def __init__(self, url: str | None = None):
        self.url = resolve_url(url)
        self.engine: Engine = create_engine(self.url)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        with self.engine.connect() as conn:
            current = not _schema_changes(conn)
        if not current:  # checked first without the lock, which would wait behind a long ingest
            with self._schema_lock() as conn:
                for change in _schema_changes(conn):
                    change(conn)

    @contextmanager
    def _schema_lock(self) -> Iterator[Connection]:
        """A transaction that no other process creates or upgrades the schema beside: several
        processes may open a new database at the same moment."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
            conn.commit()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        if "_lease_engine" in self.__dict__ and self._lease_engine is not self.engine:
            self._lease_engine.dispose()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: everything in it is committed together or not at all."""
        with self.engine.begin() as conn:
            yield conn

    # -- writing ---------------------------------------------------------------------------

    def insert(self, conn: Connection, table: Table, df: pd.DataFrame) -> int:
        """Append a frame whose columns are (a subset of) the table's, by the fast path."""
        if df.empty:
            return 0
        cols = list(df.columns)
        if self.dialect == "postgresql":
            _pg_copy(conn, table.name, df, [table.c[c].type for c in cols])
        else:
            values = [_sqlite_values(df[c], table.c[c].type) for c in cols]
            sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            conn.exec_driver_sql(sql, list(zip(*values)))
        return len(df)

    def upsert(self, conn: Connection, table: Table, df: pd.DataFrame, key: str | list[str],
               combine: dict[str, str] | None = None) -> int:
        """Insert rows; a row whose `key` exists is replaced, except the columns of `combine`,
        which are combined with what is stored: "add", "min" or "max" (a rollup)."""
        if df.empty:
            return 0
        cols = list(df.columns)
        keys = [key] if isinstance(key, str) else list(key)
        least, greatest = ("min", "max") if self.dialect == "sqlite" else ("LEAST", "GREATEST")
        how = {"add": "{t}.{c} + excluded.{c}", "min": least + "({t}.{c}, excluded.{c})",
               "max": greatest + "({t}.{c}, excluded.{c})"}
        combine = combine or {}
        updates = ", ".join(f"{c} = " + (how[combine[c]].format(t=table.name, c=c) if c in combine
                                         else f"excluded.{c}") for c in cols if c not in keys)
        conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        if self.dialect == "postgresql":
            staging = f"staging_{table.name}"
            conn.exec_driver_sql(f"CREATE TEMP TABLE {staging} (LIKE {table.name})")
            _pg_copy(conn, staging, df, [table.c[c].type for c in cols])
            conn.exec_driver_sql(
                f"INSERT INTO {table.name} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {staging} {conflict}")
            conn.exec_driver_sql(f"DROP TABLE {staging}")
        else:
            values = [_sqlite_values(df[c], table.c[c].type) for c in cols]
            conn.exec_driver_sql(
                f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) {conflict}",
                list(zip(*values)))
        return len(df)

    def lock_for_ingest(self, conn: Connection) -> None:
        """Serialise ingests from the start of their transaction: a source is planned (which
        content it continues, whether it was seen) and committed with no other ingest between."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql("LOCK TABLE movie_keys IN SHARE ROW EXCLUSIVE MODE")
        else:  # any write statement takes SQLite's one write lock, even one that changes no row
            conn.exec_driver_sql("UPDATE movie_keys SET key = key WHERE 0")

    def movie_keys(self, conn: Connection, ids: pd.Index | list[str], known: dict[str, int]) -> np.ndarray:
        """Integer keys of movie ids, assigning new keys for ids never seen. `known` is a cache
        filled from the table on first use and kept current; call `lock_for_ingest` first."""
        if not known:
            known.update(dict(conn.execute(movie_keys.select().with_only_columns(
                movie_keys.c.movie_id, movie_keys.c.key)).all()))
        new = [m for m in dict.fromkeys(ids) if m not in known]
        if new:
            start = max(known.values(), default=0) + 1
            fresh = {m: start + i for i, m in enumerate(new)}
            self.insert(conn, movie_keys, pd.DataFrame({"key": list(fresh.values()), "movie_id": new}))
            known.update(fresh)
        return np.fromiter((known[m] for m in ids), dtype=np.int64, count=len(ids))

    # -- reading ---------------------------------------------------------------------------

    def movie_ids(self) -> pd.Series:
        """Movie id by key, for turning stored keys back into ids."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT key, movie_id FROM movie_keys ORDER BY key")).all()
        return pd.Series([r[1] for r in rows], index=np.array([r[0] for r in rows], dtype=np.int64),
                         dtype=object)

    def read(self, name: str, since=None, until=None) -> pd.DataFrame:
        """One kind of stored rows in [since, until), as frames shaped like the parser's.

        `name` is watches, ratings, recommendations, items (of the recommendations in the
        window), users, movies or quarantine.
        """
        if name == "users":
            return self._frame("SELECT user_id, age, age_group, gender, occupation FROM users ORDER BY user_id")
        if name == "movies":
            df = self._frame("SELECT movie_key, title, year, genres FROM movies ORDER BY movie_key")
            return self._with_movie_ids(df)[["movie_id", "title", "year", "genres"]]
        if name == "quarantine":
            return self._frame("SELECT source_id, file, line, raw, reason FROM quarantine ORDER BY id")
        where, params = _time_filter(since, until, self.dialect)
        if name == "items":
            sql = ("SELECT i.source_id, i.line, i.rank, i.movie_key FROM recommendation_items i "
                   "JOIN recommendations r ON r.source_id = i.source_id AND r.line = i.line "
                   f"{where.replace('time', 'r.time')} ORDER BY r.time, i.source_id, i.line, i.rank")
            return self._with_movie_ids(self._frame(sql, params, fixed=True))
        table = EVENT_TABLES[name]
        cols = [c.name for c in table.columns]
        sql = f"SELECT {', '.join(cols)} FROM {name} {where} ORDER BY time, source_id, line"
        df = self._frame(sql, params, fixed=name != "recommendations")
        if name == "recommendations":
            df["server"] = df["server"].astype("category")
        return self._with_movie_ids(df) if "movie_key" in df else df

    def window(self, since=None, until=None) -> Window:
        """Every frame an audit may need for [since, until) in one call."""
        return Window(
            since=None if since is None else pd.Timestamp(since),
            until=None if until is None else pd.Timestamp(until),
            **{name: self.read(name, since, until) for name in
               ("watches", "ratings", "recommendations", "items", "users", "movies")},
        )

    def watched_pairs(self, until=None) -> pd.DataFrame:
        """Distinct (user_id, movie_id) pairs watched before `until`, aggregated in the database."""
        where, params = _time_filter(None, until, self.dialect)
        df = self._frame(f"SELECT DISTINCT user_id, movie_key FROM watches {where} ORDER BY user_id, movie_key",
                         params, fixed=True)
        return self._with_movie_ids(df)

    def record_model(self, model_id: str, path, meta: dict) -> None:
        """Record a model artifact; the newest one is the default everywhere."""
        with self.transaction() as conn:
            conn.execute(models.insert().values(
                id=model_id, created_at=pd.Timestamp(meta["created_at"]), algo=meta["algo"], path=str(path),
                cutoff=pd.Timestamp(meta["cutoff"]), train_ratings=meta["train"]["ratings"],
                data_sha256=meta["train"]["sha256"], rmse=meta["metrics"]["rmse"], mae=meta["metrics"]["mae"],
                metadata=json.dumps(meta, default=str)))

    def model_artifact(self, model_id: str | None = None) -> tuple[str, str] | None:
        """(id, path) of the named model, or of the newest when no id is given; None if none."""
        query = select(models.c.id, models.c.path)
        query = query.where(models.c.id == model_id) if model_id else query.order_by(
            models.c.created_at.desc(), models.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row[0], row[1]) if row else None

    def quarantine_of_window(self, since, until) -> pd.DataFrame:
        """Quarantined log lines that happened in [since, until) (by their `near_time`), shaped
        like the parser's rejects."""
        where, params = _time_filter(since, until, self.dialect)
        df = self._frame(f"SELECT file AS source, line, raw, reason FROM quarantine "
                         f"{where.replace('time', 'near_time')} ORDER BY id", params)
        return df.astype({"source": object, "line": np.int64, "raw": object, "reason": object})

    def latest_event_time(self) -> pd.Timestamp | None:
        """The time of the most recent stored event."""
        with self.engine.connect() as conn:
            values = [conn.execute(select(func.max(t.c.time))).scalar() for t in EVENT_TABLES.values()]
        values = [pd.Timestamp(v) for v in values if v is not None]
        return max(values) if values else None

    def start_run(self, since, until, audits: list[str]) -> int:
        with self.transaction() as conn:
            return conn.execute(audit_runs.insert().values(
                started_at=pd.Timestamp.now("UTC").tz_localize(None), since=pd.Timestamp(since),
                until=pd.Timestamp(until), audits=",".join(audits), status="running",
            ).returning(audit_runs.c.id)).scalar_one()

    def finish_run(self, run_id: int, document: dict, path) -> None:
        """Record each audit's status, metrics and findings, and close the run, in one
        transaction; `document` is the run's results.json."""
        with self.transaction() as conn:
            for name, a in document["audits"].items():
                conn.execute(audit_results.insert().values(run_id=run_id, audit=name, status=a["status"],
                                                           error=a["error"], seconds=a["seconds"]))
                if a["metrics"]:
                    conn.execute(metrics.insert(), [{"run_id": run_id, "key": k, "value": v}
                                                    for k, v in a["metrics"].items()])
                if a["findings"]:
                    conn.execute(findings.insert(), [
                        {"run_id": run_id, **{k: f[k] for k in ("audit", "key", "kind", "severity", "message",
                                                                 "value", "threshold", "fingerprint")}}
                        for f in a["findings"]])
            conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                finished_at=pd.Timestamp.now("UTC").tz_localize(None), status=document["status"], path=str(path),
                results=json.dumps(document, default=str)))

    def abandon_run(self, run_id: int, reason: str) -> None:
        """Close a run that could not be finished (its results could not be written or
        recorded): errored, with the reason, never left running."""
        with self.transaction() as conn:
            conn.execute(audit_runs.update().where(audit_runs.c.id == run_id).values(
                finished_at=pd.Timestamp.now("UTC").tz_localize(None), status="errored", error=reason))

    def runs(self) -> list[dict]:
        """Every finished run, newest first: id, since, until, status, started_at, path and its
        results.json document."""
        query = (select(audit_runs).where(audit_runs.c.finished_at.is_not(None))
                 .order_by(audit_runs.c.until.desc(), audit_runs.c.id.desc()))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**{k: row[k] for k in ("id", "since", "until", "status", "started_at", "path", "error")},
                 "document": json.loads(row["results"]) if row["results"] else None} for row in rows]

    def newest_window_end(self) -> pd.Timestamp | None:
        """The latest window end of the runs that finished with results (one that could not be
        finished judged nothing, and must not hide the windows of later runs)."""
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(audit_runs.c.until)).where(
                audit_runs.c.finished_at.is_not(None), audit_runs.c.results.is_not(None))).scalar()
        return None if value is None else pd.Timestamp(value)

    def latest_metrics(self) -> pd.DataFrame:
        """(key, value, run_id, until): every metric key's value in the latest finished run that
        recorded it."""
        query = (select(metrics.c.key, metrics.c.value, audit_runs.c.id, audit_runs.c.until)
                 .join(audit_runs, metrics.c.run_id == audit_runs.c.id).where(audit_runs.c.finished_at.is_not(None))
                 .order_by(audit_runs.c.until, audit_runs.c.id))
        with self.engine.connect() as conn:
            df = pd.DataFrame(conn.execute(query).all(), columns=["key", "value", "run_id", "until"])
        return df.drop_duplicates("key", keep="last").reset_index(drop=True)

    def start_job(self, job: str, started_at=None) -> int:
        """Record that `job` started, now or at `started_at`; returns the run's id."""
        started_at = pd.Timestamp.now("UTC") if started_at is None else started_at
        with self.transaction() as conn:
            return conn.execute(job_runs.insert().values(job=job, started_at=started_at, status="running")
                                .returning(job_runs.c.id)).scalar_one()

    def finish_job(self, run_id: int, status: str, detail: str, finished_at=None) -> None:
        """Record a run's outcome, which happened now or at `finished_at` (an outcome recorded
        late, once the database answers again, keeps the time it happened)."""
        finished_at = pd.Timestamp.now("UTC") if finished_at is None else finished_at
        with self.transaction() as conn:
            conn.execute(job_runs.update().where(job_runs.c.id == run_id).values(
                finished_at=finished_at, status=status, detail=detail))

    def unfinished_jobs(self, exclude=()) -> list[tuple[int, str]]:
        """(id, job) of the runs still marked running, but those whose id is in `exclude`."""
        query = select(job_runs.c.id, job_runs.c.job).where(job_runs.c.status == "running").order_by(job_runs.c.id)
        exclude = set(exclude)
        with self.engine.connect() as conn:
            return [(i, job) for i, job in conn.execute(query).all() if i not in exclude]

    def interrupt_jobs(self, run_ids: list[int], detail: str) -> None:
        """Mark these runs interrupted, those that are still running: their process died."""
        if not run_ids:
            return
        with self.transaction() as conn:
            conn.execute(job_runs.update().where(job_runs.c.id.in_(run_ids), job_runs.c.status == "running")
                         .values(finished_at=pd.Timestamp.now("UTC"), status="interrupted", detail=detail))

    def job_outcomes(self) -> pd.DataFrame:
        """(job, status, n): how many runs of each job ended each way."""
        query = select(job_runs.c.job, job_runs.c.status, func.count()).group_by(job_runs.c.job, job_runs.c.status)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).all(), columns=["job", "status", "n"])

    def take_lease(self, name: str, holder: str, seconds: float) -> str:
        """Take the lease `name` for `seconds`, or renew it, if it is free, expired or already
        `holder`'s: one conditional UPDATE in a transaction, so that of processes racing for it
        exactly one wins. Returns who holds it afterwards (`holder` when taken)."""
        from sqlalchemy import or_
        from sqlalchemy.exc import IntegrityError

        lease = scheduler_lease.c
        try:
            with self._lease_engine.begin() as conn:
                now = self._lease_clock(conn)
                values = {"holder": holder, "expires_at": now + timedelta(seconds=seconds)}
                if conn.execute(scheduler_lease.update().where(
                        lease.name == name, or_(lease.holder == holder, lease.expires_at <= now)).values(**values)).rowcount:
                    return holder
                current = conn.execute(select(lease.holder).where(lease.name == name)).scalar()
                if current is not None:
                    return current
                conn.execute(scheduler_lease.insert().values(name=name, **values))
                return holder
        except IntegrityError:  # another process inserted the first row in the meantime: the lease is its
            with self._lease_engine.connect() as conn:
                return conn.execute(select(lease.holder).where(lease.name == name)).scalar_one()

    def release_lease(self, name: str, holder: str) -> None:
        """Let the lease expire now, if `holder` has it, so that a standby takes it at its next try."""
        with self._lease_engine.begin() as conn:
            conn.execute(scheduler_lease.update().where(scheduler_lease.c.name == name,
                                                        scheduler_lease.c.holder == holder)
                         .values(expires_at=self._lease_clock(conn)))

    @cached_property
    def _lease_engine(self) -> Engine:
        """Where the lease lives. On SQLite, a file of its own beside the database (`<file>-lease`):
        the database has one write lock, which an ingest holds for as long as it stores a log,
        and a lease renewal waiting behind it would make the active scheduler step down."""
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return self.engine
        engine = create_engine(f"sqlite:///{database}-lease")
        event.listen(engine, "connect", _sqlite_pragmas)
        with engine.begin() as conn:  # IF NOT EXISTS: several schedulers may start at once
            conn.execute(CreateTable(scheduler_lease, if_not_exists=True))
        return engine

    def _lease_clock(self, conn: Connection) -> datetime:
        """Now, naive UTC. PostgreSQL's clock on PostgreSQL, so that schedulers on hosts whose
        clocks differ agree on when a lease expires; an SQLite file has one host, and its clock."""
        if self.dialect == "postgresql":
            return conn.execute(text("SELECT CAST(now() AT TIME ZONE 'UTC' AS timestamp)")).scalar_one()
        return pd.Timestamp.now("UTC").tz_localize(None).to_pydatetime()

    def metric_series(self, keys: list[str]) -> pd.DataFrame:
        """(run_id, until, key, value) of the given keys over every finished run, oldest first."""
        query = (select(audit_runs.c.id, audit_runs.c.until, metrics.c.key, metrics.c.value)
                 .join(metrics, metrics.c.run_id == audit_runs.c.id)
                 .where(metrics.c.key.in_(keys), audit_runs.c.finished_at.is_not(None))
                 .order_by(audit_runs.c.until, audit_runs.c.id))
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).all(), columns=["run_id", "until", "key", "value"])

    # -- aggregates for the audits: distributions at millions of events, computed in the database

    def value_counts(self, table: str, column: str, since, until, where: str = "") -> pd.DataFrame:
        """(value, n) of one column of an event table in the window (`where`: an extra clause)."""
        clause, params = _time_filter(since, until, self.dialect)
        extra = f" AND {where}" if where and clause else (f" WHERE {where}" if where else "")
        return self._frame(f"SELECT {column} AS value, count(*) AS n FROM {table} {clause}{extra} "
                           f"GROUP BY {column} ORDER BY {column}", params)

    def _day(self) -> str:
        """The day of an event's time, as SQL (per-day aggregates do not depend on window length)."""
        return "time / 86400000000" if self.dialect == "sqlite" else "CAST(date_trunc('day', time) AS date) - DATE '1970-01-01'"

    def per_user_day(self, table: str, since, until) -> pd.DataFrame:
        """(user_id, day, n): events of a table per user and day in the window."""
        clause, params = _time_filter(since, until, self.dialect)
        return self._frame(f"SELECT user_id, {self._day()} AS day, count(*) AS n FROM {table} {clause} "
                           "GROUP BY 1, 2 ORDER BY 1, 2", params, fixed=True)

    def watch_sessions(self, since, until) -> pd.DataFrame:
        """(user_id, day, movie_id, minutes): minutes watched per user, day and movie in the
        window; from the hourly rollup when the window is whole hours, else from the watches."""
        hours = _whole_hours(since, until)
        if hours is not None:
            df = self._frame("SELECT user_id, hour / 24 AS day, movie_key, sum(minutes) AS minutes FROM watch_hours "
                             "WHERE hour >= :a AND hour < :b GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                             {"a": hours[0], "b": hours[1]}, fixed=True)
        else:
            clause, params = _time_filter(since, until, self.dialect)
            df = self._frame(f"SELECT user_id, {self._day()} AS day, movie_key, count(*) AS minutes FROM watches "
                             f"{clause} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", params, fixed=True)
        return self._with_movie_ids(df.astype({"day": np.int64, "minutes": np.int64}))

    def followed_items(self, since, until, horizon: pd.Timedelta) -> pd.DataFrame:
        """(source_id, line, rank, time, first_at, last_at): each recommended movie of a request
        in [since, until) that its user watched around then, with the watch spans of that user
        and movie in the quarter hours from `since` to `until` + `horizon`. Movies never
        watched are not returned: they cannot make a request succeed."""
        clause, params = _time_filter(since, until, self.dialect)
        a = int(pd.Timestamp(since).value // 10**9 // SPAN_SECONDS)
        b = -(-int((pd.Timestamp(until) + horizon).value // 10**9) // SPAN_SECONDS)
        sql = ("SELECT i.source_id, i.line, i.rank, r.time, s.first_at, s.last_at FROM recommendation_items i "
               "JOIN recommendations r ON r.source_id = i.source_id AND r.line = i.line "
               "JOIN watch_spans s ON s.user_id = r.user_id AND s.movie_key = i.movie_key "
               f"AND s.quarter >= :qa AND s.quarter < :qb {clause.replace('time', 'r.time')}")
        return self._frame(sql, {**params, "qa": a, "qb": b}, fixed=True)

    def recommended_counts(self, since, until) -> pd.DataFrame:
        """(movie_id, n): how often each movie was recommended in the window."""
        clause, params = _time_filter(since, until, self.dialect)
        df = self._frame("SELECT i.movie_key, count(*) AS n FROM recommendation_items i JOIN recommendations r "
                         f"ON r.source_id = i.source_id AND r.line = i.line {clause.replace('time', 'r.time')} "
                         "GROUP BY i.movie_key ORDER BY i.movie_key", params, fixed=True)
        return self._with_movie_ids(df)

    def rated_counts(self, since, until) -> pd.DataFrame:
        """(movie_id, n): how often each movie was rated in the window."""
        clause, params = _time_filter(since, until, self.dialect)
        return self._with_movie_ids(self._frame(f"SELECT movie_key, count(*) AS n FROM ratings {clause} "
                                                "GROUP BY movie_key ORDER BY movie_key", params, fixed=True))

    def recommended_counts_by_user(self, since, until) -> pd.DataFrame:
        """(age, age_group, gender, movie_id, n): recommendations of each movie in the window
        by the attributes of the users they were made to (missing for unknown users)."""
        clause, params = _time_filter(since, until, self.dialect)
        df = self._frame("SELECT u.age, u.age_group, u.gender, i.movie_key, count(*) AS n FROM recommendation_items i "
                         "JOIN recommendations r ON r.source_id = i.source_id AND r.line = i.line "
                         "LEFT JOIN users u ON u.user_id = r.user_id "
                         f"{clause.replace('time', 'r.time')} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", params)
        df = df.astype({"age_group": object, "gender": object, "n": np.int64})
        return self._with_movie_ids(df.astype({"movie_key": np.int64}))

    def metric_history(self, keys: list[str], until, limit: int) -> pd.DataFrame:
        """(run_id, until, key, value) of the latest `limit` finished runs whose window ends
        before `until` and that recorded any of `keys`, one run per window end (the latest)."""
        df = self.metric_series(keys)
        df = df[df["until"] < pd.Timestamp(until)]
        if df.empty:
            return df
        df = df[df["run_id"] == df.groupby("until")["run_id"].transform("max")]
        ends = np.sort(df["until"].unique())[-limit:] if limit > 0 else []
        return df[df["until"].isin(ends)].reset_index(drop=True)

    def active_user_days(self, since, until) -> pd.DataFrame:
        """Every user active (any event) on a day of the window, one row per user and day, with
        the user's attributes (missing for users not in the users table)."""
        clause, params = _time_filter(since, until, self.dialect)
        parts = [f"SELECT user_id, {self._day()} AS day FROM {t} {clause}" for t in ("ratings", "recommendations")]
        hours = _whole_hours(since, until)
        if hours is not None:
            parts.append("SELECT user_id, hour / 24 AS day FROM watch_hours WHERE hour >= :a AND hour < :b")
            params = {**params, "a": hours[0], "b": hours[1]}
        else:
            parts.append(f"SELECT user_id, {self._day()} AS day FROM watches {clause}")
        df = self._frame("SELECT a.user_id, a.day, u.age, u.age_group, u.gender, u.occupation FROM "
                         f"(SELECT DISTINCT user_id, day FROM ({' UNION '.join(parts)}) x) a "
                         "LEFT JOIN users u ON u.user_id = a.user_id ORDER BY a.user_id, a.day", params)
        return df.astype({"day": np.int64, "age_group": object, "gender": object, "occupation": object})

    def model_metadata(self, model_id: str | None = None) -> dict | None:
        """The recorded metadata of a model (the newest when no id is given)."""
        query = select(models.c.metadata)
        query = query.where(models.c.id == model_id) if model_id else query.order_by(
            models.c.created_at.desc(), models.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return json.loads(row[0]) if row else None

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()

    def _with_movie_ids(self, df: pd.DataFrame) -> pd.DataFrame:
        """Replace the movie_key column by a categorical movie_id in the same place."""
        ids = self.movie_ids()
        at = df.columns.get_loc("movie_key")
        keys = df.pop("movie_key").to_numpy(dtype=np.int64)
        if len(ids):
            codes = np.searchsorted(ids.index.to_numpy(), keys)
            movie_id = pd.Categorical.from_codes(codes, categories=ids.to_numpy()).remove_unused_categories()
        else:
            movie_id = pd.Categorical([])
        df.insert(at, "movie_id", movie_id)
        return df

    def frame(self, statement, fixed: bool = False) -> pd.DataFrame:
        """Run a SQLAlchemy Core select into a frame. `fixed` selects (integer and time
        columns, no NULLs) are read through binary COPY on PostgreSQL; times come back as
        datetime64[ns], integer columns as int64.

        Audits build their own selects over the tables of this module (with `between` for a
        window) and read them through here.
        """
        with self.engine.connect() as conn:
            if fixed and self.dialect == "postgresql":
                sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                return _pg_copy_out(conn, sql, {})
            result = conn.execute(statement)
            cols = list(result.keys())
            rows = result.all()
        return _typed(pd.DataFrame.from_records(rows, columns=cols), self.dialect)

    def _frame(self, sql: str, params: dict | None = None, fixed: bool = False) -> pd.DataFrame:
        """Run a query into a frame; `fixed` queries (integer and time columns, no NULLs) read
        through binary COPY on PostgreSQL."""
        with self.engine.connect() as conn:
            if fixed and self.dialect == "postgresql":
                return _pg_copy_out(conn, sql, params or {})
            result = conn.execute(text(sql), params or {})
            cols = list(result.keys())
            rows = result.all()
        df = pd.DataFrame.from_records(rows, columns=cols)
        return _typed(df, self.dialect)


# ---------------------------------------------------------------------------------------------
# Conversions and the PostgreSQL fast paths.

_INT_COLUMNS = {"source_id", "line", "user_id", "movie_key", "minute", "rating", "status", "latency_ms",
                "n_items", "rank", "key"}


def _typed(df: pd.DataFrame, dialect: str) -> pd.DataFrame:
    for c in df.columns:
        if c in ("time", "first_at", "last_at"):
            if dialect == "sqlite":
                df[c] = df[c].to_numpy(dtype=np.int64).astype("datetime64[us]").astype("datetime64[ns]")
            else:
                df[c] = pd.to_datetime(df[c]).astype("datetime64[ns]")
        elif c in _INT_COLUMNS:
            df[c] = df[c].astype(np.int64)
        elif c in ("age", "year"):
            df[c] = df[c].astype("Int64")
    return df


def between(column, since=None, until=None) -> list:
    """The conditions of a window on a time column: since <= column < until (either end open)."""
    return ([] if since is None else [column >= pd.Timestamp(since)]) + \
        ([] if until is None else [column < pd.Timestamp(until)])


def _whole_hours(since, until) -> tuple[int, int] | None:
    """The window as [first hour, last hour) since 1970 when both ends are whole hours."""
    if since is None or until is None:
        return None
    a, b = pd.Timestamp(since), pd.Timestamp(until)
    if a != a.floor("h") or b != b.floor("h"):
        return None
    return a.value // 3_600_000_000_000, b.value // 3_600_000_000_000


def _time_filter(since, until, dialect: str) -> tuple[str, dict]:
    clauses, params = [], {}
    for name, value, op in (("since", since, ">="), ("until", until, "<")):
        if value is not None:
            clauses.append(f"time {op} :{name}")
            params[name] = UTCTime().process_bind_param(value, _Dialect(dialect))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


class _Dialect:
    def __init__(self, name: str):
        self.name = name


def _python_values(series: pd.Series, type_) -> list:
    """A column as Python values for a driver: ints, strings or None; times in the storage form
    of the dialect (SQLite: microseconds; PostgreSQL: datetime)."""
    if isinstance(type_, UTCTime):
        times = series.to_numpy(dtype="datetime64[ns]")
        micros = (times.astype(np.int64) // 1000).tolist()
        return [None if missing else v for v, missing in zip(micros, np.isnat(times))]
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
            for v in series.astype(object).tolist()]


def _sqlite_values(series: pd.Series, type_) -> list:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
        return series.tolist()
    return _python_values(series, type_)


_PG_FIXED = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "timestamp": ">i8"}
_PG_OIDS = {21: ">i2", 23: ">i4", 20: ">i8", 1114: "timestamp"}  # int2, int4, int8, timestamp


def _pg_kind(type_) -> str:
    if isinstance(type_, UTCTime):
        return "timestamp"
    if isinstance(type_, SmallInteger):
        return "int2"
    if isinstance(type_, BigInteger):
        return "int8"
    if isinstance(type_, Integer):
        return "int4"
    return "text"


def _pg_copy(conn: Connection, table: str, df: pd.DataFrame, types: list) -> None:
    """COPY a frame in binary: encoded with numpy when every column is a non-null integer or
    time, else row by row through psycopg."""
    kinds = [_pg_kind(t) for t in types]
    cols = list(df.columns)
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN (FORMAT binary)") as copy:
        if all(k in _PG_FIXED for k in kinds) and not df.isna().any().any():
            fields = [("n", ">i2")]
            for i, k in enumerate(kinds):
                fields += [(f"l{i}", ">i4"), (f"v{i}", _PG_FIXED[k])]
            rows = np.empty(len(df), dtype=np.dtype(fields))
            rows["n"] = len(cols)
            for i, (c, k) in enumerate(zip(cols, kinds)):
                rows[f"l{i}"] = int(_PG_FIXED[k][-1])
                if k == "timestamp":
                    rows[f"v{i}"] = df[c].to_numpy(dtype="datetime64[ns]").astype(np.int64) // 1000 - _PG_EPOCH_US
                else:
                    rows[f"v{i}"] = df[c].to_numpy(dtype=np.int64)
            copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
            copy.write(rows.tobytes())
            copy.write(struct.pack(">h", -1))
        else:
            copy.set_types(kinds)
            columns = []
            for c, k, t in zip(cols, kinds, types):
                values = _python_values(df[c], t)
                if k == "timestamp":
                    values = [None if v is None else _EPOCH + timedelta(microseconds=v) for v in values]
                columns.append(values)
            for row in zip(*columns):
                copy.write_row(row)


def _pg_copy_out(conn: Connection, sql: str, params: dict) -> pd.DataFrame:
    """Run a query whose columns are non-null integers or times through binary COPY out."""
    raw = conn.connection.driver_connection
    query = _inline(sql, params, raw)
    data = bytearray()
    with raw.cursor() as cur:
        cur.execute(f"SELECT * FROM ({query}) q LIMIT 0")
        cols = [(d.name, _PG_OIDS[d.type_code]) for d in cur.description]
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
            for chunk in copy:
                data += chunk
    fields = [("n", ">i2")]
    for i, (_, kind) in enumerate(cols):
        fields += [(f"l{i}", ">i4"), (f"v{i}", ">i8" if kind == "timestamp" else kind)]
    dtype = np.dtype(fields)
    header = 19  # signature, flags, extension length
    n = max(len(data) - header - 2, 0) // dtype.itemsize
    rows = np.frombuffer(bytes(data), dtype=dtype, count=n, offset=header) if n else np.empty(0, dtype)
    out = {}
    for i, (name, kind) in enumerate(cols):
        v = rows[f"v{i}"].astype(np.int64)
        if kind == "timestamp":
            v = (v + _PG_EPOCH_US).astype("datetime64[us]").astype("datetime64[ns]")
        out[name] = v
    return pd.DataFrame(out)


def _inline(sql: str, params: dict, raw) -> str:
    """Bind parameters into SQL text for a view (COPY and views take no parameters)."""
    from psycopg import sql as psql

    for name, value in params.items():
        literal = psql.Literal(value).as_string(raw)
        sql = sql.replace(f":{name}", literal)
    return sql

"""The store: what was ingested (and from where), on SQLite or PostgreSQL through SQLAlchemy.

`Store` is one database, composed of what the modules beside it hold:
- recaudit.audits.schema: the tables and the column type of times;
- recaudit.audits.migrations: the schema's revisions, applied when a database is opened;
- recaudit.audits.events: event writes by each database's fast path and window reads;
- recaudit.audits.history: runs, metrics, findings, jobs, the scheduler's lease and models;
- recaudit.audits.pgcopy: PostgreSQL's binary COPY, both ways;
- recaudit.audits.lake and engines: events as Parquet files instead, read by DuckDB or Spark.
The names other modules import from here (tables, `Window`, `between`, `resolve_url`) are
re-exported. The aggregates an audit reads are written beside that audit (recaudit.audits.activity,
drift_sources, online).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from recaudit.audits import migrations
from recaudit.audits.database import DEFAULT_URL, URL_ENV, connect, resolve_url
from recaudit.audits.events import EventStore, Window, between, whole_hours
from recaudit.audits.history import HistoryStore
from recaudit.audits.lake import resolve_lake
from recaudit.audits.schema import (
    EVENT_TABLES,
    SPAN_SECONDS,
    UTCTime,
    alert_deliveries,
    alerts,
    audit_results,
    audit_runs,
    findings,
    ingested_sources,
    job_runs,
    lake_files,
    metadata,
    metrics,
    models,
    movie_keys,
    movies,
    open_conditions,
    quarantine,
    ratings,
    recommendation_items,
    recommendations,
    scheduler_lease,
    source_ids,
    users,
    watch_hours,
    watch_spans,
    watches,
)

__all__ = [
    "DEFAULT_URL", "EVENT_TABLES", "SPAN_SECONDS", "URL_ENV", "Store", "UTCTime", "Window", "alert_deliveries",
    "alerts", "audit_results", "audit_runs", "between", "findings", "ingested_sources", "job_runs", "metadata",
    "metrics", "models", "movie_keys", "movies", "open_conditions", "quarantine", "ratings",
    "recommendation_items", "recommendations", "resolve_url", "scheduler_lease", "source_ids", "users",
    "watch_hours", "watch_spans", "watches", "whole_hours",
]


class EventsElsewhere(ValueError):
    """The database and the lake it was opened with disagree on where its events are."""


class Store(EventStore, HistoryStore):
    """One database: its schema brought to the head revision on open, bulk writes, reads back
    into frames, and the history of runs, jobs and models."""

    def __init__(self, url: str | None = None, lake: str | None = None, engine: str | None = None,
                 settings: dict | None = None, events: bool = True):
        """`url` as `resolve_url` reads it; `lake` and `engine` as `resolve_lake` and
        `resolve_engine` read them, `settings` being the configuration's `store` table. Without
        `events`, the store is for its history alone (runs, jobs, alerts): no lake is opened and
        no event read, so a job that failed to open its events is recorded all the same."""
        self.url = resolve_url(url)
        self.engine: Engine = connect(self.url)
        where = self.engine.url
        migrations.upgrade(self.engine, where.database if self.dialect == "sqlite" else
                           where.render_as_string(hide_password=True))
        self.lake, self.reader = None, None
        if not events:
            return
        settings = settings or {}
        location = resolve_lake(lake, settings.get("lake"))
        if location is not None:  # events in Parquet files, read by an engine (recaudit.audits.lake)
            from recaudit.audits.engines import LakeReader, resolve_engine
            from recaudit.audits.lake import Lake

            self.lake = Lake(location)
            self.reader = LakeReader(self, self.lake, resolve_engine(engine, settings.get("engine")))
        self._check_where_events_are()

    def _check_where_events_are(self) -> None:
        """Refuse a database whose events are in a lake when it is opened without one, and one
        holding events itself when it is opened with one: either way half the events would be
        out of sight, and a re-read line could not be taken back."""
        with self.engine.connect() as conn:
            in_lake = conn.execute(select(lake_files.c.id).limit(1)).first() is not None
            in_database = any(conn.execute(select(t.c.source_id).limit(1)).first() is not None
                              for t in EVENT_TABLES.values())
        if self.lake is None and in_lake:
            raise EventsElsewhere(f"the events of {self.shown_url} are in a lake: open it with --lake "
                                  f"(or $RECAUDIT_LAKE, store.lake)")
        if self.lake is not None and in_database:
            raise EventsElsewhere(f"{self.shown_url} holds its events itself: a lake ({self.lake.location}) needs a "
                                  "database of its own")

    @property
    def shown_url(self) -> str:
        """The URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if "_lease_engine" in self.__dict__ and self._lease_engine is not self.engine:
            self._lease_engine.dispose()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: everything in it is committed together or not at all."""
        with self.engine.begin() as conn:
            yield conn

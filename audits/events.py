"""Events in and out of the store: bulk writes by each database's fast path, and reads of a
time window back into frames shaped like the parser's.

Writes are executemany in one transaction on SQLite and binary COPY on PostgreSQL; reads are
SQLAlchemy Core selects, read through binary COPY out on PostgreSQL when their columns are all
integers and times.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Table, and_, column, func, insert, select, union
from sqlalchemy import table as table_named
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from recaudit.audits.lake import CARRIED, LAKE_TABLES, tables_of
from recaudit.audits.pgcopy import copy_in, copy_out, literal_sql, python_values
from recaudit.audits.schema import (
    EVENT_TABLES,
    metadata,
    movie_attributes,
    movie_keys,
    movies,
    predictions,
    quarantine,
    recommendation_items,
    recommendations,
    user_attributes,
    users,
    watches,
)

_INT_COLUMNS = {"source_id", "line", "user_id", "movie_key", "minute", "rating", "status", "latency_ms",
                "n_items", "rank", "key"}


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


def between(column, since=None, until=None) -> list:
    """The conditions of a window on a time column: since <= column < until (either end open)."""
    return ([] if since is None else [column >= pd.Timestamp(since)]) + \
        ([] if until is None else [column < pd.Timestamp(until)])


def whole_hours(since, until) -> tuple[int, int] | None:
    """The window as [first hour, last hour) since 1970 when both ends are whole hours."""
    if since is None or until is None:
        return None
    a, b = pd.Timestamp(since), pd.Timestamp(until)
    if a != a.floor("h") or b != b.floor("h"):
        return None
    return a.value // 3_600_000_000_000, b.value // 3_600_000_000_000


def _typed(df: pd.DataFrame, dialect: str) -> pd.DataFrame:
    """Columns as the audits expect them from stored values: times as datetime64[ns] (SQLite
    stores microseconds), keys and counts as int64, optional integers as Int64."""
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


def _sqlite_values(series: pd.Series, type_) -> list:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
        return series.tolist()
    return python_values(series, type_)


def _sqlite_executemany(conn: Connection, statement, table: Table, df: pd.DataFrame) -> None:
    """Execute an INSERT for every row of a frame in one executemany, with the values already in
    SQLite's storage form (the driver takes them as they are, with no per-value conversion)."""
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(df.columns))
    values = {c: _sqlite_values(df[c], table.c[c].type) for c in df.columns}
    conn.exec_driver_sql(compiled.string, list(zip(*(values[name] for name in compiled.positiontup))))


JOINED_ATTRIBUTES = 50  # attributes per statement (SQLite's limit is 64 tables in a join)


class EventStore:
    """Event writes and window reads of a `Store` (which gives `engine`, `dialect`, and `lake` and
    `reader` when its events are in a lake)."""

    # -- writing ---------------------------------------------------------------------------

    def insert(self, conn: Connection, table: Table, df: pd.DataFrame) -> int:
        """Append a frame whose columns are (a subset of) the table's, by the fast path (a lake's
        tables are written by recaudit.audits.lake)."""
        if df.empty:
            return 0
        df = df.drop(columns=[c for c in CARRIED.get(table.name, ()) if c in df])
        cols = list(df.columns)
        if self.dialect == "postgresql":
            copy_in(conn, table.name, df, [table.c[c].type for c in cols])
        else:
            _sqlite_executemany(conn, insert(table), table, df)
        return len(df)

    def upsert(self, conn: Connection, table: Table, df: pd.DataFrame, key: str | list[str],
               combine: dict[str, str] | None = None) -> int:
        """Insert rows; a row whose `key` exists is replaced, except the columns of `combine`,
        which are combined with what is stored: "add", "min" or "max" (a rollup).

        On PostgreSQL the rows are COPYed into a temporary table and merged from there in one
        INSERT ... SELECT ... ON CONFLICT."""
        if df.empty:
            return 0
        cols = list(df.columns)
        keys = [key] if isinstance(key, str) else list(key)
        combine = combine or {}
        least, greatest = (func.min, func.max) if self.dialect == "sqlite" else (func.least, func.greatest)
        how = {"add": lambda a, b: a + b, "min": least, "max": greatest}

        def merged(statement):
            new = statement.excluded
            return statement.on_conflict_do_update(index_elements=keys, set_={
                c: how[combine[c]](table.c[c], new[c]) if c in combine else new[c] for c in cols if c not in keys})

        if self.dialect == "postgresql":
            staging = f"staging_{table.name}"
            conn.exec_driver_sql(f"CREATE TEMP TABLE {staging} (LIKE {table.name})")
            copy_in(conn, staging, df, [table.c[c].type for c in cols])
            rows = select(*table_named(staging, *map(column, cols)).c)
            conn.execute(merged(postgresql.insert(table).from_select(cols, rows)))
            conn.exec_driver_sql(f"DROP TABLE {staging}")
        else:
            _sqlite_executemany(conn, merged(sqlite.insert(table)), table, df)
        return len(df)

    def lock_for_ingest(self, conn: Connection) -> None:
        """Serialise ingests from here to the end of the transaction: on a database a source is
        planned (which content it continues, whether it was seen) and committed with no other
        ingest between; on a lake, source ids, new movie keys and commits are taken in turn."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql("LOCK TABLE movie_keys IN SHARE ROW EXCLUSIVE MODE")
        else:  # any write statement takes SQLite's one write lock, even one that changes no row
            conn.exec_driver_sql("UPDATE movie_keys SET key = key WHERE 0")

    def movie_keys(self, conn: Connection, ids: pd.Index | list[str], known: dict[str, int]) -> np.ndarray:
        """Integer keys of movie ids, assigning new keys for ids never seen. `known` is a cache
        filled from the table on first use and kept current; call `lock_for_ingest` first."""
        if not known:
            known.update(dict(conn.execute(select(movie_keys.c.movie_id, movie_keys.c.key)).all()))
        new = [m for m in dict.fromkeys(ids) if m not in known]
        if new:
            start = max(known.values(), default=0) + 1
            fresh = {m: start + i for i, m in enumerate(new)}
            self.insert(conn, movie_keys, pd.DataFrame({"key": list(fresh.values()), "movie_id": new}))
            known.update(fresh)
        return np.fromiter((known[m] for m in ids), dtype=np.int64, count=len(ids))

    # -- reading ---------------------------------------------------------------------------

    def frame(self, statement, fixed: bool = False) -> pd.DataFrame:
        """Run a SQLAlchemy Core select into a frame. `fixed` selects (integer and time
        columns, no NULLs) are read through binary COPY on PostgreSQL; times come back as
        datetime64[ns], integer columns as int64.

        Audits build their own selects over the tables of recaudit.audits.schema (with
        `between` for a window) and read them through here. A select that reads a lake table runs
        on the lake's engine.
        """
        if self.reader is not None and tables_of(statement) & LAKE_TABLES.keys():
            return self.reader.frames([statement])[0]
        with self.engine.connect() as conn:
            return self._read(conn, statement, fixed)

    def frames(self, *statements) -> list[pd.DataFrame]:
        """Run several selects as `frame` does, all as of one moment: an ingest committing
        meanwhile is seen by all of them or by none (e.g. a count and the rows it counts)."""
        if self.reader is not None and any(tables_of(s) & LAKE_TABLES.keys() for s in statements):
            return self.reader.frames(list(statements))
        with self.snapshot() as conn:
            return [self._read(conn, s) for s in statements]

    def _read(self, conn: Connection, statement, fixed: bool = False) -> pd.DataFrame:
        if self.dialect == "postgresql":
            if fixed:
                return copy_out(conn, literal_sql(statement))
            result = conn.execute(statement)
        else:  # the stored values as they are: times stay microseconds until `_typed`
            result = conn.exec_driver_sql(str(statement.compile(
                dialect=conn.dialect, compile_kwargs={"literal_binds": True})))
        cols = list(result.keys())
        return _typed(pd.DataFrame.from_records(result.all(), columns=cols), self.dialect)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection whose reads all see the database as of its first one."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN")  # in WAL mode a read transaction keeps its snapshot
            else:
                conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                yield conn
            finally:
                conn.rollback()

    def movie_ids(self) -> pd.Series:
        """Movie id by key, for turning stored keys back into ids."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(movie_keys.c.key, movie_keys.c.movie_id).order_by(movie_keys.c.key)).all()
        return pd.Series([r[1] for r in rows], index=np.array([r[0] for r in rows], dtype=np.int64),
                         dtype=object)

    def read(self, name: str, since=None, until=None) -> pd.DataFrame:
        """One kind of stored rows in [since, until), as frames shaped like the parser's.

        `name` is watches, ratings, recommendations, items (of the recommendations in the
        window), predictions (of any model, made in the window), users, movies or quarantine.
        Users and movies have their typed columns, then one text column per stored attribute
        (None where one lacks it).
        """
        if name == "users":
            u = users.c
            return self._with_attributes(select(u.user_id, u.age, u.age_group, u.gender, u.occupation), "users",
                                         u.user_id)
        if name == "movies":
            m = movies.c
            return self.with_movie_ids(self._with_attributes(select(m.movie_key, m.title, m.year, m.genres),
                                                             "movies", m.movie_key))
        if name == "quarantine":
            q = quarantine.c
            return self.frame(select(q.source_id, q.file, q.line, q.raw, q.reason).order_by(q.id))
        if name == "items":
            i, r = recommendation_items.c, recommendations.c
            query = (select(i.source_id, i.line, i.rank, i.movie_key)
                     .join(recommendations, and_(r.source_id == i.source_id, r.line == i.line))
                     .where(*between(r.time, since, until)).order_by(r.time, i.source_id, i.line, i.rank))
            return self.with_movie_ids(self.frame(query, fixed=True))
        if name == "predictions":
            p = predictions.c
            query = (select(p.source_id, p.line, p.time, p.user_id, p.movie_key, p.model, p.prediction)
                     .where(*between(p.time, since, until)).order_by(p.time, p.source_id, p.line))
            return self.with_movie_ids(self.frame(query))
        table = EVENT_TABLES[name]
        query = select(table).where(*between(table.c.time, since, until)).order_by(
            table.c.time, table.c.source_id, table.c.line)
        df = self.frame(query, fixed=name != "recommendations")
        if name == "recommendations":
            df["server"] = df["server"].astype("category")
        return self.with_movie_ids(df) if "movie_key" in df else df

    def users_of(self, since, until, *tables: Table) -> pd.DataFrame:
        """The users, as `read("users")` gives them, who have an event of `tables` in
        [since, until): the ones an audit of the window groups, chosen in the database (or the
        lake's engine) instead of reading every user."""
        active = [select(t.c.user_id).where(*between(t.c.time, since, until)) for t in tables]
        u = users.c
        return self._with_attributes(select(u.user_id, u.age, u.age_group, u.gender, u.occupation), "users",
                                     u.user_id, where=u.user_id.in_(union(*active)))

    def _with_attributes(self, query, kind: str, key, where=None) -> pd.DataFrame:
        """The rows of `query` (of users or movies, whose id is `key`), in the order of `key`,
        with one text column per attribute stored for `kind`, in the order of their names: None
        where one lacks the attribute. Each is an outer join on the attributes' primary key, so
        the database pivots them; they are read under labels of their own, so that an attribute
        named like a typed column elsewhere (a user's `status`) is not read as one. SQLite joins
        at most 64 tables in one statement, so the attributes come JOINED_ATTRIBUTES at a time,
        each batch in the same order of `key` and under the same `where`."""
        table = user_attributes if kind == "users" else movie_attributes
        names = self.attribute_names(kind)
        df = None
        for start in range(0, max(len(names), 1), JOINED_ATTRIBUTES):
            batch, joined = names[start:start + JOINED_ATTRIBUTES], key.table
            part = query if df is None else select(key)
            if where is not None:
                part = part.where(where)
            for i, name in enumerate(batch, start):
                a = table.alias(f"attribute_{i}")
                joined = joined.outerjoin(a, and_(a.c[key.name] == key, a.c.name == name))
                part = part.add_columns(a.c.value.label(f"attribute_{i}"))
            part = self.frame(part.select_from(joined).order_by(key))
            if df is None:
                df = part
            else:  # the same rows in the same order: the batch's columns line up
                df = pd.concat([df, part.drop(columns=key.name).set_axis(df.index)], axis=1)
        return df.rename(columns={f"attribute_{i}": name for i, name in enumerate(names)})

    def attribute_names(self, kind: str) -> list[str]:
        """The names of the attributes stored for `kind` (users or movies), in order."""
        a = (user_attributes if kind == "users" else movie_attributes).c
        return self.frame(select(a.name).distinct().order_by(a.name))["name"].tolist()

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
        w = watches.c
        query = (select(w.user_id, w.movie_key).distinct().where(*between(w.time, None, until))
                 .order_by(w.user_id, w.movie_key))
        return self.with_movie_ids(self.frame(query, fixed=True))

    def quarantine_of_window(self, since, until) -> pd.DataFrame:
        """Quarantined log lines that happened in [since, until) (by their `near_time`), shaped
        like the parser's rejects."""
        q = quarantine.c
        df = self.frame(select(q.file.label("source"), q.line, q.raw, q.reason)
                        .where(*between(q.near_time, since, until)).order_by(q.id))
        return df.astype({"source": object, "line": np.int64, "raw": object, "reason": object})

    def latest_time(self, table: Table) -> pd.Timestamp | None:
        """The time of the most recent event of an event table (None when it has none)."""
        df = self.frame(select(func.max(table.c.time).label("time")).having(func.count() > 0))
        return pd.Timestamp(df["time"].iloc[0]) if len(df) else None

    def latest_event_time(self) -> pd.Timestamp | None:
        """The time of the most recent stored event."""
        values = [v for v in map(self.latest_time, EVENT_TABLES.values()) if v is not None]
        return max(values) if values else None

    def count(self, table: str) -> int:
        """How many rows a table holds."""
        return int(self.frame(select(func.count().label("n")).select_from(metadata.tables[table]))["n"].iloc[0])

    def with_movie_ids(self, df: pd.DataFrame) -> pd.DataFrame:
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

"""The lake: a store's events as Parquet files partitioned by day, with their manifest in the
database.

A store opened with a lake (`--lake PATH`, $RECAUDIT_LAKE or `store.lake`) keeps watches,
ratings, recommendations, recommended items (with their request's time and user), quarantine,
predictions and the two watch rollups as files ``<table>/day=YYYY-MM-DD/<source>-<uuid>.parquet``
under the lake's path, a local directory or an object-store URL (``s3://…``, through pyarrow's
filesystems). Runs, metrics, findings, alerts, jobs, models, users, movies and the manifest stay
in the database.

Every ingest guarantee of the database holds because a file counts only once the manifest says
so: it is written under a temporary name, renamed into place, then recorded in `lake_files` in
the transaction of its source. A source that fails removes its files, and one killed with
``kill -9`` leaves at most files nobody reads; a committed one has all of its files. So several
writers can write their files at once and take turns only to commit (recaudit.audits.ingest).
Files are never rewritten: a line taken back (a log's half-written last line, read again
whole) is recorded in `lake_forgotten` and left out by readers, and the rollups are appended as
partial sums that readers add up.

The lake is read by an engine (recaudit.audits.engines): every select an audit makes over the
store's tables runs there unchanged, over views of the manifest's files.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pandas as pd
from sqlalchemy import Table, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql import visitors

from recaudit.audits.schema import (
    lake_files,
    lake_forgotten,
    predictions,
    quarantine,
    ratings,
    recommendation_items,
    recommendations,
    sql_type,
    watch_hours,
    watch_spans,
    watches,
)
from recaudit.audits.urls import LAKE_ENV

# The tables kept in the lake, and the columns each file has: an item carries its request's
# time and user, so that a day's items are in that day's partition and can be read without it.
LAKE_TABLES: dict[str, Table] = {t.name: t for t in (watches, ratings, recommendations, recommendation_items,
                                                      quarantine, predictions, watch_hours, watch_spans)}
CARRIED = {"recommendation_items": ("time", "user_id")}
# Rollups are appended as partial sums; the view of each adds them up (a taken-back watch is
# appended as -1 minute, and an hour left with no minutes is no row, as in the database).
ROLLUPS = {
    "watch_hours": "SELECT user_id, hour, movie_key, CAST(SUM(minutes) AS INTEGER) AS minutes FROM {raw} "
                   "GROUP BY user_id, hour, movie_key HAVING SUM(minutes) > 0",
    "watch_spans": "SELECT user_id, quarter, movie_key, MIN(first_at) AS first_at, MAX(last_at) AS last_at "
                   "FROM {raw} GROUP BY user_id, quarter, movie_key",
}
_LINED = ("watches", "ratings", "recommendations", "recommendation_items", "quarantine", "predictions")
_QUARANTINE_IDS = 2**32  # a lake quarantine row's id: source_id * 2^32 + its place in the source


def column_types(name: str) -> dict[str, str]:
    """A lake table's columns and their SQL types (the types of its Parquet files)."""
    table = LAKE_TABLES[name]
    types = {c.name: sql_type(c.type) for c in table.columns}
    if name in CARRIED:
        types.update(time="TIMESTAMP", user_id="BIGINT")
    if name == "quarantine":
        types["id"] = "BIGINT"  # source_id * 2^32 + place
    return types


def arrow_schema(types: dict[str, str]):
    """The pyarrow schema of columns with these SQL types."""
    import pyarrow as pa

    arrow = {"TIMESTAMP": pa.timestamp("us"), "SMALLINT": pa.int16(), "BIGINT": pa.int64(), "INTEGER": pa.int32(),
             "DOUBLE": pa.float64(), "VARCHAR": pa.string()}
    return pa.schema([(name, arrow[t]) for name, t in types.items()])


def tables_of(statement) -> set[str]:
    """The names of the tables a select reads (through aliases and subqueries)."""
    return {e.name for e in visitors.iterate(statement) if isinstance(e, Table)}


def resolve_lake(lake: str | None = None, configured: str | None = None) -> str | None:
    """The lake: `lake`, else $RECAUDIT_LAKE, else `configured` (store.lake), else none (events in
    the database)."""
    return lake or os.environ.get(LAKE_ENV) or configured or None


class Lake:
    """The files of one lake: written and recorded in a transaction of the database, listed from
    its manifest."""

    def __init__(self, location: str):
        from pyarrow import fs

        self.location = location
        if "://" in location:
            self.fs, root = fs.FileSystem.from_uri(location)
            self.local = isinstance(self.fs, fs.LocalFileSystem)
        else:
            root = os.path.abspath(location)
            self.fs, self.local = fs.LocalFileSystem(), True
        self.root = root.rstrip("/")
        self.fs.create_dir(self.root, recursive=True)

    def full_path(self, path: str) -> str:
        return f"{self.root}/{path}"

    # -- writing ---------------------------------------------------------------------------

    def write(self, table: Table, df: pd.DataFrame, files: list[dict]) -> int:
        """Write a frame of `table`'s rows as one file per day, and add the manifest row of each to
        `files`, for `record` to commit with their source (`discard` removes them if it does not)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if df.empty:
            return 0
        name = table.name
        types = column_types(name)
        df = df.copy()
        if name == "quarantine":
            df = _with_ids(df, files)
        for c, t in types.items():
            if c not in df:
                df[c] = None
            elif t == "TIMESTAMP":  # as the databases keep them: microseconds (a log may give nanoseconds)
                df[c] = pd.to_datetime(df[c]).dt.floor("us")
        days = _days(name, df)
        schema = arrow_schema(types)
        for day, rows in df.groupby(days, sort=True):
            data = pa.Table.from_pandas(rows[list(types)], schema=schema, preserve_index=False)
            source_id = int(rows["source_id"].iloc[0]) if "source_id" in types else None
            path = f"{name}/day={day}/{source_id or 0:08d}-{uuid.uuid4().hex}.parquet"
            final = self.full_path(path)
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            lines = rows["line"] if "line" in rows else None
            # Listed before it is written, so that `discard` also removes a file half-written.
            files.append(dict(table_name=name, day=day, path=path, source_id=source_id, rows=len(rows),
                              first_line=None if lines is None else int(lines.min()),
                              last_line=None if lines is None else int(lines.max())))
            if self.local:  # a reader of the directory never sees half a file
                temporary = f"{final}.tmp"
                pq.write_table(data, temporary, filesystem=self.fs, compression="zstd")
                _synced(temporary)  # on disk before the manifest names it, so a power loss cannot lose it
                self.fs.move(temporary, final)
                _synced(os.path.dirname(final))
            else:  # an object store has no rename: an object appears whole when its upload ends
                pq.write_table(data, final, filesystem=self.fs, compression="zstd")
        return len(df)

    def record(self, conn: Connection, files: list[dict]) -> None:
        """Record written files in the manifest, in `conn`'s transaction: from its commit on, they
        are read."""
        if files:
            conn.execute(insert(lake_files), files)

    def discard(self, files: list[dict]) -> None:
        """Remove files that were written but will not be recorded (their source failed, or
        another writer committed the same lines first). Best effort: a file left behind is never
        read, as the manifest does not name it."""
        for row in files:
            final = self.full_path(row["path"])
            for path in (final, f"{final}.tmp"):
                try:
                    self.fs.delete_file(path)
                except (FileNotFoundError, OSError):
                    pass
        files.clear()

    def forget(self, conn: Connection, store, source_id: int, line: int, files: list[dict]) -> dict[str, int]:
        """Take back one line of a source, in `conn`'s transaction: how many rows each table held of
        it (none when it was taken back already); the file taking back the rollup's minute it
        counted goes to `files`, to be recorded with the source that reads the line again."""
        forgotten = conn.execute(select(lake_forgotten.c.line).where(
            lake_forgotten.c.source_id == source_id, lake_forgotten.c.line == line)).first()
        if forgotten is not None:
            return {name: 0 for name in _LINED}
        removed = {}
        for name in _LINED:
            t = LAKE_TABLES[name]
            removed[name] = int(store.frame(select(func.count().label("n")).where(
                t.c.source_id == source_id, t.c.line == line))["n"].iloc[0])
        if any(removed.values()):
            w = watches.c
            watched = store.frame(select(w.user_id, w.time, w.movie_key).where(w.source_id == source_id,
                                                                            w.line == line))
            if len(watched):
                hour = watched["time"].to_numpy(dtype="datetime64[h]").astype(np.int64)
                self.write(watch_hours, pd.DataFrame({
                    "user_id": watched["user_id"].to_numpy(), "hour": hour,
                    "movie_key": watched["movie_key"].to_numpy(), "minutes": -1}), files)
            conn.execute(insert(lake_forgotten).values(source_id=source_id, line=line))
        return removed

    # -- reading ---------------------------------------------------------------------------

    def files(self, conn: Connection) -> dict[str, list[str]]:
        """The committed files of every lake table, in the order they were recorded."""
        f = lake_files.c
        listed: dict[str, list[str]] = {name: [] for name in LAKE_TABLES}
        for name, path in conn.execute(select(f.table_name, f.path).order_by(f.id)).all():
            listed[name].append(self.full_path(path))
        return listed


def _with_ids(df: pd.DataFrame, files: list[dict]) -> pd.DataFrame:
    """Quarantine rows numbered in the order their source stored them, as the database numbers
    them (a source's quarantine is written by its own ingest alone, into `files`)."""
    source_id = int(df["source_id"].iloc[0])
    before = sum(f["rows"] for f in files if f["table_name"] == "quarantine" and f["source_id"] == source_id)
    return df.assign(id=source_id * _QUARANTINE_IDS + before + np.arange(len(df)))


def _synced(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _days(name: str, df: pd.DataFrame) -> np.ndarray:
    """Each row's partition: the day of its time (of its hour or quarter for the rollups)."""
    if name == "watch_hours":
        times = (df["hour"].to_numpy(dtype=np.int64) * 3600).astype("datetime64[s]")
    elif name == "watch_spans":
        times = (df["quarter"].to_numpy(dtype=np.int64) * 900).astype("datetime64[s]")
    else:
        column = "near_time" if name == "quarantine" else "time"
        times = pd.to_datetime(df[column]).to_numpy(dtype="datetime64[ns]")
    days = np.datetime_as_string(times.astype("datetime64[D]"), unit="D").astype(object)
    days[pd.isna(times)] = "none"
    return days

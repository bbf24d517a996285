"""The engines that read a lake: DuckDB, embedded (the default), and Spark SQL through pyspark.

An audit's select over the store's tables is compiled once per engine, with its values inline,
and run over views named like the tables: each lake table's view reads the files its manifest
lists (less the lines taken back; the rollups' partial sums added up), and each table of the
database that a select joins (users, movies, their attributes, movie keys) is copied in from the
database, once per ingest. Both engines are PostgreSQL's SQL for what the audits ask, but for
integer division (`//` on DuckDB, `DIV` on Spark), the name of the text type (STRING on Spark)
and a day's number (recaudit.audits.activity's `day_of`); so each select is one SQL text, read
the same way by both, and the frames they give back are the database's.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql.base import PGCompiler, PGTypeCompiler
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Connection

from recaudit.audits.lake import LAKE_TABLES, ROLLUPS, Lake, arrow_schema, column_types, tables_of
from recaudit.audits.schema import ingested_sources, lake_files, lake_forgotten, metadata, sql_type
from recaudit.audits.urls import ENGINE_ENV, ENGINES

SPARK_MASTER_ENV = "RECAUDIT_SPARK_MASTER"
DUCKDB_MEMORY_ENV = "RECAUDIT_DUCKDB_MEMORY"  # DuckDB's memory_limit ("6GB"); unset: its own, 80% of RAM


class _LakeCompiler(PGCompiler):
    def visit_floordiv_binary(self, binary, operator, **kw):
        return f"({self.process(binary.left, **kw)} {self.dialect.floordiv} {self.process(binary.right, **kw)})"


class _DuckDBDialect(PGDialect_psycopg):
    name = "duckdb"
    floordiv = "//"
    statement_compiler = _LakeCompiler


class _SparkTypeCompiler(PGTypeCompiler):
    def visit_TEXT(self, type_, **kw):  # Spark SQL's text is STRING; it knows no TEXT
        return "STRING"


class _SparkDialect(_DuckDBDialect):
    name = "spark"
    floordiv = "DIV"
    type_compiler_cls = _SparkTypeCompiler


def resolve_engine(engine: str | None = None, configured: str | None = None) -> str:
    """The engine: `engine`, else $RECAUDIT_ENGINE, else `configured` (store.engine), else duckdb."""
    name = (engine or os.environ.get(ENGINE_ENV) or configured or "duckdb").lower()
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
    return name


def table_types(name: str) -> dict[str, str]:
    """The columns and SQL types an engine's view of a table has."""
    if name in LAKE_TABLES:
        return column_types(name)
    return {c.name: sql_type(c.type) for c in metadata.tables[name].columns}


class LakeReader:
    """Runs a store's selects that read lake tables on an engine, over the lake's committed files."""

    def __init__(self, store, lake: Lake, engine: str):
        self.store, self.lake = store, lake
        if engine == "spark" and not lake.local:
            raise ValueError(f"the spark engine reads a lake on this machine's filesystem (or one Hadoop "
                             f"mounts), not {lake.location}: use --engine duckdb for an object store")
        self.dialect = (_SparkDialect if engine == "spark" else _DuckDBDialect)(paramstyle="named")
        self.backend = SparkBackend() if engine == "spark" else DuckDBBackend()
        self._views: dict[str, object] = {}  # view name -> what it was made from
        self._lock = threading.Lock()  # one engine connection: one select at a time

    def sql(self, statement) -> str:
        return str(statement.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))

    def frames(self, statements: list) -> list[pd.DataFrame]:
        """Run selects over the same views: all see the lake as of one moment."""
        from recaudit.audits.events import _typed

        with self._lock:
            self._prepare(set().union(*map(tables_of, statements)))
            return [_typed(self.backend.run(self.sql(s)), "postgresql") for s in statements]

    def _prepare(self, names: set[str]) -> None:
        """Views of these tables as the manifest and the database have them now: all read in one
        snapshot, so that an ingest committing meanwhile is seen whole or not at all."""
        # All read in one snapshot: else an ingest committing between two of these reads could
        # show a re-read line twice (its new file listed, its taking back not yet copied) or a
        # file's rows without their users.
        with self.store.snapshot() as conn:
            generation = (conn.execute(select(func.max(ingested_sources.c.id))).scalar(),
                          conn.execute(select(func.max(lake_files.c.id))).scalar(),
                          conn.execute(select(func.count()).select_from(lake_forgotten)).scalar())
            files = self.lake.files(conn) if any(n in LAKE_TABLES for n in names) else {}
            forgetting = generation[2] > 0
            if forgetting and self._views.get("lake_forgotten") != generation:
                self._copy_in(conn, "lake_forgotten")
                self._views["lake_forgotten"] = generation
            for name in sorted(names):
                if name in LAKE_TABLES:
                    made_of = (tuple(files[name]), forgetting and generation)
                    if self._views.get(name) != made_of:
                        self._view_of_files(name, files[name], forgetting)
                        self._views[name] = made_of
                elif self._views.get(name) != generation:
                    self._copy_in(conn, name)
                    self._views[name] = generation

    def _view_of_files(self, name: str, paths: list[str], forgetting: bool) -> None:
        raw = f"lake_{name}"
        self.backend.files(raw, paths, column_types(name), self.lake)
        if name in ROLLUPS:
            body = ROLLUPS[name].format(raw=raw)
        elif forgetting and "line" in column_types(name):
            body = (f"SELECT * FROM {raw} r WHERE NOT EXISTS (SELECT 1 FROM lake_forgotten f "
                    f"WHERE f.source_id = r.source_id AND f.line = r.line)")
        else:
            body = f"SELECT * FROM {raw}"
        self.backend.view(name, body)

    def _copy_in(self, conn: Connection, name: str) -> None:
        table = metadata.tables[name]
        rows = conn.execute(select(table)).all()
        types = table_types(name)
        self.backend.frame_table(name, pd.DataFrame.from_records(rows, columns=list(types)), types)

    def close(self) -> None:
        self.backend.close()


class DuckDBBackend:
    """An in-process DuckDB over pyarrow datasets of the lake's files (local or object store)."""

    def __init__(self):
        import duckdb

        self.con = duckdb.connect()
        # What DuckDB spills when a query outgrows its memory goes to a directory of its own,
        # not to `.tmp` in the working directory (DuckDB's default).
        self.spill = tempfile.mkdtemp(prefix="recaudit-duckdb-")
        self.con.execute(f"SET temp_directory = '{self.spill}'")
        limit = os.environ.get(DUCKDB_MEMORY_ENV, "").strip()
        if limit:
            if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", limit, re.IGNORECASE):
                self.close()
                raise ValueError(f"${DUCKDB_MEMORY_ENV} is {limit!r}: give an amount such as 6GB or 512MB")
            self.con.execute(f"SET memory_limit = '{limit}'")  # matched above: no quote can be in it

    def files(self, name: str, paths: list[str], types: dict[str, str], lake: Lake) -> None:
        import pyarrow.dataset as ds

        schema = arrow_schema(types)
        self._register(name, ds.dataset(paths, schema=schema, format="parquet", filesystem=lake.fs) if paths
                       else schema.empty_table())

    def frame_table(self, name: str, df: pd.DataFrame, types: dict[str, str]) -> None:
        import pyarrow as pa

        self._register(name, pa.Table.from_pandas(df, schema=arrow_schema(types), preserve_index=False))

    def _register(self, name: str, data) -> None:
        self.con.execute(f"DROP VIEW IF EXISTS {name}")
        self.con.register(name, data)

    def view(self, name: str, body: str) -> None:
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")

    def run(self, sql: str) -> pd.DataFrame:
        return self.con.execute(sql).df()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill, ignore_errors=True)


_SPARK = None
_SPARK_LOCK = threading.Lock()
_SPARK_TYPES = {"TIMESTAMP": "TIMESTAMP_NTZ", "VARCHAR": "STRING"}


def spark_session():
    """This process's one Spark session (starting it takes seconds): $RECAUDIT_SPARK_MASTER, else
    local[*]; the driver's memory $RECAUDIT_SPARK_DRIVER_MEMORY, else 4g; times in UTC; double
    quotes quote identifiers, as in PostgreSQL."""
    global _SPARK
    with _SPARK_LOCK:
        if _SPARK is None:
            from pyspark.sql import SparkSession

            _SPARK = (SparkSession.builder.master(os.environ.get(SPARK_MASTER_ENV) or "local[*]")
                      .appName("recaudit")
                      .config("spark.sql.session.timeZone", "UTC")
                      .config("spark.sql.ansi.enabled", "true")
                      .config("spark.sql.ansi.doubleQuotedIdentifiers", "true")
                      .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                      .config("spark.sql.shuffle.partitions", os.environ.get("RECAUDIT_SPARK_PARTITIONS", "8"))
                      # the driver collects the aggregates (and validation's rows): local mode's 1 GB is too little
                      .config("spark.driver.memory", os.environ.get("RECAUDIT_SPARK_DRIVER_MEMORY", "4g"))
                      .config("spark.ui.enabled", "false")
                      .config("spark.ui.showConsoleProgress", "false")
                      .getOrCreate())
            _SPARK.sparkContext.setLogLevel("ERROR")
        return _SPARK


def _spark_schema(types: dict[str, str]) -> str:
    return ", ".join(f"`{name}` {_SPARK_TYPES.get(t, t)}" for name, t in types.items())


class SparkBackend:
    """Spark SQL over the lake's files; the session is shared by every store of the process."""

    def __init__(self):
        # A session of its own on the shared context: temporary views belong to a session, and
        # each reader keeps its own (two stores of one process must not replace each other's).
        self.spark = spark_session().newSession()

    def files(self, name: str, paths: list[str], types: dict[str, str], lake: Lake) -> None:
        schema = _spark_schema(types)
        reader = self.spark.read.schema(schema)
        data = reader.parquet(*paths) if paths else self.spark.createDataFrame([], schema)
        data.createOrReplaceTempView(name)

    def frame_table(self, name: str, df: pd.DataFrame, types: dict[str, str]) -> None:
        import pyarrow as pa

        data = pa.Table.from_pandas(df, schema=arrow_schema(types), preserve_index=False)
        schema = _spark_schema(types)
        frame = self.spark.createDataFrame(data.to_pandas(), schema) if len(df) else \
            self.spark.createDataFrame([], schema)
        frame.createOrReplaceTempView(name)

    def view(self, name: str, body: str) -> None:
        self.spark.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS {body}")

    def run(self, sql: str) -> pd.DataFrame:
        return self.spark.sql(sql).toPandas()

    def close(self) -> None:
        pass  # the session outlives a store: starting one takes seconds


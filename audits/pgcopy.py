"""PostgreSQL's binary COPY, both ways: the store's fast path for bulk loads and fixed-width reads.

A frame whose columns are all non-null integers or times is encoded (and decoded) with numpy in
one buffer; anything else is written row by row through psycopg's typed COPY. Also here: how a
frame's column becomes the Python values a driver takes, which SQLite's executemany shares.
"""

from __future__ import annotations

import struct
from datetime import timedelta

import numpy as np
import pandas as pd
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from recaudit.audits.schema import EPOCH, UTCTime, sql_type

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_PG_FIXED = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "timestamp": ">i8"}
_PG_OIDS = {21: ">i2", 23: ">i4", 20: ">i8", 1114: "timestamp"}  # int2, int4, int8, timestamp

# COPY takes no parameters, so a select is compiled with its values inline. The "named"
# paramstyle keeps a literal's "%" single: psycopg's own (pyformat) doubles it for a driver that
# would then undouble it, which COPY never does.
_LITERAL_DIALECT = postgresql.psycopg.dialect(paramstyle="named")


def literal_sql(statement) -> str:
    """A Core select as PostgreSQL text with its values inline, for COPY."""
    return str(statement.compile(dialect=_LITERAL_DIALECT, compile_kwargs={"literal_binds": True}))


def python_values(series: pd.Series, type_) -> list:
    """A column as Python values for a driver: ints, strings or None; times in the storage form
    of the dialect (SQLite: microseconds; PostgreSQL: datetime)."""
    if isinstance(type_, UTCTime):
        times = series.to_numpy(dtype="datetime64[ns]")
        micros = (times.astype(np.int64) // 1000).tolist()
        return [None if missing else v for v, missing in zip(micros, np.isnat(times))]
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
            for v in series.astype(object).tolist()]


_PG_KINDS = {"TIMESTAMP": "timestamp", "SMALLINT": "int2", "BIGINT": "int8", "INTEGER": "int4", "DOUBLE": "float8",
             "VARCHAR": "text"}


def pg_kind(type_) -> str:
    """The PostgreSQL type a column's values are sent as."""
    return _PG_KINDS[sql_type(type_)]


def copy_in(conn: Connection, table: str, df: pd.DataFrame, types: list) -> None:
    """COPY a frame in binary: encoded with numpy when every column is a non-null integer or
    time, else row by row through psycopg."""
    kinds = [pg_kind(t) for t in types]
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
                values = python_values(df[c], t)
                if k == "timestamp":
                    values = [None if v is None else EPOCH + timedelta(microseconds=v) for v in values]
                columns.append(values)
            for row in zip(*columns):
                copy.write_row(row)


def copy_out(conn: Connection, query: str) -> pd.DataFrame:
    """Run a query (text with its values inline) whose columns are non-null integers or times
    through binary COPY out."""
    raw = conn.connection.driver_connection
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

"""Predictions of any model: what a team's recommender predicted a user would rate a movie, and when.

A predictions file holds the columns time, user_id, movie_id and prediction, and optionally
model, as CSV (a header row naming them, in any order), JSON Lines (one object per line with
those keys) or Parquet. Values are read strictly: the time as the event log writes it, user_id
a non-negative integer, movie_id a slug, prediction a finite number, model non-empty text
(rows without a model column belong to the model the caller names). A row that cannot be used
becomes a reject (source, line, raw text, reason); so does a second row for the same model,
user, movie and time. A file that is not what it claims raises `InputError`.

Line numbers are the file's own (the CSV header is line 1); for Parquet a row's number is its
position + 1 and its raw text its values as JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pandas as pd

from recaudit.recsys import events
from recaudit.recsys.formats import InputError, RowError, frame

COLUMNS = ("time", "user_id", "movie_id", "prediction")
MODEL = "model"
DEFAULT_MODEL = "production"
PARQUET_MAGIC = b"PAR1"
MAX_MODEL_NAME = 200
# A predicted rating is a small number; one far beyond any scale would overflow the squared
# errors the audit sums (1e308² is infinite) and blank every figure.
MAX_PREDICTION = 1e9
SCHEMA = {"line": "int64", "time": "datetime64[ns]", "user_id": "int64", "movie_id": "object",
          "prediction": "float64", "model": "object"}
_SLUG_BAD = re.compile(events._SLUG_BAD, re.ASCII)  # a movie id as the log's parser takes one
_MAX_USER = 10 ** 18  # the log's user ids have at most 18 digits (events.USER_RE)
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def is_header(names: list[str]) -> bool:
    """Whether a CSV header (or Parquet's column names) are those of a predictions file:
    the four columns and perhaps model, in any order, each once."""
    return len(set(names)) == len(names) and set(names) in (set(COLUMNS), {*COLUMNS, MODEL})


def format_of(head: bytes) -> str | None:
    """``parquet``, ``jsonl`` or ``csv`` when the first bytes of a file are those of a
    predictions file in that format, else None. Its first non-blank line tells: a CSV header of
    the columns, or a JSON object whose keys are the columns (an event with a "prediction" key
    of its own is still an event)."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    first = next((line for line in head.removeprefix(b"\xef\xbb\xbf").split(b"\n") if line.strip()), b"")
    if b"\0" in first:  # binary, or UTF-16 (which detect names as such)
        return None
    first = first.decode("utf-8", "replace").strip()
    if first.startswith("{"):
        try:
            value = events.json_object(first)
        except ValueError:
            return None
        return "jsonl" if is_header(list(value)) else None
    return "csv" if is_header(_csv_header(first)) else None


def model_name_problem(name) -> str | None:
    """Why a text cannot name a model (None when it can): models are named in findings,
    pages and settings, so a name is printable text of at most MAX_MODEL_NAME characters
    without surrounding spaces."""
    if not isinstance(name, str):
        return "model not text"
    if not name.strip():
        return "model empty"
    if name != name.strip():
        return "model has leading or trailing spaces"
    if len(name) > MAX_MODEL_NAME:
        return f"model longer than {MAX_MODEL_NAME} characters"
    if not name.isprintable():
        return "model holds a control character"
    return None


def read(path, data: bytes, model: str = DEFAULT_MODEL, first_line: int = 1, header: bytes | None = None,
         kind: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A predictions file, or a piece of one, into (predictions, rejects).

    Parameters
    ----------
    path : str or pathlib.Path
        The file, as the rejects and errors name it.
    data : bytes
        Its content, or the lines of it from `first_line` on (a file that grew since it was
        read: a CSV piece then comes without the header, which `header` gives).
    model : str
        The model of rows without a model column.
    first_line : int
        The number of the first line of `data`.
    header : bytes, optional
        The header line of a CSV piece that does not start the file.
    kind : {"csv", "jsonl", "parquet"}, optional
        The file's format (`format_of` its first bytes); by default that of `data`.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        Predictions (line, time, user_id, movie_id, prediction, model, with the dtypes of
        SCHEMA) and rejects (source, line, raw, reason).

    Raises
    ------
    InputError
        When the content is not a predictions file: a CSV header or Parquet columns other
        than those of one, a Parquet file that cannot be read, a CSV that is not UTF-8.
    """
    kind = kind or format_of(data[:4096])
    if kind is None:
        raise InputError(path, f"not a predictions file: expected a header (or JSON keys, or Parquet columns) "
                               f"{','.join(COLUMNS)}[,{MODEL}]", line=first_line)
    if kind == "parquet":
        rows = _parquet_rows(path, data)
    else:
        rows = _csv_rows(path, data, first_line, header) if kind == "csv" else _json_rows(data, first_line)
    return _checked(path, rows, model, text=kind == "csv")


def _csv_header(line: str) -> list[str]:
    return [c.strip().lower() for c in next(csv.reader([line]), [])]


def _lines(data: bytes, first_line: int):
    """(number, text or None when not UTF-8, raw text) of each non-blank line."""
    for number, raw in enumerate(data.split(b"\n"), first_line):
        raw = raw.removesuffix(b"\r")
        if not raw.strip(events.BLANK.encode()):
            continue
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError:
            yield number, None, raw.decode("utf-8", "backslashreplace")


def _csv_rows(path, data: bytes, first_line: int, header: bytes | None):
    """(line, raw, values or the reason it has none) of each CSV row."""
    lines = _lines(data, first_line)
    if header is None:
        first = next(lines, None)
        if first is None or first[1] is None:
            raise InputError(path, "not UTF-8", line=first_line)
        header = first[1].encode()
    names = _csv_header(header.decode("utf-8-sig").strip())
    for number, text, undecodable in lines:
        if text is None:
            yield number, undecodable, "not UTF-8"
            continue
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            yield number, text, f"not a CSV row ({exc})"
            continue
        if len(fields) != len(names):
            yield number, text, f"expected {len(names)} fields, got {len(fields)}"
        else:
            yield number, text, {n: f.strip() for n, f in zip(names, fields)}


def _json_rows(data: bytes, first_line: int):
    for number, text, undecodable in _lines(data, first_line):
        if text is None:
            yield number, undecodable, "not UTF-8"
            continue
        try:
            value = events.json_object(text)
        except ValueError as exc:  # the event log's strict reading, with its reasons
            yield number, text, str(exc)
            continue
        unknown = [k for k in value if k not in (*COLUMNS, MODEL)]
        missing = [k for k in COLUMNS if k not in value]
        if unknown or missing:
            yield number, text, (f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}")
        else:
            yield number, text, value


def _parquet_rows(path, data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"cannot be read as Parquet ({str(exc).splitlines()[0]})") from None
    names = [n.lower() for n in table.column_names]
    if not is_header(names):
        raise InputError(path, f"expected the Parquet columns {','.join(COLUMNS)}[,{MODEL}] (it has "
                               f"{','.join(table.column_names)})")
    columns = {}
    for name, column in zip(names, table.columns):
        if pa.types.is_timestamp(column.type):
            # Arrow keeps instants as integers in UTC whatever the zone; read in nanoseconds, so
            # that a time datetime64[ns] cannot hold is a reject, not an overflow.
            scale = {"s": 10 ** 9, "ms": 10 ** 6, "us": 10 ** 3, "ns": 1}[column.type.unit]
            columns[name] = [None if v is None else _Instant(v * scale) for v in column.cast(pa.int64()).to_pylist()]
        else:
            columns[name] = column.to_pylist()
    for i in range(table.num_rows):
        values = {n: columns[n][i] for n in names}
        yield i + 1, json.dumps({n: _shown(v) for n, v in values.items()}, default=str), values


class _Instant(int):
    """A Parquet timestamp in nanoseconds since the epoch (a plain integer is no time)."""


def _shown(value) -> object:
    """A Parquet value for a reject's raw text: a time as ISO-8601, as the event log writes it."""
    if isinstance(value, _Instant):
        try:
            return pd.Timestamp(int(value)).isoformat()
        except (OverflowError, ValueError):
            return f"{int(value)} ns"
    return value


def _checked(path, rows, model: str, text: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    good, bad, seen = [], [], {}
    source = str(path)
    for line, raw, values in rows:
        try:
            if isinstance(values, str):
                raise RowError(values)
            row = (line, *_row(values, model, text))
            key = (row[5], row[2], row[3], row[1])
            if key in seen:
                raise RowError(f"duplicate of line {seen[key]} (same model, user, movie and time)")
        except RowError as exc:
            bad.append((source, line, raw, str(exc)))
            continue
        seen[key] = line
        good.append(row)
    df = pd.DataFrame(good, columns=list(SCHEMA))
    df["time"] = np.array(df["time"].tolist(), dtype=np.int64).view("datetime64[ns]")
    return df.astype(SCHEMA), frame("rejects", bad)


def _row(values: dict, model: str, text: bool) -> tuple:
    """(time ns, user_id, movie_id, prediction, model) of one row's values: a CSV's text
    (`text`), or typed values, JSON's or Parquet's (where a number written as text is no number,
    and Parquet's times are nanoseconds)."""
    return (_time(values["time"]), _user(values["user_id"], text), _movie(values["movie_id"]),
            _prediction(values["prediction"], text), _model(values.get(MODEL, model)))


def _time(value) -> int:
    if isinstance(value, _Instant):
        if not -2 ** 63 < value < 2 ** 63:
            raise RowError("bad timestamp (beyond the years 1677-2262)")
        return int(value)
    ns = events.parse_time(value) if isinstance(value, str) else None
    if ns is None:
        raise RowError("bad timestamp")
    return ns


def _user(value, text: bool) -> int:
    if text and events.USER_RE.match(value):
        return int(value)
    if not text and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_USER:
        return value
    raise RowError("user_id not a non-negative integer")


def _movie(value) -> str:
    if not isinstance(value, str) or not value or _SLUG_BAD.search(value) or not value.isprintable():
        raise RowError("movie_id not a movie id (a slug such as heat+1995, without spaces, commas or /)")
    return value


def _prediction(value, text: bool) -> float:
    if text:  # a decimal number: not "nan", "inf", "0x1p3" or "1_000"
        number = float(value) if _DECIMAL.fullmatch(value) else None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = None
    else:
        number = None
    if number is None or not math.isfinite(number):
        raise RowError("prediction not a finite number")
    if abs(number) > MAX_PREDICTION:
        raise RowError(f"prediction beyond {MAX_PREDICTION:g} in magnitude")
    return number


def _model(value) -> str:
    problem = model_name_problem(value)
    if problem:
        raise RowError(problem)
    return value

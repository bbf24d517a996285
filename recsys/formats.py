"""The stream world's files besides the log (users.csv, movies.csv), and the error that tells a
user which file and line are wrong.

Frames follow `SCHEMAS`. A row that cannot be read becomes a reject (source, line, raw text,
reason), never a silent drop; a file that cannot be read at all raises `InputError`.
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from pathlib import Path

import pandas as pd

USERS_HEADER = ["user_id", "age", "gender", "occupation"]
MOVIES_HEADER = ["movie_id", "title", "year", "genres"]
# Columns after the header's typed ones are attributes, kept as text (a users.csv's `region`, a
# movies.csv's `language`). An attribute is named like a Python identifier in lower case, and never
# like a typed column (nor `age_group` or `sex`, the names the audits give users' groups), so that
# a users frame holds each under its own name and a dimension names one thing.
ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)
TYPED = {"users": (*USERS_HEADER, "age_group", "sex"), "movies": tuple(MOVIES_HEADER)}
# Names the audits give their own columns beside users' groups (a rating, its prediction, a
# request's success), their built-in groupings of movies, and the store's own columns of those
# tables: an attribute so named could never be a dimension or a grouping, or would overwrite a
# column, so it is refused when the file is read.
MOVIE_GROUPINGS = ("genre", "popularity", "decade")
RESERVED = {"users": ("user_id", "movie_id", "time", "rating", "prediction", "cold_start", "hit", "ndcg", "success",
                      "source_id"),
            "movies": (*MOVIE_GROUPINGS, "movie_key", "source_id")}

SCHEMAS = {
    # age_group is set only where the source fixes the group itself (MovieLens-1M "under 18");
    # otherwise the audits bin `age` with their configured bins.
    "users": {"user_id": "int64", "age": "Int64", "age_group": "object", "gender": "object",
              "occupation": "object"},
    "movies": {"movie_id": "object", "title": "object", "year": "Int64", "genres": "object"},
    "rejects": {"source": "object", "line": "int64", "raw": "object", "reason": "object"},
}


# What reading a file can raise that is the file's fault: a disk error, a truncated `.gz`
# (EOFError), a `.gz` with damaged deflate data (zlib.error), a non-gzip `.gz` (an OSError).
READ_ERRORS = (OSError, EOFError, zlib.error)


class InputError(Exception):
    """Input a user must fix: names the file, the line when there is one, and what is wrong."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None):
        self.path, self.reason, self.line = str(path), reason, line
        super().__init__(str(self))

    @classmethod
    def from_os(cls, exc: OSError, path: str | Path) -> InputError:
        """The error for an OSError on a user's path, worded as the OS words it ("permission
        denied", "too many levels of symbolic links"). It names the path the OS failed on, which
        may lie inside or above `path`, and `path` when the OS names none."""
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError):  # from mkdir(exist_ok=True): the path is there, as a file
            reason = "exists and is not a directory"
        return cls(path if exc.filename is None else exc.filename, reason[:1].lower() + reason[1:])

    @classmethod
    def unreadable(cls, path: str | Path, exc: Exception) -> InputError:
        """A file that broke while it was read: a truncated or non-gzip `.gz`, a disk error."""
        return cls(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})")

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}"


def frame(name: str, rows: list[tuple] | None = None, attributes: list[str] | tuple = ()) -> pd.DataFrame:
    """An empty or filled frame of one of the SCHEMAS; users and movies may carry `attributes`
    after the typed columns, as text (None where not given)."""
    schema = SCHEMAS[name]
    df = pd.DataFrame(rows or [], columns=[*schema, *attributes])
    return df.astype({**schema, **dict.fromkeys(attributes, object)})


def attribute_name_problem(name: str, kind: str) -> str | None:
    """Why `name` cannot name an attribute of `kind` (users or movies), or None when it can."""
    if not ATTRIBUTE_NAME.fullmatch(name):
        return "an attribute's name is lower-case letters, digits and _, starting with a letter"
    if name in TYPED[kind]:
        return f"{name!r} is a typed column of {kind} ({', '.join(TYPED[kind])}), not an attribute"
    if name in RESERVED[kind]:
        return f"{name!r} is a name the audits give one of their own columns or groupings ({', '.join(RESERVED[kind])})"
    return None


class RowError(ValueError):
    """A row that cannot be used; the message is the reason."""


def _int(text: str, what: str, lo: int | None = None) -> int:
    text = text.strip()
    if not (text.isascii() and (text.isdigit() or (text.startswith("-") and text[1:].isdigit()))):
        raise RowError(f"{what} not an integer" if lo is None else f"{what} not a non-negative integer")
    if lo is not None and int(text) < lo:
        raise RowError(f"{what} not a non-negative integer")
    return int(text)


def _read_csv(path: Path, header: list[str], kind: str,
              data: bytes | None = None) -> tuple[list[str], list[tuple[int, str, list[str]]]]:
    """The attribute names of a CSV file (or of its `data`, already read), the columns after the
    typed `header`, and its rows with their line numbers and raw text."""
    try:
        text = (path.read_bytes() if data is None else data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(path, exc.strerror or "cannot be read") from None
    lines = text.splitlines()
    reader = csv.reader(io.StringIO(text))
    first = next(reader, None)
    names = [c.strip().lower() for c in first or []]
    if names[:len(header)] != header:
        raise InputError(path, f"expected the header {','.join(header)}, then any attribute columns", line=1)
    attributes = names[len(header):]
    for i, name in enumerate(attributes):
        problem = attribute_name_problem(name, kind)
        if name in attributes[:i]:
            problem = "named twice"
        if problem:
            raise InputError(path, f"column {len(header) + i + 1} ({first[len(header) + i].strip()!r}): {problem}",
                             line=1)
    rows = []
    start = reader.line_num
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as exc:  # a field beyond csv's limit (128 KiB): the row is a reject, the rest is read
            fields = RowError(f"not a CSV row ({exc})")
        if fields is None:
            break
        end = reader.line_num
        raw = "\n".join(lines[start:end])
        if raw.strip():
            rows.append((start + 1, raw, fields))
        start = end
    return attributes, rows


def _read_table(path: str | Path, name: str, header: list[str], parse,
                data: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A CSV file into (rows of SCHEMAS[name] and its attribute columns, rejects); `parse` turns
    the typed fields into a row or raises RowError. The first field is a key: a repeated key is a
    reject. An attribute's value is its text, stripped; an empty one is not given (None)."""
    good, bad, seen = [], [], {}
    source = str(path)
    attributes, rows = _read_csv(Path(path), header, name, data)
    width = len(header) + len(attributes)
    for line, raw, fields in rows:
        try:
            if isinstance(fields, RowError):
                raise fields
            if len(fields) != width:
                raise RowError(f"expected {width} fields, got {len(fields)}")
            row = parse(fields[:len(header)]) + tuple(v.strip() or None for v in fields[len(header):])
            if row[0] in seen:
                raise RowError(f"duplicate {header[0]} (first at line {seen[row[0]]})")
        except RowError as exc:
            bad.append((source, line, raw, str(exc)))
            continue
        seen[row[0]] = line
        good.append(row)
    return frame(name, good, attributes), frame("rejects", bad)


def _user(f: list[str]) -> tuple:
    age = _int(f[1], "age") if f[1].strip() else None
    return _int(f[0], "user_id", lo=0), age, None, f[2].strip(), f[3].strip()


def _movie(f: list[str]) -> tuple:
    if not f[0].strip():
        raise RowError("movie_id empty")
    year = _int(f[2], "year") if f[2].strip() else None
    return f[0].strip(), f[1].strip(), year, f[3].strip()


def read_users_csv(path: str | Path, data: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """users.csv (user_id,age,gender,occupation, then any attribute columns) into (users,
    rejects); `data` is its content when the caller has read it already. The users frame has
    the typed columns of SCHEMAS, then one text column per attribute."""
    return _read_table(path, "users", USERS_HEADER, _user, data)


def read_movies_csv(path: str | Path, data: bytes | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """movies.csv (movie_id,title,year,genres, then any attribute columns) into (movies,
    rejects); `data` as for users."""
    return _read_table(path, "movies", MOVIES_HEADER, _movie, data)


def attribute_columns(df: pd.DataFrame, kind: str) -> list[str]:
    """The attribute columns of a users or movies frame: those after its typed ones."""
    return [c for c in df.columns if c not in SCHEMAS[kind]]


def write_users_csv(users: pd.DataFrame, path: str | Path) -> None:
    users[USERS_HEADER + attribute_columns(users, "users")].to_csv(path, index=False, lineterminator="\n")


def write_movies_csv(movies: pd.DataFrame, path: str | Path) -> None:
    movies[MOVIES_HEADER + attribute_columns(movies, "movies")].to_csv(path, index=False, lineterminator="\n")

"""The streaming service's event log: parse its three line kinds into typed frames, and write them.

Two paths give the same answer. A vectorised byte-level path (numpy) takes every line in the
canonical form: printable ASCII, each field where the format puts it. Every other line goes to
`parse_line`, a per-line regular-expression parser that is the definition of the format and
names the reason for each reject. A property test holds the fast path to `parse_line`.

The log has a second form, JSON Lines (one object per line), told apart line by line by its
first character: `parse_json_line` defines it, with the text form's field rules and reasons.

Times are UTC and come back as naive ``datetime64[ns]``; the log's ISO-8601 timestamps carry
no zone (a trailing ``Z`` is accepted). Nothing is dropped: every non-blank line ends in exactly
one of the frames (a recommendation's items go to ``items``, keyed by its line).
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pandas as pd

WATCH_PREFIX = b"GET /data/m/"
RATE_PREFIX = b"GET /rate/"
REC_PREFIX = b"recommendation request "
STATUS_OK = 200
MIN_YEAR, MAX_YEAR = 1678, 2261  # the span of datetime64[ns]
CHUNK_BYTES = 16 << 20
BLANK = " \t\r\x0b\x0c"  # a line of only these is blank: not counted, not stored

_I, _T, _C, _O = "int64", "datetime64[ns]", "category", "object"
SCHEMAS = {
    "watches": {"line": _I, "time": _T, "user_id": _I, "movie_id": _C, "minute": _I},
    "ratings": {"line": _I, "time": _T, "user_id": _I, "movie_id": _C, "rating": _I},
    "recommendations": {"line": _I, "time": _T, "user_id": _I, "server": _C, "status": _I,
                        "latency_ms": _I, "n_items": _I, "error": _O},
    "items": {"line": _I, "rank": _I, "movie_id": _C},
    "rejects": {"source": _O, "line": _I, "raw": _O, "reason": _O},
}


@dataclass
class ParsedEvents:
    """Typed frames of one piece of a log, with the rejects that explain every other line."""

    watches: pd.DataFrame
    ratings: pd.DataFrame
    recommendations: pd.DataFrame
    items: pd.DataFrame
    rejects: pd.DataFrame
    lines: int = 0  # non-blank lines read
    span: int = 0  # physical lines covered, blank ones included
    text: Callable[[np.ndarray], list[str]] | None = field(default=None, repr=False, compare=False)

    def raw(self, lines) -> list[str]:
        """The text of lines of this piece (for quarantining rows found wrong after parsing)."""
        if self.text is None:
            raise ValueError("the raw lines of a concatenated parse are not kept")
        return self.text(np.asarray(lines, dtype=np.int64))

    @property
    def counts(self) -> dict[str, int]:
        return {
            "watch": len(self.watches),
            "rate": len(self.ratings),
            "recommend": len(self.recommendations),
            "quarantined": len(self.rejects),
        }

    @classmethod
    def concat(cls, parts: list["ParsedEvents"]) -> "ParsedEvents":
        """One piece from several, rows in line order (pieces may interleave)."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(_concat_frames(name, [getattr(p, name) for p in parts]) for name in SCHEMAS),
                   lines=sum(p.lines for p in parts), span=sum(p.span for p in parts))


def _concat_frames(name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if len(frames) < 2:
        return frames[0] if frames else frame(name)
    out = pd.concat(frames, ignore_index=True)
    if not out["line"].is_monotonic_increasing:  # pieces interleave (the fast and reference paths)
        out = out.sort_values(["line", "rank"] if name == "items" else "line", ignore_index=True, kind="stable")
    return out.astype({c: t for c, t in SCHEMAS[name].items() if t == _C})


def frame(name: str, **values) -> pd.DataFrame:
    """A frame of one of the SCHEMAS; columns not given are empty."""
    schema = SCHEMAS[name]
    df = pd.DataFrame({c: values.get(c, []) for c in schema}, copy=False)
    wrong = {c: t for c, t in schema.items() if str(getattr(values.get(c), "dtype", None)) != t}
    return df.astype(wrong) if wrong else df


# ---------------------------------------------------------------------------------------------
# The reference parser: one line at a time, with reasons.

_TS = r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z?"
# ASCII only: \d would also take fullwidth or Arabic-Indic digits, which the format does not allow.
TS_RE = re.compile(_TS + r"\Z", re.ASCII)
USER_RE = re.compile(r"\d{1,18}\Z", re.ASCII)
WATCH_RE = re.compile(r"GET /data/m/([^/,\s]+)/(\d{1,9})\.mpg\Z", re.ASCII)
RATE_RE = re.compile(r"GET /rate/([^/,\s]+)=(.*)\Z", re.ASCII)
RATING_RE = re.compile(r"[1-5]\Z", re.ASCII)
REC_RE = re.compile(r"recommendation request ([^,\s]+), status (\d{1,3}), result: (.*), (\d{1,9}) ms\Z",
                    re.S | re.ASCII)
_SLUG_BAD = r"[/,\s]"  # a movie id holds none of these (the [^/,\s]+ above)
_SERVER_BAD = r"[,\s]"
# A byte order mark opening a line is ignored: Windows tools write one at the start of a file.
BOM = "\ufeff"
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


def parse_time(text: str) -> int | None:
    """Nanoseconds since the epoch for a log timestamp, or None when it is not one."""
    m = TS_RE.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not MIN_YEAR <= year <= MAX_YEAR:
        return None
    try:
        t = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    frac = m.group(7) or ""
    seconds = (t.toordinal() - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


def parse_line(text: str) -> tuple[str, tuple]:
    """Parse one line (without its newline) into ``(kind, fields)``.

    ``kind`` is ``watch`` (time_ns, user, movie, minute), ``rate`` (time_ns, user, movie,
    rating), ``recommend`` (time_ns, user, server, status, latency, items, error), ``blank``
    or ``reject`` (reason,).
    """
    if not text.strip(BLANK):
        return "blank", ()
    text = text.removeprefix(BOM)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "reject", ("control character in line",)
    parts = text.split(",", 2)
    if len(parts) < 3:
        return "reject", ("too few fields",)
    ts, user, body = parts
    t = parse_time(ts)
    if t is None:
        return "reject", ("bad timestamp",)
    if not USER_RE.match(user):
        return "reject", ("bad user id",)
    uid = int(user)
    if body.startswith("GET /data/m/"):
        m = WATCH_RE.match(body)
        if not m:
            return "reject", ("malformed watch request",)
        return "watch", (t, uid, m.group(1), int(m.group(2)))
    if body.startswith("GET /rate/"):
        m = RATE_RE.match(body)
        if not m:
            return "reject", ("missing rating",) if "=" not in body else ("malformed rate request",)
        if not RATING_RE.match(m.group(2)):
            return "reject", ("rating not an integer 1-5",)
        return "rate", (t, uid, m.group(1), int(m.group(2)))
    if body.startswith("recommendation request "):
        if "result:" not in body:
            return "reject", ("missing result:",)
        m = REC_RE.match(body)
        if not m:
            return "reject", ("malformed recommendation line",)
        server, status, result, latency = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        if status == STATUS_OK:
            items = result.split(", ") if result else []
            return "recommend", (t, uid, server, status, latency, items, None)
        return "recommend", (t, uid, server, status, latency, [], result)
    return "reject", ("unknown request",)


# ---------------------------------------------------------------------------------------------
# The JSON Lines form: one object per line.
#
#   {"time": "2024-02-27T18:45:18", "user_id": 156972, "event": "watch", "movie_id": "batman+begins+2005", "minute": 91}
#
# A line whose first character (after a byte order mark and spaces) is `{`, `[` or `"` is JSON;
# a text line begins with a digit of its timestamp, so a log may mix the forms line by line.
# The fields obey the text form's rules, so an event stores the same rows in either form, and
# a fault that both forms can have gets the text form's reason. JSON's own types are strict: a
# number in quotes, a fraction or a boolean is not an integer. Keys the format does not name
# (a request id, say) are ignored.

JSON_FIRST = b'{["'
MAX_USER_ID = 10**18 - 1  # USER_RE's 18 digits
MAX_COUNT = 10**9 - 1  # minutes and latencies: WATCH_RE's and REC_RE's 9 digits
MAX_STATUS = 999
_SLUG_BAD_RE = re.compile(_SLUG_BAD, re.ASCII)
_SERVER_BAD_RE = re.compile(_SERVER_BAD, re.ASCII)
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab aside: it is JSON whitespace
_ESCAPED_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # "\ud800" decodes to a lone surrogate: not Unicode text


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json keeps the last value silently: which one the writer meant is unknown
        raise _DuplicateKey()
    return obj


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_SCAN = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_refuse_constant).scan_once
_JSON_SPACE = " \t\r"  # JSON's whitespace within a line


def _json_value(text: str):
    """The JSON value a whole line holds (what json.loads does, minus its wrappers: a line
    is short and there are millions)."""
    start = 0 if text[:1] == "{" else len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = _SCAN(text, start)
    except StopIteration:  # no value where one must start
        raise ValueError("no JSON value") from None
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ValueError("extra data after the JSON value")
    return value


def json_object(text: str) -> dict:
    """The JSON object a line holds (a leading BOM aside), read strictly: a ValueError whose
    message is the reason otherwise, ``malformed JSON`` (a truncated line, NaN, Infinity),
    ``duplicate JSON key``, ``JSON nested too deeply`` or ``not a JSON object``."""
    try:
        obj = _json_value(text.removeprefix(BOM))
    except _DuplicateKey:
        raise ValueError("duplicate JSON key") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:  # JSONDecodeError, NaN and Infinity, integers of over 4,300 digits
        raise ValueError("malformed JSON") from None
    if type(obj) is not dict:
        raise ValueError("not a JSON object")
    return obj


def is_json_line(text: str) -> bool:
    """Whether a line is in the JSON Lines form (by its first character)."""
    return text.removeprefix(BOM).lstrip(" \t")[:1] in ("{", "[", '"')


def _is_slug(value) -> bool:
    return type(value) is str and value != "" and not _SLUG_BAD_RE.search(value)


def _is_count(value, top: int) -> bool:
    return type(value) is int and 0 <= value <= top  # type(), not isinstance(): True is an int


def _escaped_fault(obj: dict) -> str | None:
    """What an escape smuggled into the strings of an object, if anything: a lone surrogate
    (no UTF-8 encodes it) or a control character (the text form refuses both)."""
    strings = [v for v in obj.values() if type(v) is str]
    strings += [x for v in obj.values() if type(v) is list for x in v if type(x) is str]
    if any(_SURROGATE.search(x) for x in strings):
        return "not UTF-8"
    if any(_ESCAPED_CONTROL.search(x) for x in strings):
        return "control character in line"
    return None


def _decode_json(text: str) -> tuple[str, str | None, tuple]:
    """``(kind, time text, fields)`` of a JSON line, its timestamp left unread (so that a whole
    piece's are read at once); a reject's fields are ``(reason,)``. A time text is returned
    whenever the line has one: a bad timestamp outranks every later reason, as in `parse_line`."""
    if _RAW_CONTROL.search(text):
        return "reject", None, ("control character in line",)
    try:
        obj = json_object(text)
    except ValueError as exc:
        return "reject", None, (str(exc),)
    if "\\" in text:
        fault = _escaped_fault(obj)
        if fault:
            return "reject", None, (fault,)
    ts = obj.get("time")
    if type(ts) is not str:
        return "reject", None, ("bad timestamp",)
    uid = obj.get("user_id")
    if not _is_count(uid, MAX_USER_ID):
        return "reject", ts, ("bad user id",)
    event = obj.get("event")
    if event == "watch":
        movie, minute = obj.get("movie_id"), obj.get("minute")
        if not (_is_slug(movie) and _is_count(minute, MAX_COUNT)):
            return "reject", ts, ("malformed watch request",)
        return "watch", ts, (uid, movie, minute)
    if event == "rate":
        if "rating" not in obj:
            return "reject", ts, ("missing rating",)
        movie, rating = obj.get("movie_id"), obj["rating"]
        if not _is_slug(movie):
            return "reject", ts, ("malformed rate request",)
        if type(rating) is not int or not 1 <= rating <= 5:
            return "reject", ts, ("rating not an integer 1-5",)
        return "rate", ts, (uid, movie, rating)
    if event == "recommend":
        if "result" not in obj:
            return "reject", ts, ("missing result:",)
        server, status, latency, result = obj.get("server"), obj.get("status"), obj.get("latency_ms"), obj["result"]
        ok = (type(server) is str and server != "" and not _SERVER_BAD_RE.search(server)
              and _is_count(status, MAX_STATUS) and _is_count(latency, MAX_COUNT))
        if ok and status == STATUS_OK and type(result) is list and all(_is_slug(m) for m in result):
            return "recommend", ts, (uid, server, status, latency, result, None)
        if ok and status != STATUS_OK and type(result) is str:
            return "recommend", ts, (uid, server, status, latency, [], result)
        return "reject", ts, ("malformed recommendation line",)
    return "reject", ts, ("unknown request",)


def parse_json_line(text: str) -> tuple[str, tuple]:
    """Parse one JSON line (without its newline) into ``(kind, fields)``, as `parse_line` does
    a text line: the same kinds, fields and, for the same fault, the same reason.

    Its own reasons: ``malformed JSON`` (which a truncated line is), ``duplicate JSON key``,
    ``JSON nested too deeply`` and ``not a JSON object``. A missing or ill-typed field is the
    text form's reason for that field (``bad timestamp``, ``bad user id``, ``missing rating``,
    ``malformed watch request``, ...); a timestamp must be a string.
    """
    kind, ts, fields = _decode_json(text)
    if ts is not None:
        t = parse_time(ts)
        if t is None:
            return "reject", ("bad timestamp",)
        if kind != "reject":
            return kind, (t, *fields)
    return kind, fields


def format_recommendation(time: datetime, user_id: int, server: str, status: int, latency_ms: int,
                          movies: list[str] | None = None, error: str = "") -> str:
    """One recommendation line of the log (without its newline), as the service writes it."""
    result = ", ".join(movies) if status == STATUS_OK else error
    return (f"{time.strftime('%Y-%m-%dT%H:%M:%S.%f')},{user_id},recommendation request {server}, "
            f"status {status}, result: {result}, {latency_ms} ms")


# ---------------------------------------------------------------------------------------------
# Reading: line-aligned chunks of a file, a gzip file or standard input.

def open_log(path: str | Path) -> BinaryIO:
    """A binary stream for a log path: ``-`` is standard input, ``.gz`` is decompressed."""
    if str(path) == "-":
        return sys.stdin.buffer
    if str(path).endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _aligned(stream: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            return
        if not data.endswith(b"\n"):
            data += stream.readline()
        yield data


def iter_chunks(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES, first_line: int = 1) -> Iterator[tuple[bytes, int]]:
    """Yield ``(chunk, first_line_number)`` pieces that end on a line boundary."""
    line = first_line
    for data in _aligned(stream, chunk_bytes):
        yield data, line
        line += data.count(b"\n")


def parse_stream(stream: BinaryIO, source: str, chunk_bytes: int = CHUNK_BYTES,
                 first_line: int = 1) -> Iterator[ParsedEvents]:
    """Parse a stream piece by piece (line numbers continue from `first_line`)."""
    for data in _aligned(stream, chunk_bytes):
        parsed = parse_bytes(data, source, first_line)
        first_line += parsed.span
        yield parsed


def parse_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> ParsedEvents:
    """Parse a whole log into memory (the streaming ingest uses `parse_stream`)."""
    with open_log(path) as stream:
        parts = list(parse_stream(stream, str(path), chunk_bytes))
    return ParsedEvents.concat(parts) if parts else parse_bytes(b"", str(path))


def read_log(path: str | Path) -> ParsedEvents:
    """Read a service's event log into the typed frames the audits work on.

    The parser `recaudit ingest` uses, for a log at hand in a notebook: the frames are the ones
    stored and audited, and every line that is not an event is kept with its reason, so what
    was left out is never silent.

    Parameters
    ----------
    path : str or pathlib.Path
        An event log: ``time,user_id,event`` lines or JSON Lines (one object per line, told
        apart line by line; see `parse_json_line`); ``.gz`` is decompressed, ``-`` is
        standard input.

    Returns
    -------
    ParsedEvents
        ``watches``, ``ratings``, ``recommendations`` and ``items`` (each recommendation's
        movies, keyed by its line), DataFrames with the columns and dtypes of `SCHEMAS`, and
        ``rejects``: each other line with its number, text and the reason.

    Raises
    ------
    OSError
        When the file cannot be opened or read.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import recaudit
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     log = pathlib.Path(tmp) / "events.log"
    ...     _ = log.write_text(
    ...       "2024-01-01T10:00:00,7,GET /data/m/heat+1995/1.mpg\\n"
    ...       "2024-01-01T10:20:00,7,GET /rate/heat+1995=4\\n"
    ...       "2024-01-01T10:21:00,7,recommendation request api1:8082, status 200, result: heat+1995, up+2009, 31 ms\\n"
    ...       "2024-01-01T10:22:00,8,GET /rate/up+2009=9\\n")
    ...     events = recaudit.read_log(log)
    >>> events.ratings[["time", "user_id", "movie_id", "rating"]]
                     time  user_id   movie_id  rating
    0 2024-01-01 10:20:00        7  heat+1995       4
    >>> events.items["movie_id"].tolist()
    ['heat+1995', 'up+2009']
    >>> events.rejects[["line", "reason"]].to_dict("records")
    [{'line': 4, 'reason': 'rating not an integer 1-5'}]
    """
    return parse_file(path)


# ---------------------------------------------------------------------------------------------
# The vectorised path.

_TAIL = 64  # the last bytes of a chunk, copied with zero padding for reads that run past its end
_POW10 = 10 ** np.arange(19, dtype=np.int64)
_DATE_LUT: np.ndarray | None = None


def _date_lut() -> np.ndarray:
    """Days since 1970 for every (year, month, day) of the datetime64[ns] span, indexed by
    ((year - MIN_YEAR) * 12 + month - 1) * 31 + day - 1; impossible dates hold a sentinel."""
    global _DATE_LUT
    if _DATE_LUT is None:
        years = np.arange(MIN_YEAR, MAX_YEAR + 1)
        y, m, d = (a.ravel() for a in np.meshgrid(years, np.arange(1, 13), np.arange(1, 32), indexing="ij"))
        month = (y - 1970) * 12 + (m - 1)
        month_start = np.array(month, dtype="datetime64[M]").astype("datetime64[D]").astype(np.int64)
        next_start = np.array(month + 1, dtype="datetime64[M]").astype("datetime64[D]").astype(np.int64)
        month_days = next_start - month_start
        days = month_start + d - 1
        _DATE_LUT = np.where(d <= month_days, days, np.iinfo(np.int64).min)
    return _DATE_LUT


def _pattern(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)


class _Buffer:
    """A chunk as bytes, read through fixed-width windows and sorted character positions."""

    def __init__(self, data: bytes):
        self.data = data
        self.buf = np.frombuffer(data, dtype=np.uint8)
        # Every position's next 8 bytes as one integer: a window costs one load per 8 bytes.
        # Reads past the end see zero bytes, from a padded copy of the last few bytes.
        self.words = np.ndarray((max(len(data) - 7, 0),), dtype="<u8", buffer=data, strides=(1,))
        self.last_word = len(data) - 8
        self.tail_start = max(len(data) - _TAIL, 0)
        tail = data[self.tail_start:] + bytes(_TAIL)
        self.tail_words = np.ndarray((len(tail) - 7,), dtype="<u8", buffer=tail, strides=(1,))
        # One pass finds every byte outside printable ASCII: the newlines, and the rare others.
        raw = self.buf[: len(data)]
        outside = np.subtract(raw, np.uint8(32))
        special = np.flatnonzero(np.greater(outside, 94, out=outside.view(np.bool_)))
        is_newline = raw[special] == 10
        self.newlines, self.odd = special[is_newline], special[~is_newline]

    def window(self, at: np.ndarray, width: int) -> np.ndarray:
        """The `width` bytes from each position, one row each."""
        out = np.empty((len(at), (width + 7) // 8), dtype=np.uint64)
        for k in range(out.shape[1]):
            out[:, k] = self.word(at + 8 * k)
        return out.view(np.uint8)[:, :width]

    def word(self, at: np.ndarray) -> np.ndarray:
        """The 8 bytes from each position (>= 0), as little-endian integers."""
        if self.last_word < 0:
            return self.tail_words[at - self.tail_start]
        out = self.words[np.clip(at, 0, self.last_word)]
        over = np.flatnonzero(at > self.last_word)
        if len(over):
            out[over] = self.tail_words[at[over] - self.tail_start]
        return out

    def byte(self, at: np.ndarray) -> np.ndarray:
        """The byte at each position (>= 0); zero past the end."""
        return (self.word(at) & _U(0xFF)).astype(np.uint8)

    def starts_with(self, at: np.ndarray, text: bytes) -> np.ndarray:
        """Whether the bytes at each position are `text`, compared 8 bytes at a time."""
        ok = np.ones(len(at), dtype=bool)
        for k in range(0, len(text), 8):
            part = text[k:k + 8]
            mask = np.uint64((1 << (8 * len(part))) - 1)
            ok &= (self.word(at + k) & mask) == np.uint64(int.from_bytes(part, "little"))
        return ok

    def spans(self, a: np.ndarray, b: np.ndarray):
        """The disjoint, ascending spans [a, b) of printable ASCII as an Arrow string array:
        a zero-copy view (span, gap, span, ...) of the chunk, from which Arrow takes the spans."""
        import pyarrow as pa

        n = len(a)
        if n == 0:
            return pa.array([], pa.large_string())
        offsets = np.empty(2 * n, dtype=np.int64)
        offsets[0::2], offsets[1::2] = a, b
        view = pa.Array.from_buffers(pa.large_string(), 2 * n - 1,
                                     [None, pa.py_buffer(offsets), pa.py_buffer(self.data)])
        return view.take(pa.array(np.arange(0, 2 * n, 2)))

    def strings(self, a: np.ndarray, b: np.ndarray) -> pd.Categorical:
        """The spans [a, b) as a categorical."""
        return _categorical(self.spans(a, b))


def _number(w: np.ndarray, max_len: int, trailing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Value and length of the run of digits at the start of each row of a byte window (at
    its end when `trailing`, the window then given reversed)."""
    d = w - np.uint8(48)  # a digit is 0..9; anything else wraps above 9
    is_digit = d <= 9
    length = np.where(is_digit.all(axis=1), w.shape[1], np.argmin(is_digit, axis=1))
    value = np.zeros(len(w), dtype=np.int64)
    for k in range(min(int(length.max(initial=0)), max_len)):
        if trailing:
            value += np.where(k < length, d[:, k] * _POW10[k], 0)
        else:
            value = np.where(k < length, value * 10 + d[:, k], value)
    return value, length


_U = np.uint64


def _nondigit_flags(words: np.ndarray) -> np.ndarray:
    """Per 8-byte word, bit 7 of each byte set where that byte is not an ASCII digit."""
    x = words ^ _U(0x3030303030303030)  # digits become 0..9
    bad = (x & _U(0xF0F0F0F0F0F0F0F0)) | (((x & _U(0x0F0F0F0F0F0F0F0F)) + _U(0x0606060606060606))
                                           & _U(0x1010101010101010))
    return (((bad & _U(0x7F7F7F7F7F7F7F7F)) + _U(0x7F7F7F7F7F7F7F7F)) | bad) & _U(0x8080808080808080)


def _leading_digits(flags: np.ndarray) -> np.ndarray:
    """How many bytes from the first are digits (the lowest flag's byte index, or 8)."""
    lowest = flags & (~flags + _U(1))
    return np.where(flags == 0, 8, (np.frexp(lowest.astype(np.float64))[1] - 8) // 8)


def _trailing_digits(flags: np.ndarray) -> np.ndarray:
    """How many bytes up to the last are digits (from the highest flag's byte index, or 8)."""
    return np.where(flags == 0, 8, 7 - (np.frexp(flags.astype(np.float64))[1] - 8) // 8)


def _swar8(words: np.ndarray) -> np.ndarray:
    """The value of 8 ASCII digits in little-endian words, all at once (zero bytes count as
    leading zeros): three multiply-shift steps pair up digits, then pairs, then quads."""
    x = words & _U(0x0F0F0F0F0F0F0F0F)
    x = (x * _U(2561)) >> _U(8)
    x = ((x & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
    x = ((x & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)
    return x.astype(np.int64)


def _leading_number(b: "_Buffer", at: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run of digits starting at each position: value, length (0 when none; max_len + 1
    when longer than max_len) and the byte after it. One 8-byte word serves most rows; only
    longer runs read further."""
    words = b.word(at)
    length = _leading_digits(_nondigit_flags(words))
    shift = (_U(8) * (_U(8) - length.astype(_U))) % _U(64)  # the digits to the top bytes
    value = np.where(length > 0, _swar8(words << shift), 0)
    after = ((words >> ((_U(8) * length.astype(_U)) % _U(64))) & _U(0xFF)).astype(np.uint8)
    long = np.flatnonzero(length == 8)
    if len(long):
        value[long], length[long] = _number(b.window(at[long], max_len + 1), max_len)
        after[long] = b.byte(at[long] + length[long])
    return value, length, after


def _trailing_number(b: "_Buffer", end: np.ndarray, max_len: int,
                     words: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run of digits ending just before each position: value, length and the byte before
    it. `words`, when given, already holds the 4 bytes before `end` in its top half."""
    width = 8 if words is None else 4
    if words is None:
        words = b.word(np.maximum(end - 8, 0))
    length = _trailing_digits(_nondigit_flags(words))
    shift = (_U(8) * (_U(8) - length.astype(_U))) % _U(64)
    value = np.where(length > 0, _swar8((words >> shift) << shift), 0)  # clear bytes before the digits
    before = ((words >> ((_U(8) * (_U(7) - length.astype(_U))) % _U(64))) & _U(0xFF)).astype(np.uint8)
    long = np.flatnonzero(length >= width)
    if len(long):
        wide = b.window(np.maximum(end[long] - max_len - 1, 0), max_len + 1)[:, ::-1]
        value[long], length[long] = _number(wide, max_len, trailing=True)
        before[long] = b.byte(np.maximum(end[long] - length[long] - 1, 0))
    return value, length, before


def _word(text: bytes, positions: tuple[int, ...]) -> tuple[np.uint64, np.uint64]:
    """Mask and value selecting the bytes of `text` at `positions` in an 8-byte word."""
    mask = sum(0xFF << (8 * i) for i in positions)
    return _U(mask), _U(int.from_bytes(text, "little") & mask)


# "YYYY-MM-" "DDTHH:MM" ":SS": where the separators are, and where the digits are.
_TS_SEPARATORS = (_word(b"0000-00-", (4, 7)), _word(b"00T00:00", (2, 5)), _word(b":0000000", (0,)))
_TS_DIGITS = (_word(b"", (0, 1, 2, 3, 5, 6))[0] & _U(0x8080808080808080),
              _word(b"", (0, 1, 3, 4, 6, 7))[0] & _U(0x8080808080808080),
              _word(b"", (1, 2))[0] & _U(0x8080808080808080))


def _two_digits(w: np.ndarray, i: int) -> np.ndarray:
    """The number written by bytes i and i+1 of each word (digits already checked)."""
    return (((w >> _U(8 * i)) & _U(15)) * _U(10) + ((w >> _U(8 * i + 8)) & _U(15))).astype(np.int64)


def _fast_time(b: _Buffer, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The timestamp at each line start: (ns since epoch, position of the comma after it, ok),
    read as three 8-byte words: "YYYY-MM-" "DDTHH:MM" ":SS"."""
    n = len(s)
    words = [b.word(s + 8 * k) for k in range(3)]
    ok = np.ones(n, dtype=bool)
    for w, (mask, sep), digits in zip(words, _TS_SEPARATORS, _TS_DIGITS):
        ok &= ((w & mask) == sep) & ((_nondigit_flags(w) & digits) == 0)
    w0, w1, w2 = words
    year = _two_digits(w0, 0) * 100 + _two_digits(w0, 2)
    month, day = _two_digits(w0, 5), _two_digits(w1, 0)
    hour, minute, second = _two_digits(w1, 3), _two_digits(w1, 6), _two_digits(w2, 1)
    ok &= (year >= MIN_YEAR) & (year <= MAX_YEAR) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
    lut = _date_lut()
    days = lut[np.where(ok, ((year - MIN_YEAR) * 12 + month - 1) * 31 + day - 1, 0)]
    ok &= (days != lut.min()) & (hour < 24) & (minute < 60) & (second < 60)

    # After the seconds: a comma, "Z,", or a fraction (".123," or ".123Z,").
    b19 = ((w2 >> _U(24)) & _U(0xFF)).astype(np.uint8)
    zulu = b19 == ord("Z")
    q = 19 + zulu.astype(np.int64)
    ok &= np.where(zulu, ((w2 >> _U(32)) & _U(0xFF)) == ord(","), b19 == ord(",")) | (b19 == ord("."))
    frac = np.zeros(n, dtype=np.int64)
    dotted = np.flatnonzero(b19 == ord("."))
    if len(dotted):
        f, nfrac, after = _leading_number(b, s[dotted] + 20, 9)
        frac[dotted] = f * _POW10[9 - np.clip(nfrac, 0, 9)]
        zulu = after == ord("Z")
        q[dotted] = 20 + nfrac + zulu
        ok[dotted] = (nfrac >= 1) & (nfrac <= 9) & np.where(zulu, b.byte(s[dotted] + q[dotted]) == ord(","),
                                                             after == ord(",")) & ok[dotted]
    comma = s + q
    seconds = days * 86400 + (hour * 3600 + minute * 60 + second)
    return seconds * 1_000_000_000 + frac, comma, ok


def _lines_with_odd_bytes(b: "_Buffer", s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Lines holding a byte outside printable ASCII (newlines and a final CR aside): rare, so
    found from their positions rather than by counting every line. `s` may be some of the
    chunk's lines (those of the text form)."""
    pos = b.odd
    line = np.searchsorted(s, pos, side="right") - 1
    inside = (line >= 0) & (pos < e[np.maximum(line, 0)])
    odd = np.zeros(len(s), dtype=bool)
    odd[line[inside]] = True
    return odd


def _times(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype=np.int64).view("datetime64[ns]")


def _line_bounds(b: _Buffer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (newline and any CR excluded) and CR flag of every line."""
    size = len(b.data)
    nl = b.newlines
    ends = nl if (size == 0 or b.data.endswith(b"\n")) else np.append(nl, size)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)[: len(ends)]
    cr = (ends > starts) & (b.buf[np.maximum(ends - 1, 0)] == ord("\r"))
    return starts, ends - cr, cr


def parse_bytes(data: bytes, source: str = "<bytes>", first_line: int = 1) -> ParsedEvents:
    """Parse a line-aligned piece of a log whose first line has number `first_line`."""
    b = _Buffer(data)
    s, e, cr = _line_bounds(b)
    line_no = np.arange(len(s), dtype=np.int64) + first_line
    if len(s) == 0:
        return ParsedEvents(*(frame(name) for name in SCHEMAS))

    blank = e == s
    maybe = np.flatnonzero(~blank & np.isin(b.buf[s], _pattern(BLANK.encode())))
    blank[maybe] = [not data[i:j].strip(BLANK.encode()) for i, j in zip(s[maybe], e[maybe])]
    # The form of each line by its first byte (a JSON line after a byte order mark or spaces
    # takes the text path to `_parse_slow`, which tells it apart too).
    is_json = np.isin(b.buf[s], _pattern(JSON_FIRST))
    parts = []
    text = np.flatnonzero(~blank & ~is_json)
    if len(text):
        parts.append(_parse_text(b, s[text], e[text], line_no[text], source))
    json_rows = np.flatnonzero(is_json)
    if len(json_rows):
        parts.append(_parse_json(data, s[json_rows], e[json_rows], line_no[json_rows], source))
    out = ParsedEvents.concat(parts) if parts else ParsedEvents(*(frame(name) for name in SCHEMAS))
    out.lines, out.span = int((~blank).sum()), len(s)
    out.text = lambda lines: [data[a:z].decode("utf-8", "backslashreplace")
                              for a, z in zip(s[lines - first_line], e[lines - first_line])]
    return out


def _parse_text(b: _Buffer, s: np.ndarray, e: np.ndarray, line_no: np.ndarray, source: str) -> ParsedEvents:
    """The vectorised path over the non-blank text lines of a chunk, from `s` to `e`."""
    # Bytes only the reference parser may judge: control characters, DEL, anything not ASCII.
    odd = _lines_with_odd_bytes(b, s, e)

    # Every fixed part of a line is compared byte for byte below; the variable parts (slugs,
    # server names) are checked once per distinct value in `_strings_or_slow`.
    t, c1, ok = _fast_time(b, s)
    ok &= ~odd & (e - s >= 22)
    user, user_len, after = _leading_number(b, c1 + 1, 18)
    c2 = c1 + 1 + user_len
    ok &= (user_len >= 1) & (user_len <= 18) & (after == ord(",")) & (c2 < e)
    body = c2 + 1
    slow = [np.flatnonzero(~ok)]

    # GET /data/m/<slug>/<minute>.mpg
    tail = b.word(np.maximum(e - 8, 0))  # ends "<minute>.mpg": the minute's end and ".mpg"
    minute, minute_len, before = _trailing_number(b, e - 4, 9, words=tail << _U(32))
    slash = e - 5 - minute_len
    w = ok & ((tail >> _U(32)) == _U(int.from_bytes(b".mpg", "little"))) & b.starts_with(body, WATCH_PREFIX)
    w &= (minute_len >= 1) & (minute_len <= 9) & (before == ord("/")) & (slash > body + len(WATCH_PREFIX))
    rows = np.flatnonzero(w)
    slug, rows = _strings_or_slow(b, body[rows] + len(WATCH_PREFIX), slash[rows], rows, _SLUG_BAD, slow)
    watches = frame("watches", line=line_no[rows], time=_times(t[rows]), user_id=user[rows],
                     movie_id=slug, minute=minute[rows])

    # GET /rate/<slug>=<1-5>
    rest = np.flatnonzero(ok & ~w)  # lines that may still be ratings or recommendations
    rating = b.byte(e[rest] - 1).astype(np.int64) - 48
    is_r = (b.starts_with(body[rest], RATE_PREFIX) & (b.byte(np.maximum(e[rest] - 2, 0)) == ord("="))
            & (rating >= 1) & (rating <= 5))
    is_r &= e[rest] - 2 > body[rest] + len(RATE_PREFIX)
    rows = rest[is_r]
    slug, rows = _strings_or_slow(b, body[rows] + len(RATE_PREFIX), e[rows] - 2, rows, _SLUG_BAD, slow)
    ratings = frame("ratings", line=line_no[rows], time=_times(t[rows]), user_id=user[rows],
                     movie_id=slug, rating=b.byte(e[rows] - 1).astype(np.int64) - 48)

    # recommendation request <server>, status <code>, result: <...>, <latency> ms
    rest = rest[~is_r]
    is_rc = b.starts_with(body[rest], REC_PREFIX) & b.starts_with(e[rest] - 3, b" ms")
    recs, items = _recommendations(b, rest[is_rc], e, body, t, user, line_no, slow)

    out = ParsedEvents(watches, ratings, recs, items, frame("rejects"))
    slow = np.concatenate(slow + [rest[~is_rc]])
    if len(slow):
        slow.sort()
        out = ParsedEvents.concat([out, _parse_slow(b.data, s[slow], e[slow], line_no[slow], source)])
    return out


def _strings_or_slow(b: _Buffer, a, z, rows, bad: str, slow: list) -> tuple[pd.Categorical, np.ndarray]:
    """The spans as strings, except for rows whose value `bad` matches: those go to `slow`."""
    values, keep = _check_values(b.strings(a, z), np.ones(len(rows), dtype=bool), bad)
    if not keep.all():
        slow.append(rows[~keep])
        values, rows = values[keep].remove_unused_categories(), rows[keep]
    return values, rows


def _recommendations(b: _Buffer, rc, e, body, t, user, line_no, slow) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recommendation lines `rc` into the recommendations and items frames; misfits go to `slow`.

    A body splits on ", " into: server, "status N", "result: <first item>", more items and
    "<latency> ms" -- the pieces `parse_line` finds, as it splits lists on ", " too. A failed
    request's error text may hold ", " itself, so it is read back from the line whole.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = pc.split_pattern(b.spans(body[rc] + len(REC_PREFIX), e[rc]), ", ")
    n_parts = _np(pc.list_value_length(parts)).astype(np.int64)
    first = _np(parts.offsets)[:-1] - parts.offsets[0].as_py()  # index of each line's server
    flat = parts.values
    piece = lambda i: flat.take(pa.array(np.where(n_parts >= 4, i, first)))  # noqa: E731
    server, status_text, result0, latency_text = (piece(first), piece(first + 1), piece(first + 2),
                                                  piece(first + n_parts - 1))
    keep = (n_parts >= 4) & _matches(status_text, r"status \d{1,3}") & _matches(latency_text, r"\d{1,9} ms")
    keep &= _np(pc.binary_length(server)) > 0
    keep &= _np(pc.starts_with(result0, "result: "))
    status = _integers(pc.utf8_slice_codeunits(status_text, len("status ")), keep)
    latency = _integers(pc.utf8_slice_codeunits(latency_text, 0, -len(" ms")), keep)
    # A successful request with an empty result has no items; the reference parser says so.
    keep &= ~((status == STATUS_OK) & (n_parts == 4) & _np(pc.equal(result0, "result: ")))
    server, keep = _check_values(_categorical(server), keep, _SERVER_BAD)
    slow.append(rc[~keep])

    k = np.flatnonzero(keep)
    ok = status[k] == STATUS_OK
    n_items = np.where(ok, n_parts[k] - 3, 0)
    errors = np.full(len(k), None, dtype=object)
    if not ok.all():  # from after "result: " to the comma before the latency
        f = k[~ok]
        length = lambda arr: _np(pc.binary_length(arr.take(pa.array(f))))  # noqa: E731
        r0 = body[rc[f]] + len(REC_PREFIX) + length(flat.take(pa.array(first))) + length(status_text) + len(
            ", , result: ")
        errors[~ok] = np.asarray(b.strings(r0, e[rc[f]] - len(", ") - length(latency_text))).astype(object)
    # Items: pieces first+2 .. first+n_parts-2 of each successful line; the first loses "result: ".
    starts = np.cumsum(n_items) - n_items
    within = np.arange(int(n_items.sum())) - np.repeat(starts, n_items)
    pieces = flat.take(pa.array(np.repeat(first[k] + 2, n_items) + within))
    heads = starts[n_items > 0]
    is_first = np.zeros(len(within), dtype=bool)
    is_first[heads] = True
    movie = pc.replace_with_mask(pieces, pa.array(is_first),
                                 pc.utf8_slice_codeunits(pieces.take(pa.array(heads)), len("result: ")))
    rows = rc[k]
    recs = frame("recommendations", line=line_no[rows], time=_times(t[rows]), user_id=user[rows],
                  server=server[k], status=status[k], latency_ms=latency[k], n_items=n_items, error=errors)
    items = frame("items", line=np.repeat(line_no[rows], n_items), rank=within + 1, movie_id=_categorical(movie))
    return recs, items


def _np(arr) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _matches(arr, pattern: str) -> np.ndarray:
    import pyarrow.compute as pc

    return _np(pc.match_substring_regex(arr, f"^(?:{pattern})$").fill_null(False))


def _integers(arr, valid: np.ndarray) -> np.ndarray:
    """Integers of the valid rows of a string array (-1 elsewhere)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return _np(pc.cast(pc.if_else(pa.array(valid), arr, "-1"), pa.int64()))


def _check_values(values: pd.Categorical, keep: np.ndarray, bad: str) -> tuple[pd.Categorical, np.ndarray]:
    """Rows whose value has a character of the class `bad` are no longer kept (checked once
    per distinct value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rejected = np.flatnonzero(_np(pc.match_substring_regex(pa.array(values.categories, pa.large_string()), bad)))
    if len(rejected):
        keep = keep & ~np.isin(values.codes, rejected)
    return values, keep


def _categorical(arr) -> pd.Categorical:
    return arr.dictionary_encode().to_pandas().values


def _parse_slow(data: bytes, starts, ends, lines, source: str) -> ParsedEvents:
    """The reference parser over the lines the fast path did not take."""
    rows: dict[str, list] = {"watch": [], "rate": [], "recommend": [], "reject": []}
    items: list[tuple] = []
    for a, z, ln in zip(starts.tolist(), ends.tolist(), lines.tolist()):
        raw = data[a:z]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rows["reject"].append((source, ln, raw.decode("utf-8", "backslashreplace"), "not UTF-8"))
            continue
        kind, f = (parse_json_line if is_json_line(text) else parse_line)(text)
        if kind == "reject":
            rows["reject"].append((source, ln, text, f[0]))
        elif kind == "recommend":
            t, uid, server, status, latency, its, error = f
            rows["recommend"].append((ln, t, uid, server, status, latency, len(its), error))
            items.extend((ln, rank, m) for rank, m in enumerate(its, 1))
        else:
            rows[kind].append((ln, *f))
    return _from_rows(rows, items)


def _parse_json(data: bytes, starts, ends, lines, source: str) -> ParsedEvents:
    """The JSON lines of a piece: `_decode_json` line by line, then every timestamp at once with
    the text path's byte-level reader; the same answer as `parse_json_line` on each line."""
    decoded, rejects = [], []
    for a, z, ln in zip(starts.tolist(), ends.tolist(), lines.tolist()):
        raw = data[a:z]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((source, ln, raw.decode("utf-8", "backslashreplace"), "not UTF-8"))
            continue
        kind, ts, fields = _decode_json(text)
        if ts is None:
            rejects.append((source, ln, text, fields[0]))
        else:
            decoded.append((kind, ln, ts, fields, text))
    ns, valid = _parse_times([d[2] for d in decoded])
    rows: dict[str, list] = {"watch": [], "rate": [], "recommend": [], "reject": rejects}
    items: list[tuple] = []
    for (kind, ln, _, fields, text), t, good in zip(decoded, ns.tolist(), valid.tolist()):
        if not good:
            rejects.append((source, ln, text, "bad timestamp"))
        elif kind == "reject":
            rejects.append((source, ln, text, fields[0]))
        elif kind == "recommend":
            uid, server, status, latency, its, error = fields
            rows["recommend"].append((ln, t, uid, server, status, latency, len(its), error))
            items.extend((ln, rank, m) for rank, m in enumerate(its, 1))
        else:
            rows[kind].append((ln, t, *fields))
    rejects.sort(key=lambda r: r[1])
    return _from_rows(rows, items)


def _parse_times(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds since the epoch of each text and whether it is a log timestamp: `_fast_time`
    over all of them joined by commas (as in a text line), `parse_time` for those it refuses."""
    if not texts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    starts = np.cumsum(lengths + 1) - lengths - 1
    # One byte per character, so that offsets hold: a character outside ASCII becomes "?",
    # which no timestamp has, and the text goes to parse_time, which refuses it too.
    ns, comma, ok = _fast_time(_Buffer((",".join(texts) + ",").encode("ascii", "replace")), starts)
    ok &= comma == starts + lengths
    for i in np.flatnonzero(~ok).tolist():
        t = parse_time(texts[i])
        if t is not None:
            ns[i], ok[i] = t, True
    return ns, ok


def _from_rows(rows: dict[str, list], items: list[tuple]) -> ParsedEvents:
    """The frames of a piece from rows of the reference parsers' fields (times in ns)."""

    def from_rows(name: str, data_rows: list[tuple]) -> pd.DataFrame:
        if not data_rows:
            return frame(name)
        table = np.array(data_rows, dtype=object)  # one row per tuple: columns without zip(*rows)
        values = {}
        for j, (column, dtype) in enumerate(SCHEMAS[name].items()):
            if dtype == _C:
                values[column] = pd.Categorical(table[:, j])
            elif dtype == _O:
                values[column] = table[:, j]
            else:
                values[column] = table[:, j].astype(np.int64)
                if dtype == _T:
                    values[column] = _times(values[column])
        return frame(name, **values)

    return ParsedEvents(from_rows("watches", rows["watch"]), from_rows("ratings", rows["rate"]),
                        from_rows("recommendations", rows["recommend"]), from_rows("items", items),
                        from_rows("rejects", rows["reject"]))

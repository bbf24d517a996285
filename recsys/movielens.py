"""MovieLens 100K and 1M, the public data sets users download themselves, read into the same
frames as the service's own files, so that every audit can also run on a published benchmark.

The ratings file is large (1M has a million lines), so it is read vectorised: numpy checks the
shape of every line at once, pandas' C reader parses the lines that pass, and only the others go
through a per-line parser that names the reason each one is rejected. As for the service's own
files, nothing is dropped silently: every non-blank line is a row or a reject.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recaudit.recsys.events import BLANK, iter_chunks
from recaudit.recsys.events import SCHEMAS as EVENT_SCHEMAS
from recaudit.recsys.formats import InputError, RowError, frame

# The files of each version in the order they are read: users, movies, ratings.
FILES = {"100k": ("u.user", "u.item", "u.data"), "1m": ("users.dat", "movies.dat", "ratings.dat")}
NOT_MOVIELENS = ("not a MovieLens 100K or 1M directory "
                 "(expected u.data, u.user, u.item or ratings.dat, users.dat, movies.dat)")

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
OCCUPATIONS_1M = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                  "customer service", "doctor/health care", "executive/managerial", "farmer",
                  "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
                  "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
                  "unemployed", "writer")
# 1M age codes: (age, age_group). A code is the lower bound of its group, except "under 18",
# which spans children and teenagers and so fixes the group instead of an age.
AGES_1M = {1: (None, "under_18"), 18: (18, None), 25: (25, None), 35: (35, None),
           45: (45, None), 50: (50, None), 56: (56, None)}
USER_ATTRIBUTES = ("zip_code",)  # the users' fields beyond the typed ones, kept as attributes

MAX_INT = 2**63 - 1
MAX_SECONDS = MAX_INT // 10**9  # the last second datetime64[ns] can hold
_FAST_DIGITS = 18  # a field of at most this many digits fits int64; longer ones go the slow way
_INT = re.compile(r"-?[0-9]+\Z")
_RATING = re.compile(r"0*[1-5]\Z")
_TITLE_YEAR = re.compile(r"(.*?)\s*\(([0-9]{4})\)\Z", re.S)
_RELEASE_DATE = re.compile(r"[0-9]{1,2}-[A-Za-z]{3}-([0-9]{4})\Z")
_BLANK_BYTES = BLANK.encode()


@dataclass
class MovieLens:
    """One MovieLens directory as frames, with the SHA-256 and size of exactly the bytes read.
    The users frame carries the zip code as the attribute `zip_code`."""

    version: str
    users: pd.DataFrame
    movies: pd.DataFrame
    ratings: pd.DataFrame
    rejects: pd.DataFrame
    fingerprint: str
    size: int


def detect_version(path: str | Path) -> str | None:
    """``100k`` or ``1m`` when the directory holds that version's three files, else None."""
    p = Path(path)
    for version, names in FILES.items():
        if all((p / name).is_file() for name in names):
            return version
    return None


def load(path: str | Path) -> MovieLens:
    """Read a MovieLens 100K or 1M directory; unusable lines become rejects."""
    p = Path(path)
    version = detect_version(p)
    if version is None:
        raise InputError(p, NOT_MOVIELENS)
    files = [p / name for name in FILES[version]]
    parse_user, parse_movie, sep = _PARSERS[version]
    digest = _Digest()
    users, user_rejects = _read_rows(files[0], parse_user, "user id", digest)
    movies, movie_rejects = _read_rows(files[1], parse_movie, "movie id", digest)
    ratings, rating_rejects = _read_ratings(files[2], sep, digest)
    rejects = frame("rejects", user_rejects + movie_rejects + rating_rejects)
    return MovieLens(version=version, users=frame("users", users, USER_ATTRIBUTES), movies=frame("movies", movies),
                     ratings=ratings, rejects=rejects, fingerprint=digest.sha.hexdigest(), size=digest.size)


class _Digest:
    """The fingerprint of a directory's files as they are read: each file's name, a NUL, and its
    bytes, in reading order (so a file replaced mid-read is never recorded as the old one)."""

    def __init__(self):
        self.sha, self.size = hashlib.sha256(), 0

    def start(self, path: Path) -> None:
        self.sha.update(path.name.encode() + b"\0")

    def read(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.size += len(data)
        return data


# ---------------------------------------------------------------------------------------------
# Per-line parsing: the definition of each format, and the reasons for rejects.

def _fields(raw: str, sep: str, n: int) -> list[str]:
    fields = raw.split(sep)
    if len(fields) != n:
        raise RowError(f"expected {n} fields, got {len(fields)}")
    return fields


def _int(text: str, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if not _INT.match(text):
        raise RowError(f"{what} not an integer")
    value = int(text)
    if not lo <= value <= hi:
        raise RowError(f"{what} out of range")
    return value


def _title_year(title: str) -> tuple[str, int | None]:
    """``Toy Story (1995)`` into ``("Toy Story", 1995)``; a title without a year keeps it all."""
    title = title.strip()
    m = _TITLE_YEAR.match(title)
    return (m.group(1), int(m.group(2))) if m else (title, None)


def _user_100k(raw: str) -> tuple:
    uid, age, gender, occupation, zip_code = _fields(raw, "|", 5)
    return _int(uid, "user id"), _int(age, "age"), None, gender.strip(), occupation.strip(), zip_code.strip() or None


def _user_1m(raw: str) -> tuple:
    uid, gender, age_code, occupation_code, zip_code = _fields(raw, "::", 5)
    uid = _int(uid, "user id")
    code = _int(age_code, "age code")
    if code not in AGES_1M:
        raise RowError(f"unknown age code {code}")
    age, age_group = AGES_1M[code]
    occupation = _int(occupation_code, "occupation code")
    if occupation >= len(OCCUPATIONS_1M):
        raise RowError(f"unknown occupation code {occupation}")
    return uid, age, age_group, gender.strip(), OCCUPATIONS_1M[occupation], zip_code.strip() or None


def _movie_100k(raw: str) -> tuple:
    fields = _fields(raw, "|", 5 + len(GENRES_100K))
    movie_id = _int(fields[0], "movie id")
    title, year = _title_year(fields[1])
    released = fields[2].strip()
    if released:
        m = _RELEASE_DATE.match(released)
        if not m:
            raise RowError("release date not like 01-Jan-1995")
        year = int(m.group(1)) if year is None else year
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
        raise RowError("genre flag not 0 or 1")
    genres = "|".join(name for name, flag in zip(GENRES_100K, flags) if flag == "1")
    return str(movie_id), title, year, genres


def _movie_1m(raw: str) -> tuple:
    movie_id, title, genres = _fields(raw, "::", 3)
    title, year = _title_year(title)
    return str(_int(movie_id, "movie id")), title, year, genres.strip()


def _rating(raw: str, sep: str) -> tuple[int, int, int, int]:
    """(user, movie, rating, unix seconds) of one ratings line."""
    user, movie, rating, seconds = _fields(raw, sep, 4)
    user_id, movie_id = _int(user, "user id"), _int(movie, "movie id")
    if not _RATING.match(rating):
        raise RowError("rating not an integer 1-5")
    return user_id, movie_id, int(rating), _int(seconds, "timestamp", hi=MAX_SECONDS)


def _lines(path: Path, digest: _Digest) -> list[tuple[int, str]]:
    """The non-blank lines of a Latin-1 file with their 1-based numbers."""
    try:
        digest.start(path)
        text = digest.read(path.read_bytes()).decode("latin-1")
    except OSError as exc:
        raise InputError(path, exc.strerror or "cannot be read") from None
    # Split on "\n" only: str.splitlines would also split on Latin-1 characters such as \x85.
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [(n, line) for n, line in enumerate(lines, 1) if line.strip(BLANK)]


def _read_rows(path: Path, parse: Callable[[str], tuple], key: str,
               digest: _Digest) -> tuple[list[tuple], list[tuple]]:
    """Rows and rejects of a users or movies file; the first field is a key that must be unique."""
    source, rows, rejects, seen = str(path), [], [], {}
    for line, raw in _lines(path, digest):
        try:
            row = parse(raw)
        except RowError as exc:
            rejects.append((source, line, raw, str(exc)))
            continue
        if row[0] in seen:
            rejects.append((source, line, raw, f"duplicate {key} (first at line {seen[row[0]]})"))
            continue
        seen[row[0]] = line
        rows.append(row)
    return rows, rejects


# ---------------------------------------------------------------------------------------------
# The ratings file, vectorised.

_COLUMNS = ("user", "movie", "rating", "seconds")


def _read_ratings(path: Path, sep: str, digest: _Digest) -> tuple[pd.DataFrame, list[tuple]]:
    """The ratings frame and the rejects of a ratings file whose fields are split by `sep`."""
    parts: list[dict[str, np.ndarray]] = []
    rejects: list[tuple] = []
    try:
        with open(path, "rb") as stream:
            digest.start(path)
            for data, first in iter_chunks(stream):
                parts.append(_ratings_chunk(digest.read(data), first, sep, str(path), rejects))
    except OSError as exc:
        raise InputError(path, exc.strerror or "cannot be read") from None
    columns = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0, np.int64)
               for c in ("line",) + _COLUMNS}
    ids, codes = np.unique(columns["movie"], return_inverse=True)
    ratings = pd.DataFrame({
        "line": columns["line"],
        "time": (columns["seconds"] * 10**9).view("datetime64[ns]"),
        "user_id": columns["user"],
        "movie_id": pd.Categorical.from_codes(codes, categories=ids.astype(str).astype(object)),
        "rating": columns["rating"],
    })
    return ratings.astype(EVENT_SCHEMAS["ratings"]), rejects


def _ratings_chunk(data: bytes, first: int, sep: str, source: str,
                   rejects: list[tuple]) -> dict[str, np.ndarray]:
    """Columns of a line-aligned piece whose first line is number `first`; rejects are appended.

    A line in canonical form (four fields of ASCII digits) is parsed by pandas; every other
    non-blank line goes to `_rating`.
    """
    sep_bytes = sep.encode()
    tabbed = data if sep_bytes == b"\t" else data.replace(sep_bytes, b"\t")
    buf = np.frombuffer(tabbed, dtype=np.uint8)
    size = len(buf)
    nl = np.flatnonzero(buf == ord("\n"))
    ends = nl if tabbed.endswith(b"\n") else np.append(nl, size)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    extents = np.minimum(ends + 1, size) - starts  # each line with its newline
    ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == ord("\r")))

    # Canonical: only digits between exactly three tabs, every field 1 to 18 digits long.
    not_digit_or_tab = np.flatnonzero((buf - np.uint8(48) > 9) & (buf != ord("\t")))
    tabs = np.flatnonzero(buf == ord("\t"))
    first_tab = np.searchsorted(tabs, starts)
    ok = (np.searchsorted(not_digit_or_tab, ends) == np.searchsorted(not_digit_or_tab, starts))
    ok &= np.searchsorted(tabs, ends) - first_tab == 3
    if sep_bytes != b"\t" and b"\t" in data:  # a tab of the file itself is no separator
        raw = np.frombuffer(data, dtype=np.uint8)
        ok[np.searchsorted(np.flatnonzero(raw == ord("\n")), np.flatnonzero(raw == ord("\t")))] = False
    rows = np.flatnonzero(ok)
    k = first_tab[rows]
    bounds = [starts[rows] - 1] + [tabs[k + i] for i in range(3)] + [ends[rows]]
    for a, z in zip(bounds, bounds[1:]):
        ok[rows[(z - a - 1 < 1) | (z - a - 1 > _FAST_DIGITS)]] = False

    out = {c: np.zeros(0, np.int64) for c in ("line",) + _COLUMNS}
    if ok.any():
        kept = tabbed if ok.all() else buf[np.repeat(ok, extents)].tobytes()
        fast = pd.read_csv(io.BytesIO(kept), sep="\t", header=None, names=list(_COLUMNS),
                           dtype=np.int64, engine="c")
        rows = np.flatnonzero(ok)
        good = fast["rating"].between(1, 5).to_numpy() & (fast["seconds"] <= MAX_SECONDS).to_numpy()
        ok[rows[~good]] = False
        out = {c: fast[c].to_numpy()[good] for c in _COLUMNS}
        out["line"] = rows[good] + first

    slow = []
    rest = np.flatnonzero(~ok & (ends > starts))  # empty lines are blank
    if len(rest):
        lines = data.split(b"\n")
        for i in rest.tolist():
            text = lines[i].removesuffix(b"\r")
            if not text.strip(_BLANK_BYTES):
                continue
            raw = text.decode("latin-1")
            try:
                slow.append((first + i, *_rating(raw, sep)))
            except RowError as exc:
                rejects.append((source, first + i, raw, str(exc)))
    if slow:  # lines in a form the fast path leaves to `_rating` that are still good
        more = dict(zip(("line",) + _COLUMNS, np.array(slow, dtype=np.int64).T))
        order = np.argsort(np.concatenate([out["line"], more["line"]]), kind="stable")
        out = {c: np.concatenate([out[c], more[c]])[order] for c in out}
    return out


_PARSERS = {"100k": (_user_100k, _movie_100k, "\t"), "1m": (_user_1m, _movie_1m, "::")}

"""Ingestion: files into the store, each source once, each line stored or quarantined.

A source is a file, the new tail of a log that grew since it was last ingested, a batch of
standard input, or a MovieLens directory. Each is committed in one transaction together with
its `ingested_sources` row: a crash leaves all of it or none of it, and a second run skips
whatever the first one committed (sources are recognised by the SHA-256 of their content).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import pandas as pd
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from audits import store as st
from recsys import events as ev
from recsys import formats, movielens

EVENT_KINDS = ("watch", "rate", "recommend")
STORED_KINDS = EVENT_KINDS + ("users", "movies")
_HASH_BLOCK = 8 << 20


@dataclass
class SourceResult:
    """What happened to one source."""

    name: str
    kind: str
    status: str  # ingested, skipped (content seen before), unchanged (nothing new in a log)
    lines: int = 0  # non-blank data lines read
    stored: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    items: int = 0  # recommended movies stored with the recommendations
    first_line: int = 1
    source_id: int | None = None


@dataclass
class IngestSummary:
    sources: list[SourceResult]

    def totals(self) -> dict:
        done = [s for s in self.sources if s.status == "ingested"]
        return {
            "lines": sum(s.lines for s in done),
            "stored": {k: sum(s.stored.get(k, 0) for s in done) for k in STORED_KINDS},
            "quarantined": sum(s.quarantined for s in done),
            "skipped_sources": sum(s.status != "ingested" for s in self.sources),
        }

    def to_dict(self) -> dict:
        return {**self.totals(), "sources": [asdict(s) for s in self.sources]}


def plan(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(kind, path) for every source the paths name, checked before anything is written."""
    out = []
    for path in paths:
        kind = formats.detect(path)
        if kind == "directory":
            files = formats.directory_files(path)
            if not files:
                raise formats.InputError(path, "no users.csv, movies.csv, event log or MovieLens files in it")
            out += [(k, str(p)) for k, p in files]
        else:
            out.append((kind, path))
    if sum(path == "-" for _, path in out) > 1:
        raise formats.InputError("-", "standard input given more than once")
    return out


def ingest(store: st.Store, paths: Iterable[str], follow: bool = False, chunk_bytes: int = ev.CHUNK_BYTES,
           stdin: BinaryIO | None = None, validate: dict | None = None) -> IngestSummary:
    """Ingest every source the paths name, in order.

    `follow` is for logs still being written: an unterminated last line is left for the next
    run instead of being read half-written. `validate` (a configuration) quarantines the
    events that fail a quarantining expectation, with its name as the reason.
    """
    check = _validator(validate) if validate is not None else None
    results = []
    for kind, path in plan(paths):
        if path == "-":
            results += _ingest_stdin(store, stdin or sys.stdin.buffer, chunk_bytes, check)
        elif kind == "events":
            results.append(_ingest_log(store, Path(path), follow, chunk_bytes, check))
        elif kind == "users":
            results.append(_ingest_table(store, Path(path), "users"))
        elif kind == "movies":
            results.append(_ingest_table(store, Path(path), "movies"))
        else:
            results.append(_ingest_movielens(store, Path(path)))
    return IngestSummary(results)


def _validator(config: dict):
    """The parsed pieces of a log, with events failing a quarantining expectation moved out."""
    from audits import validation

    def check(parsed: ev.ParsedEvents, source: str) -> ev.ParsedEvents:
        params = validation.parameters(config)
        return validation.quarantine_failing(parsed, source, params, config["validation"]["suite_dir"])

    return check


# -- sources -----------------------------------------------------------------------------------

def _sha256(path: Path, start: int, end: int, digest=None):
    """Hash bytes [start, end) of a file, continuing `digest` when given."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            block = f.read(min(_HASH_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


def _seen(store: st.Store, fingerprint: str) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(st.ingested_sources.c.id).where(
            st.ingested_sources.c.fingerprint == fingerprint)).first() is not None


def _last_ingest_of(store: st.Store, name: str):
    with store.engine.connect() as conn:
        return conn.execute(select(st.ingested_sources).where(
            st.ingested_sources.c.kind == "events", st.ingested_sources.c.name == name)
            .order_by(st.ingested_sources.c.id.desc()).limit(1)).first()


def _ingest_log(store: st.Store, path: Path, follow: bool, chunk_bytes: int, check=None) -> SourceResult:
    name = str(path)
    if path.suffix == ".gz":
        digest, end = hashlib.sha256(), 0
        with ev.open_log(path) as f:  # the decompressed content is what is fingerprinted
            for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                digest.update(block)
                end += len(block)
        start, first_line = 0, 1
        fingerprint = digest.hexdigest()
    else:
        size = path.stat().st_size
        start, first_line, digest = 0, 1, None
        prev = _last_ingest_of(store, name)
        if prev is not None and size >= prev.end_offset:
            prefix = _sha256(path, 0, prev.end_offset)
            if prefix.hexdigest() == prev.fingerprint:  # the same log, grown: read only the tail
                start, first_line, digest = prev.end_offset, prev.last_line + 1, prefix
        end = _complete_lines_end(path, size) if follow else size
        if end <= start:
            return SourceResult(name, "events", "unchanged", first_line=first_line)
        digest = _sha256(path, start, end, digest)
        fingerprint = digest.hexdigest()
    if _seen(store, fingerprint):
        return SourceResult(name, "events", "skipped")

    def pieces() -> Iterator[ev.ParsedEvents]:
        with ev.open_log(path) as f:
            if start:
                f.seek(start)
            yield from ev.parse_stream(_Limited(f, end - start), name, chunk_bytes, first_line)

    return _commit_log(store, name, fingerprint, pieces(), start, end, first_line, check)


def _complete_lines_end(path: Path, size: int) -> int:
    """Offset just past the last newline (a line still being written is left out)."""
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                return pos - step + i + 1
            pos -= step
    return 0


class _Limited:
    """A read-only view of the next `limit` bytes of a stream."""

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.f.readline(self.left)
        self.left -= len(data)
        return data


def _ingest_stdin(store: st.Store, stream: BinaryIO, chunk_bytes: int, check=None) -> list[SourceResult]:
    """Standard input in batches, each its own source, so a long-running pipe commits as it goes."""
    results, offset = [], 0
    for data, first_line in ev.iter_chunks(stream, chunk_bytes):
        fingerprint = hashlib.sha256(data).hexdigest()
        if _seen(store, fingerprint):
            results.append(SourceResult("-", "events", "skipped", first_line=first_line))
        else:
            parsed = iter([ev.parse_bytes(data, "-", first_line)])
            results.append(_commit_log(store, "-", fingerprint, parsed, offset, offset + len(data), first_line, check))
        offset += len(data)
    return results


def _commit_log(store: st.Store, name: str, fingerprint: str, pieces: Iterable[ev.ParsedEvents],
                start: int, end: int, first_line: int, check=None) -> SourceResult:
    """Store the parsed pieces of bytes [start, end) of a log as one source, in one transaction."""
    result = SourceResult(name, "events", "ingested", first_line=first_line,
                          stored={k: 0 for k in EVENT_KINDS})
    try:
        with store.transaction() as conn:
            source_id = _open_source(store, conn, "events", name, fingerprint, start, first_line)
            keys: dict[str, int] = {}
            span = 0
            for parsed in pieces:
                if check is not None:
                    parsed = check(parsed, name)
                _store_events(store, conn, source_id, parsed, keys)
                for kind in EVENT_KINDS:
                    result.stored[kind] += parsed.counts[kind]
                result.items += len(parsed.items)
                result.quarantined += len(parsed.rejects)
                result.lines += parsed.lines
                span += parsed.span
            _close_source(conn, source_id, result, end, first_line + span - 1)
    except IntegrityError:
        if _seen(store, fingerprint):  # another run committed the same content meanwhile
            return SourceResult(name, "events", "skipped")
        raise
    result.source_id = source_id
    return result


def _ingest_table(store: st.Store, path: Path, kind: str) -> SourceResult:
    fingerprint = _sha256(path, 0, path.stat().st_size).hexdigest()
    if _seen(store, fingerprint):
        return SourceResult(str(path), kind, "skipped")
    reader = formats.read_users_csv if kind == "users" else formats.read_movies_csv
    frame, rejects = reader(path)
    result = SourceResult(str(path), kind, "ingested", lines=len(frame) + len(rejects),
                          stored={kind: len(frame)}, quarantined=len(rejects))
    with store.transaction() as conn:
        source_id = _open_source(store, conn, kind, str(path), fingerprint, 0, 1)
        if kind == "users":
            _store_users(store, conn, source_id, frame)
        else:
            _store_movies(store, conn, source_id, frame, {})
        _store_rejects(store, conn, source_id, rejects)
        _close_source(conn, source_id, result, path.stat().st_size, result.lines + 1)
    result.source_id = source_id
    return result


def _ingest_movielens(store: st.Store, path: Path) -> SourceResult:
    data = movielens.load(path)
    digest = hashlib.sha256()
    for f in data.files:
        digest.update(f.name.encode() + b"\0")
        _sha256(f, 0, f.stat().st_size, digest)
    fingerprint = digest.hexdigest()
    if _seen(store, fingerprint):
        return SourceResult(str(path), "movielens", "skipped")
    result = SourceResult(str(path), "movielens", "ingested",
                          lines=len(data.users) + len(data.movies) + len(data.ratings) + len(data.rejects),
                          stored={"users": len(data.users), "movies": len(data.movies), "rate": len(data.ratings)},
                          quarantined=len(data.rejects))
    with store.transaction() as conn:
        source_id = _open_source(store, conn, "movielens", str(path), fingerprint, 0, 1)
        keys: dict[str, int] = {}
        _store_users(store, conn, source_id, data.users)
        _store_movies(store, conn, source_id, data.movies, keys)
        _store_ratings(store, conn, source_id, data.ratings, keys)
        _store_rejects(store, conn, source_id, data.rejects)
        _close_source(conn, source_id, result, sum(f.stat().st_size for f in data.files), result.lines)
    result.source_id = source_id
    return result


# -- writing -----------------------------------------------------------------------------------

def _open_source(store: st.Store, conn: Connection, kind: str, name: str, fingerprint: str,
                 start: int, first_line: int) -> int:
    """Record the source first: on SQLite this takes the write lock before keys are read."""
    source_id = conn.execute(insert(st.ingested_sources).values(
        kind=kind, name=name, fingerprint=fingerprint, start_offset=start, end_offset=start,
        first_line=first_line, last_line=first_line - 1, lines=0, stored="{}", quarantined=0,
        ingested_at=pd.Timestamp.now("UTC").tz_localize(None),
    ).returning(st.ingested_sources.c.id)).scalar_one()
    store.lock_for_ingest(conn)
    return source_id


def _close_source(conn: Connection, source_id: int, result: SourceResult, end: int, last_line: int) -> None:
    conn.execute(update(st.ingested_sources).where(st.ingested_sources.c.id == source_id).values(
        end_offset=end, last_line=last_line, lines=result.lines,
        stored=json.dumps({**result.stored, "items": result.items} if result.items else result.stored),
        quarantined=result.quarantined))


def _keys_for(store: st.Store, conn: Connection, movie_id: pd.Series, keys: dict) -> np.ndarray:
    """Movie keys for a categorical column of movie ids."""
    cat = movie_id.astype("category").cat
    if len(cat.categories) == 0:
        return np.zeros(len(movie_id), dtype=np.int64)
    return store.movie_keys(conn, list(cat.categories), keys)[cat.codes.to_numpy()]


def _store_events(store: st.Store, conn: Connection, source_id: int, parsed: ev.ParsedEvents, keys: dict) -> None:
    _store_ratings(store, conn, source_id, parsed.ratings, keys)
    w = parsed.watches
    store.insert(conn, st.watches, pd.DataFrame({
        "source_id": source_id, "line": w["line"], "time": w["time"], "user_id": w["user_id"],
        "movie_key": _keys_for(store, conn, w["movie_id"], keys), "minute": w["minute"]}))
    r = parsed.recommendations
    store.insert(conn, st.recommendations, pd.DataFrame({
        "source_id": source_id, "line": r["line"], "time": r["time"], "user_id": r["user_id"],
        "server": r["server"].astype(object), "status": r["status"], "latency_ms": r["latency_ms"],
        "n_items": r["n_items"], "error": r["error"]}))
    i = parsed.items
    store.insert(conn, st.recommendation_items, pd.DataFrame({
        "source_id": source_id, "line": i["line"], "rank": i["rank"],
        "movie_key": _keys_for(store, conn, i["movie_id"], keys)}))
    _store_rejects(store, conn, source_id, parsed.rejects, parsed)


def _store_ratings(store: st.Store, conn: Connection, source_id: int, ratings: pd.DataFrame, keys: dict) -> None:
    store.insert(conn, st.ratings, pd.DataFrame({
        "source_id": source_id, "line": ratings["line"], "time": ratings["time"],
        "user_id": ratings["user_id"], "movie_key": _keys_for(store, conn, ratings["movie_id"], keys),
        "rating": ratings["rating"]}))


def _store_users(store: st.Store, conn: Connection, source_id: int, users: pd.DataFrame) -> None:
    store.upsert(conn, st.users, users.assign(source_id=source_id), key="user_id")


def _store_movies(store: st.Store, conn: Connection, source_id: int, movies: pd.DataFrame, keys: dict) -> None:
    frame = pd.DataFrame({"movie_key": _keys_for(store, conn, movies["movie_id"], keys),
                          "title": movies["title"], "year": movies["year"], "genres": movies["genres"],
                          "source_id": source_id})
    store.upsert(conn, st.movies, frame, key="movie_key")


def _store_rejects(store: st.Store, conn: Connection, source_id: int, rejects: pd.DataFrame,
                   parsed: ev.ParsedEvents | None = None) -> None:
    frame = pd.DataFrame({"source_id": source_id, "file": rejects["source"], "line": rejects["line"],
                          "raw": rejects["raw"], "reason": rejects["reason"]})
    if parsed is not None:
        frame["near_time"] = _near_times(parsed, rejects["line"].to_numpy())
    store.insert(conn, st.quarantine, frame)


def _near_times(parsed: ev.ParsedEvents, lines: np.ndarray) -> pd.Series:
    """For each rejected line, the time of the nearest earlier event of the piece (or the first
    event after it when none is earlier)."""
    events = pd.concat([parsed.watches[["line", "time"]], parsed.ratings[["line", "time"]],
                        parsed.recommendations[["line", "time"]]]).sort_values("line")
    if events.empty:
        return pd.Series(pd.NaT, index=range(len(lines)), dtype="datetime64[ns]")
    i = np.clip(np.searchsorted(events["line"].to_numpy(), lines) - 1, 0, len(events) - 1)
    return pd.Series(events["time"].to_numpy()[i])

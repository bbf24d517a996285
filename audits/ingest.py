"""Ingestion: files into the store, each source once, each line stored or quarantined.

A source is a file, the new tail of a log that grew since it was last ingested, a batch of
standard input, or a MovieLens directory. Each is committed in one transaction together with
its `ingested_sources` row: a crash leaves all of it or none of it, and a second run skips
whatever the first one committed (sources are recognised by the SHA-256 of their content).

On a database, ingests take turns: each holds the ingest lock from its plan to its commit. On a
lake, several writers ingest logs at once: each plans, parses and writes its files with no lock
held, and takes the lock only to commit, once it has checked that no source committed meanwhile
took the same lines (else it plans again, and its files are removed if its plan changed).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from recaudit.audits import activity, sources
from recaudit.audits import store as st
from recaudit.audits.lake import LAKE_TABLES
from recaudit.audits.schema import movie_attributes, user_attributes
from recaudit.audits.schema import predictions as predictions_table
from recaudit.clock import utc_now
from recaudit.recsys import events as ev
from recaudit.recsys import formats, movielens, predictions

EVENT_KINDS = ("watch", "rate", "recommend")
STORED_KINDS = EVENT_KINDS + ("users", "movies", "predictions")
_HASH_BLOCK = 8 << 20
_READ_ATTEMPTS = 5


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


RowCheck = Callable[[ev.ParsedEvents, str], ev.ParsedEvents]


def ingest(store: st.Store, paths: Iterable[str], chunk_bytes: int = ev.CHUNK_BYTES,
           stdin: BinaryIO | None = None, check: RowCheck | None = None,
           model_name: str = predictions.DEFAULT_MODEL) -> IngestSummary:
    """Ingest every source the paths name, in order.

    A log is recognised by its content, whatever its name: a log that grew since it was
    ingested contributes its new lines, and a last line that was still being written when it
    was read is read again, whole. `check` takes each parsed piece of a log and its source's
    name and returns the piece with the rows it refuses moved to the rejects (quarantined with
    their reason), e.g. `validation.row_check(config)`; ingestion itself does not know the
    contracts, so that validation can read files the way ingestion plans them. `model_name`
    names the model of predictions files without a model column.
    """
    problem = predictions.model_name_problem(model_name)
    if problem:
        raise formats.InputError("--model-name", f"{problem} (got {model_name!r})")
    results = []
    for kind, path in sources.plan(paths):
        if path == "-":
            results += _ingest_stdin(store, stdin or sys.stdin.buffer, chunk_bytes, check)
        elif kind == "events":
            results.append(_ingest_log(store, Path(path), chunk_bytes, check))
        elif kind == "users":
            results.append(_ingest_table(store, Path(path), "users"))
        elif kind == "movies":
            results.append(_ingest_table(store, Path(path), "movies"))
        elif kind == "predictions":
            results.append(_ingest_predictions(store, Path(path), model_name))
        else:
            results.append(_ingest_movielens(store, Path(path)))
    return IngestSummary(results)


# -- sources -----------------------------------------------------------------------------------

def _seen(conn: Connection, fingerprint: str) -> bool:
    return conn.execute(select(st.ingested_sources.c.id).where(
        st.ingested_sources.c.fingerprint == fingerprint)).first() is not None


@dataclass
class _LogPlan:
    """What to read of a log: bytes [start, end), numbered from first_line, and its lineage."""

    start: int
    end: int
    first_line: int
    fingerprint: str
    continues: str | None = None  # the fingerprint of the content this tail continues
    partial_from: int | None = None  # where this content's unterminated last line starts
    replaces: tuple[int, int] | None = None  # (source id, line): a line read half-written before
    head: "hashlib._Hash | None" = None  # the digest of bytes [0, start), to go on with the tail
    after: int = 0  # where the content it continues ends (0: none)
    considered: frozenset[int] = frozenset()  # the earlier sources this plan was made from
    begins_alike: bool = True  # planned again: whether the file still begins as when first planned

    def lineage(self) -> tuple:
        """What a plan takes from where: two plans of one content with the same lineage store the
        same lines."""
        return self.start, self.first_line, self.continues, self.replaces


def _plan_log(conn: Connection, f: BinaryIO, kind: str = "events", begins: _LogPlan | None = None) -> _LogPlan:
    """Read an open log once: its fingerprint, where its last line starts if unterminated, and
    the longest content of the same kind (events, or a predictions file that grows) ingested
    before (under any name) that it begins with. With `begins`, an earlier plan of the same
    file, the plan also says whether the file still begins with the content that one was made of."""
    earlier = conn.execute(select(
        st.ingested_sources.c.id, st.ingested_sources.c.fingerprint, st.ingested_sources.c.end_offset,
        st.ingested_sources.c.last_line, st.ingested_sources.c.partial_from)
        .where(st.ingested_sources.c.kind == kind, st.ingested_sources.c.end_offset > 0)).all()
    # Where a tail may start: the end of an earlier content, or where its half-written last line
    # began (that line is read again). The digest is kept at each such offset.
    marks = sorted({r.end_offset for r in earlier} | {r.partial_from for r in earlier if r.partial_from}
                   | ({begins.end} if begins else set()))
    heads: dict[int, object] = {0: hashlib.sha256()}
    digest, offset, last_newline = hashlib.sha256(), 0, -1
    pending = iter(marks)
    mark = next(pending, None)
    f.seek(0)
    for block in iter(lambda: f.read(_HASH_BLOCK), b""):
        while mark is not None and mark <= offset + len(block):
            heads[mark] = digest.copy()
            heads[mark].update(block[: mark - offset])
            mark = next(pending, None)
        digest.update(block)
        newline = block.rfind(b"\n")
        if newline >= 0:
            last_newline = offset + newline
        offset += len(block)
    partial = last_newline + 1 if last_newline + 1 < offset else None
    plan = _LogPlan(0, offset, 1, digest.hexdigest(), partial_from=partial, head=heads[0],
                    considered=frozenset(r.id for r in earlier))
    if begins is not None:
        plan.begins_alike = begins.end in heads and heads[begins.end].hexdigest() == begins.fingerprint
    matches = [r for r in earlier if r.end_offset in heads and heads[r.end_offset].hexdigest() == r.fingerprint]
    if matches:
        previous = max(matches, key=lambda r: r.end_offset)
        plan.continues, plan.after = previous.fingerprint, previous.end_offset
        if previous.partial_from is not None:  # its last line was half-written: read it again
            plan.start, plan.first_line = previous.partial_from, previous.last_line
            plan.replaces = (previous.id, previous.last_line)
        else:
            plan.start, plan.first_line = previous.end_offset, previous.last_line + 1
        plan.head = heads[plan.start]
        if previous.end_offset == offset:
            plan.start = plan.end  # nothing new
    return plan


class _ChangedWhileRead(Exception):
    """The bytes read for storage are not the bytes that were fingerprinted (the file was
    rewritten in place, or truncated, between the two reads)."""


def _ingest_log(store: st.Store, path: Path, chunk_bytes: int, check=None) -> SourceResult:
    name = str(path)
    try:
        # One open file for planning, fingerprinting and reading: a log renamed or replaced
        # meanwhile (rotation) is still read whole from the file that was opened.
        opened = ev.open_log(path)
    except OSError as exc:
        raise formats.InputError.unreadable(path, exc) from None
    with opened:
        f = _Reading(opened, path)
        attempts = 0
        while attempts < _READ_ATTEMPTS:
            try:
                if store.lake is not None:
                    return _ingest_log_to_lake(store, f, name, chunk_bytes, check)
                with _new_source(store) as writer:
                    # Plan under the ingest lock: no other ingest commits between the plan and
                    # this commit, so a tail is never taken twice and nothing needs a retry.
                    plan = _plan_log(writer.conn, f)
                    if plan.end <= plan.start:
                        return SourceResult(name, "events", "unchanged", first_line=plan.first_line)
                    if _seen(writer.conn, plan.fingerprint):
                        return SourceResult(name, "events", "skipped")
                    return _commit_log(writer, name, plan, _tail(f, plan, name, chunk_bytes), check)
            except _ChangedWhileRead:
                attempts += 1  # rolled back: plan again from what the file holds now
            except _TakenMeanwhile:
                pass  # another writer committed some of these lines: plan again (it made progress)
    raise formats.InputError(path, f"changed while being read, {_READ_ATTEMPTS} times (is it rewritten in place?)")


class _TakenMeanwhile(Exception):
    """Another writer committed, after this one planned, a source that takes some of the lines
    this one wrote (the files written are removed)."""


def _ingest_log_to_lake(store: st.Store, f: BinaryIO, name: str, chunk_bytes: int, check=None) -> SourceResult:
    """A log's new lines into the lake, with no lock held but to take a source id, new movie keys
    and the commit."""
    with store.engine.connect() as conn:
        plan = _plan_log(conn, f)
        if plan.end <= plan.start:
            return SourceResult(name, "events", "unchanged", first_line=plan.first_line)
        if _seen(conn, plan.fingerprint):
            return SourceResult(name, "events", "skipped")
    writer = _Writer(store, _new_source_id(store))
    committing = False
    try:
        result, last_line = _store_log(writer, name, plan, _tail(f, plan, name, chunk_bytes), check)
        for replans in itertools.count():
            with store.transaction() as conn:
                store.lock_for_ingest(conn)
                if _seen(conn, plan.fingerprint):  # the same content, committed by another writer
                    writer.discard()
                    return SourceResult(name, "events", "skipped")
                if replans >= _REPLANS_UNLOCKED:  # others keep committing: plan again with none able to
                    _plan_again(conn, f, plan)
                if not _committed_since(conn, plan):
                    _open_source(conn, "events", name, plan, writer.source_id)
                    if plan.replaces is not None:
                        _forget_line(writer, conn, *plan.replaces)
                    writer.record(conn)
                    _close_source(conn, writer.source_id, result, plan.end, last_line)
                    committing = True  # from here a failure may come after the commit: keep the files
                    return result
            # A source that may continue this content committed since the plan: plan again
            # (outside the lock, as it reads the whole file).
            with store.engine.connect() as conn:
                _plan_again(conn, f, plan)
    except BaseException:
        if not committing:
            writer.discard()
        raise


_REPLANS_UNLOCKED = 3  # then under the lock: a writer of a long log is not starved by others' commits


def _plan_again(conn: Connection, f: BinaryIO, plan: _LogPlan) -> None:
    """Plan a log again after others committed: its lines are still this writer's to commit if
    the new plan takes them from the same place (else `_TakenMeanwhile`). A file that no longer
    begins with what was read (truncated since: logrotate's copytruncate) cannot tell. Its lines
    are then given up if any source committed meanwhile from the same place, which may be the
    truncated log's copy (a tail of the same content, or for a log read from its start, any log
    read from its start); else no one else read them, and they are committed as read."""
    again = _plan_log(conn, f, begins=plan)
    if again.begins_alike and again.lineage() != plan.lineage():
        raise _TakenMeanwhile()
    if not again.begins_alike:
        s = st.ingested_sources.c
        same_place = conn.execute(select(s.id).where(
            s.kind == "events", s.start_offset == plan.start, s.end_offset > plan.start,
            s.continues == plan.continues if plan.continues is not None else s.continues.is_(None))).scalars()
        if not set(same_place) <= plan.considered:
            raise _TakenMeanwhile()
    plan.considered = again.considered


def _committed_since(conn: Connection, plan: _LogPlan) -> bool:
    """Whether a source of events was committed after `plan` was made that it could continue: one
    ending after the content the plan continues (none ending there or before can be a longer
    start of this log than that content)."""
    s = st.ingested_sources.c
    ids = conn.execute(select(s.id).where(s.kind == "events", s.end_offset > plan.after)).scalars()
    return not set(ids) <= plan.considered


def _tail(f: BinaryIO, plan: _LogPlan, name: str, chunk_bytes: int) -> Iterator[ev.ParsedEvents]:
    """The parsed pieces of bytes [start, end); the bytes are hashed on from `plan.head` as they
    are read, and must come to the planned fingerprint, or nothing is committed."""
    f.seek(plan.start)
    tail = _Limited(f, plan.end - plan.start, plan.head.copy())
    yield from ev.parse_stream(tail, name, chunk_bytes, plan.first_line)
    if tail.left or tail.digest.hexdigest() != plan.fingerprint:
        raise _ChangedWhileRead()


class _Reading:
    """A log's open file whose read errors are the user's to fix (a truncated or non-gzip
    `.gz`, a disk error), told apart from the store's errors, which keep their traceback."""

    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path

    def _do(self, call, *args):
        try:
            return call(*args)
        except formats.READ_ERRORS as exc:
            raise formats.InputError.unreadable(self.path, exc) from None

    def read(self, n: int = -1) -> bytes:
        return self._do(self.f.read, n)

    def readline(self, limit: int = -1) -> bytes:
        return self._do(self.f.readline, limit)

    def seek(self, offset: int) -> int:
        return self._do(self.f.seek, offset)


class _Limited:
    """A read-only view of the next `limit` bytes of a stream, hashing what it hands out."""

    def __init__(self, f: BinaryIO, limit: int, digest):
        self.f, self.left, self.digest = f, limit, digest

    def _took(self, data: bytes) -> bytes:
        self.left -= len(data)
        self.digest.update(data)
        return data

    def read(self, n: int = -1) -> bytes:
        return self._took(self.f.read(self.left if n < 0 else min(n, self.left)))

    def readline(self) -> bytes:
        return self._took(self.f.readline(self.left))


def _ingest_stdin(store: st.Store, stream: BinaryIO, chunk_bytes: int, check=None) -> list[SourceResult]:
    """Standard input in batches, each its own source, so a long-running pipe commits as it goes."""
    results, offset = [], 0
    for data, first_line in ev.iter_chunks(stream, chunk_bytes):
        plan = _LogPlan(offset, offset + len(data), first_line, hashlib.sha256(data).hexdigest())
        with _new_source(store) as writer:
            if _seen(writer.conn, plan.fingerprint):
                results.append(SourceResult("-", "events", "skipped", first_line=first_line))
            else:
                results.append(_commit_log(writer, "-", plan, iter([ev.parse_bytes(data, "-", first_line)]), check))
        offset += len(data)
    return results


def _commit_log(writer: _Writer, name: str, plan: _LogPlan, pieces: Iterable[ev.ParsedEvents],
                check=None) -> SourceResult:
    """Store the parsed pieces of bytes [start, end) of a log as one source, through a writer of
    `_new_source`."""
    _open_source(writer.conn, "events", name, plan, writer.source_id)
    if plan.replaces is not None:
        _forget_line(writer, writer.conn, *plan.replaces)
    result, last_line = _store_log(writer, name, plan, pieces, check)
    _close_source(writer.conn, writer.source_id, result, plan.end, last_line)
    return result


def _store_log(writer: _Writer, name: str, plan: _LogPlan, pieces: Iterable[ev.ParsedEvents],
               check=None) -> tuple[SourceResult, int]:
    """Store the parsed pieces of a log through `writer`: what was stored, and the last line."""
    result = SourceResult(name, "events", "ingested", first_line=plan.first_line,
                          stored={k: 0 for k in EVENT_KINDS}, source_id=writer.source_id)
    span, last_time = 0, None
    for parsed in pieces:
        if check is not None:
            parsed = check(parsed, name)
        last_time = _store_events(writer, parsed, last_time)
        for kind in EVENT_KINDS:
            result.stored[kind] += parsed.counts[kind]
        result.items += len(parsed.items)
        result.quarantined += len(parsed.rejects)
        result.lines += parsed.lines
        span += parsed.span
    return result, plan.first_line + span - 1


_LINE_TABLES = {"watches": "watch", "ratings": "rate", "recommendations": "recommend", "predictions": "predictions"}


def _forget_line(writer: _Writer, conn: Connection, source_id: int, line: int) -> None:
    """Remove what a half-written line left behind (it is read again, whole), and take it out
    of its source's counts, so that they still add up: lines == stored + quarantined. On a lake,
    the file that takes back its minute goes with `writer`'s files."""
    store = writer.store
    removed = store.lake.forget(conn, store, source_id, line, writer.files) if store.lake is not None else \
        _delete_line(conn, source_id, line)
    if not any(removed.values()):
        return  # forgotten already, by another tail that continues the same content
    source = conn.execute(select(st.ingested_sources.c.lines, st.ingested_sources.c.stored,
                                 st.ingested_sources.c.quarantined)
                          .where(st.ingested_sources.c.id == source_id)).one()
    stored = json.loads(source.stored)
    for table, kind in _LINE_TABLES.items():
        stored[kind] = stored.get(kind, 0) - removed[table]
    if removed["recommendation_items"]:
        stored["items"] = stored.get("items", 0) - removed["recommendation_items"]
    conn.execute(update(st.ingested_sources).where(st.ingested_sources.c.id == source_id).values(
        lines=source.lines - 1, stored=json.dumps(stored), quarantined=source.quarantined - removed["quarantine"]))


def _delete_line(conn: Connection, source_id: int, line: int) -> dict[str, int]:
    """Delete a line's rows from the database: how many each table held."""
    watched = conn.execute(select(st.watches.c.user_id, st.watches.c.time, st.watches.c.movie_key).where(
        st.watches.c.source_id == source_id, st.watches.c.line == line)).first()
    if watched is not None:
        hours = st.watch_hours.c
        conn.execute(update(st.watch_hours).where(
            hours.user_id == watched.user_id, hours.hour == pd.Timestamp(watched.time).value // 3_600_000_000_000,
            hours.movie_key == watched.movie_key).values(minutes=hours.minutes - 1))
        conn.execute(delete(st.watch_hours).where(hours.minutes <= 0))
        # watch_spans need nothing: a fragment that parsed as a watch was cut in its minute, so
        # the whole line has the same user, movie and time.
    return {table.name: conn.execute(delete(table).where(table.c.source_id == source_id,
                                                         table.c.line == line)).rowcount
            for table in (st.watches, st.ratings, st.recommendations, st.recommendation_items, st.quarantine,
                          predictions_table)}


def _ingest_table(store: st.Store, path: Path, kind: str) -> SourceResult:
    try:
        data = path.read_bytes()  # read once: what is fingerprinted is what is stored
    except OSError as exc:
        raise formats.InputError(path, exc.strerror or "cannot be read") from None
    fingerprint = hashlib.sha256(data).hexdigest()
    reader = formats.read_users_csv if kind == "users" else formats.read_movies_csv
    frame, rejects = reader(path, data)
    with _new_source(store) as writer:
        conn = writer.conn
        if _seen(conn, fingerprint):
            return SourceResult(str(path), kind, "skipped")
        result = SourceResult(str(path), kind, "ingested", lines=len(frame) + len(rejects),
                              stored={kind: len(frame)}, quarantined=len(rejects))
        _open_source(conn, kind, str(path), _LogPlan(0, len(data), 1, fingerprint), writer.source_id)
        if kind == "users":
            _store_users(writer, frame)
        else:
            _store_movies(writer, frame)
        _store_rejects(writer, rejects)
        _close_source(conn, writer.source_id, result, len(data), result.lines + 1)
    result.source_id = writer.source_id
    return result


def _ingest_predictions(store: st.Store, path: Path, model_name: str) -> SourceResult:
    """A predictions file as one source. A CSV or JSON Lines file that grew since it was
    ingested contributes its new lines, as a log does (its half-written last line read again,
    whole); a Parquet file is one content, ingested whole or skipped."""
    try:
        data = path.read_bytes()  # read once: what is fingerprinted is what is stored
    except OSError as exc:
        raise formats.InputError(path, exc.strerror or "cannot be read") from None
    name, kind = str(path), predictions.format_of(data[:4096])
    with _new_source(store) as writer:
        conn = writer.conn
        if kind == "parquet":
            plan = _LogPlan(0, len(data), 1, hashlib.sha256(data).hexdigest())
        else:
            plan = _plan_log(conn, io.BytesIO(data), "predictions")
            if plan.end <= plan.start:
                return SourceResult(name, "predictions", "unchanged", first_line=plan.first_line)
        if _seen(conn, plan.fingerprint):
            return SourceResult(name, "predictions", "skipped")
        header = data.split(b"\n", 1)[0] if kind == "csv" and plan.start > 0 else None
        piece = data[plan.start:plan.end]
        frame, rejects = predictions.read(path, piece, model_name, plan.first_line, header, kind)
        _open_source(conn, "predictions", name, plan, writer.source_id)
        if plan.replaces is not None:
            _forget_line(writer, conn, *plan.replaces)
        writer.insert(predictions_table, pd.DataFrame({
            "source_id": writer.source_id, "line": frame["line"], "time": frame["time"],
            "user_id": frame["user_id"], "movie_key": writer.keys_for(frame["movie_id"]), "model": frame["model"],
            "prediction": frame["prediction"]}))
        _store_rejects(writer, rejects)
        result = SourceResult(name, "predictions", "ingested", lines=len(frame) + len(rejects),
                              stored={"predictions": len(frame)}, quarantined=len(rejects),
                              first_line=plan.first_line, source_id=writer.source_id)
        span = result.lines if kind == "parquet" else piece.count(b"\n") + (not piece.endswith(b"\n"))
        _close_source(conn, writer.source_id, result, plan.end, plan.first_line + span - 1)
    return result


def _ingest_movielens(store: st.Store, path: Path) -> SourceResult:
    data = movielens.load(path)
    with _new_source(store) as writer:
        conn = writer.conn
        if _seen(conn, data.fingerprint):
            return SourceResult(str(path), "movielens", "skipped")
        result = SourceResult(str(path), "movielens", "ingested",
                              lines=len(data.users) + len(data.movies) + len(data.ratings) + len(data.rejects),
                              stored={"users": len(data.users), "movies": len(data.movies), "rate": len(data.ratings)},
                              quarantined=len(data.rejects))
        _open_source(conn, "movielens", str(path), _LogPlan(0, data.size, 1, data.fingerprint), writer.source_id)
        _store_users(writer, data.users)
        _store_movies(writer, data.movies)
        _store_ratings(writer, data.ratings)
        _store_rejects(writer, data.rejects)
        _close_source(conn, writer.source_id, result, data.size, result.lines)
    result.source_id = writer.source_id
    return result


# -- writing -----------------------------------------------------------------------------------

def _new_source_id(store: st.Store) -> int:
    """A new source id, committed at once: a lake's files carry it, and may outlive a writer
    killed before its commit, so it is never given again."""
    with store.transaction() as conn:
        store.lock_for_ingest(conn)
        return _take_source_id(conn)


@contextmanager
def _new_source(store: st.Store) -> Iterator[_Writer]:
    """The transaction of a source that holds the ingest lock from its start, and the writer of
    its rows: its files are recorded at its end, or removed if it fails before its commit (one
    that fails at the commit itself keeps them, as the commit may have happened). The source need
    not be stored: a source seen before is skipped by returning, and takes no id (the writer
    takes one, in this transaction, when it is first asked for it)."""
    writer, committing = None, False
    try:
        with store.transaction() as conn:
            store.lock_for_ingest(conn)
            writer = _Writer(store, None, conn)
            yield writer
            writer.record(conn)
            committing = True
    except BaseException:
        if writer is not None and not committing:
            writer.discard()
        raise


def _take_source_id(conn: Connection) -> int:
    """A new source id, in `conn`'s transaction, which holds the ingest lock: never one given
    before, even to a source that was rolled back after its id was committed."""
    taken = max(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one()
                for t in (st.source_ids, st.ingested_sources))
    conn.execute(insert(st.source_ids).values(id=taken + 1))
    return taken + 1


def _open_source(conn: Connection, kind: str, name: str, plan: _LogPlan, source_id: int) -> None:
    conn.execute(insert(st.ingested_sources).values(
        id=source_id, kind=kind, name=name, fingerprint=plan.fingerprint, start_offset=plan.start,
        end_offset=plan.start, continues=plan.continues, partial_from=plan.partial_from,
        first_line=plan.first_line, last_line=plan.first_line - 1, lines=0, stored="{}", quarantined=0,
        ingested_at=utc_now()))


def _close_source(conn: Connection, source_id: int, result: SourceResult, end: int, last_line: int) -> None:
    conn.execute(update(st.ingested_sources).where(st.ingested_sources.c.id == source_id).values(
        end_offset=end, last_line=last_line, lines=result.lines,
        stored=json.dumps({**result.stored, "items": result.items} if result.items else result.stored),
        quarantined=result.quarantined))


class _Writer:
    """Where one source's rows go. A database's tables are written in `conn`, the source's
    transaction. A lake's tables are written as files, listed in `files` until `record` commits
    them with the source (or `discard` removes them). Without `conn` (a lake's writer that holds
    no lock while it writes), new movie keys are taken in short transactions of their own."""

    def __init__(self, store: st.Store, source_id: int | None, conn: Connection | None = None):
        self.store, self._source_id, self.conn = store, source_id, conn
        self.keys: dict[str, int] = {}
        self.files: list[dict] = []

    @property
    def source_id(self) -> int:
        if self._source_id is None:
            self._source_id = _take_source_id(self.conn)
        return self._source_id

    def _in_lake(self, table) -> bool:
        return self.store.lake is not None and table.name in LAKE_TABLES

    def insert(self, table, df: pd.DataFrame) -> None:
        if self._in_lake(table):
            self.store.lake.write(table, df, self.files)
        else:
            self.store.insert(self.conn, table, df)

    def upsert(self, table, df: pd.DataFrame, key: str | list[str], combine: dict[str, str] | None = None) -> None:
        if self._in_lake(table):  # a rollup's partial sums, added up by its readers
            self.store.lake.write(table, df, self.files)
        else:
            self.store.upsert(self.conn, table, df, key, combine)

    def keys_for(self, movie_id: pd.Series) -> np.ndarray:
        """Movie keys for a categorical column of movie ids."""
        cat = movie_id.astype("category").cat
        if len(cat.categories) == 0:
            return np.zeros(len(movie_id), dtype=np.int64)
        ids = list(cat.categories)
        if self.conn is not None:
            keys = self.store.movie_keys(self.conn, ids, self.keys)
        elif all(m in self.keys for m in ids):
            keys = np.fromiter((self.keys[m] for m in ids), dtype=np.int64, count=len(ids))
        else:  # new ids: read the keys other writers took since, and take the rest
            with self.store.transaction() as conn:
                self.store.lock_for_ingest(conn)
                self.keys.clear()
                keys = self.store.movie_keys(conn, ids, self.keys)
        return keys[cat.codes.to_numpy()]

    def record(self, conn: Connection) -> None:
        if self.files:
            self.store.lake.record(conn, self.files)

    def discard(self) -> None:
        if self.files:
            self.store.lake.discard(self.files)


def _store_events(writer: _Writer, parsed: ev.ParsedEvents, last_time=None):
    """Store one parsed piece of a log; returns the time of its last event (or `last_time`),
    which dates the malformed lines at the start of the next piece."""
    source_id = writer.source_id
    _store_ratings(writer, parsed.ratings)
    w = parsed.watches
    movie_keys = writer.keys_for(w["movie_id"])
    writer.insert(st.watches, pd.DataFrame({
        "source_id": source_id, "line": w["line"], "time": w["time"], "user_id": w["user_id"],
        "movie_key": movie_keys, "minute": w["minute"]}))
    hours = pd.DataFrame({"user_id": w["user_id"].to_numpy(), "movie_key": movie_keys,
                          "hour": w["time"].to_numpy(dtype="datetime64[h]").astype(np.int64)})
    rollup = hours.groupby(["user_id", "hour", "movie_key"]).size().rename("minutes").reset_index()
    writer.upsert(st.watch_hours, rollup, key=["user_id", "hour", "movie_key"], combine={"minutes": "add"})
    spans = activity.quarter_spans(pd.DataFrame({"user_id": w["user_id"].to_numpy(), "movie_key": movie_keys,
                                                 "time": w["time"].to_numpy()}), "movie_key")
    writer.upsert(st.watch_spans, spans, key=["user_id", "quarter", "movie_key"],
                  combine={"first_at": "min", "last_at": "max"})
    r = parsed.recommendations
    writer.insert(st.recommendations, pd.DataFrame({
        "source_id": source_id, "line": r["line"], "time": r["time"], "user_id": r["user_id"],
        "server": r["server"].astype(object), "status": r["status"], "latency_ms": r["latency_ms"],
        "n_items": r["n_items"], "error": r["error"]}))
    i = parsed.items
    request = pd.Index(r["line"]).get_indexer(i["line"])  # each item's request: its time and user go with it
    writer.insert(st.recommendation_items, pd.DataFrame({
        "source_id": source_id, "line": i["line"], "rank": i["rank"], "movie_key": writer.keys_for(i["movie_id"]),
        "time": r["time"].to_numpy()[request], "user_id": r["user_id"].to_numpy()[request]}))
    return _store_rejects(writer, parsed.rejects, parsed, last_time)


def _store_ratings(writer: _Writer, ratings: pd.DataFrame) -> None:
    writer.insert(st.ratings, pd.DataFrame({
        "source_id": writer.source_id, "line": ratings["line"], "time": ratings["time"],
        "user_id": ratings["user_id"], "movie_key": writer.keys_for(ratings["movie_id"]),
        "rating": ratings["rating"]}))


def _store_users(writer: _Writer, users: pd.DataFrame) -> None:
    """Users, each replacing what was stored of it: its typed columns, and the attributes this
    source has columns for (an empty value clears one); attributes it has no column for stay."""
    typed = list(formats.SCHEMAS["users"])
    writer.upsert(st.users, users[typed].assign(source_id=writer.source_id), key="user_id")
    _store_attributes(writer, user_attributes, "user_id", users["user_id"], users, "users")


def _store_movies(writer: _Writer, movies: pd.DataFrame) -> None:
    """Movies as users are stored: typed columns replaced, attributes upserted by name."""
    movie_keys = writer.keys_for(movies["movie_id"])
    frame = pd.DataFrame({"movie_key": movie_keys,
                          "title": movies["title"], "year": movies["year"], "genres": movies["genres"],
                          "source_id": writer.source_id})
    writer.upsert(st.movies, frame, key="movie_key")
    _store_attributes(writer, movie_attributes, "movie_key", pd.Series(movie_keys), movies, "movies")


def _store_attributes(writer: _Writer, table, key: str, ids: pd.Series, df: pd.DataFrame, kind: str) -> None:
    """One row per entity (`ids`, in the order of `df`'s rows) and attribute column of `df`."""
    names = formats.attribute_columns(df, kind)
    if not names or df.empty:
        return
    writer.upsert(table, pd.DataFrame({
        key: np.tile(ids.to_numpy(dtype=np.int64), len(names)),
        "name": np.repeat(np.array(names, dtype=object), len(df)),
        "value": np.concatenate([df[name].to_numpy(dtype=object) for name in names]),
    }), key=[key, "name"])


def _store_rejects(writer: _Writer, rejects: pd.DataFrame, parsed: ev.ParsedEvents | None = None, last_time=None):
    frame = pd.DataFrame({"source_id": writer.source_id, "file": rejects["source"], "line": rejects["line"],
                          "raw": rejects["raw"], "reason": rejects["reason"]})
    if parsed is not None:
        frame["near_time"], last_time = _near_times(parsed, rejects["line"].to_numpy(), last_time)
    writer.insert(st.quarantine, frame)
    return last_time


def _near_times(parsed: ev.ParsedEvents, lines: np.ndarray, before=None) -> tuple[np.ndarray, object]:
    """When each rejected line happened, as far as a time-ordered log tells: the time of the
    nearest earlier event of the source (`before` carries it across pieces), else of the first
    event after it, else the time of ingestion. Also the time of the piece's last event."""
    events = pd.concat([parsed.watches[["line", "time"]], parsed.ratings[["line", "time"]],
                        parsed.recommendations[["line", "time"]]]).sort_values("line")
    if events.empty:
        fallback = before if before is not None else utc_now().to_datetime64()
        return np.full(len(lines), fallback, dtype="datetime64[ns]"), before
    times, event_lines = events["time"].to_numpy(), events["line"].to_numpy()
    i = np.searchsorted(event_lines, lines) - 1
    earlier = np.where(i >= 0, times[np.maximum(i, 0)], before if before is not None else times[0])
    return earlier.astype("datetime64[ns]"), times[-1]

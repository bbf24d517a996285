"""Ingestion and run recording under attack, on a real SQLite file and a real PostgreSQL: logs
rotated while a real ingest process reads them, logs that fork from another's content, several
processes opening a new database at once, half-written lines read again, and runs whose results
cannot be recorded. Each runs on a lake too (its events in Parquet files, the manifest in SQLite):
$RECAUDIT_LAKE names it, so the ingest processes these tests start use it as well."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from recaudit.audits import store as st
from recaudit.audits.ingest import ingest
from support import per_source_counts_add_up, stored_watches, watch_lines


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "lake"])
def db_url(request, tmp_path, monkeypatch) -> str:
    """The database of each test here: an SQLite file, PostgreSQL, or an SQLite manifest of a lake."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_schema_url")
    if request.param == "lake":
        monkeypatch.setenv("RECAUDIT_LAKE", str(tmp_path / "lake"))
    return f"sqlite:///{tmp_path / 'recaudit.db'}"


def _reading(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open and has read past its first 64 KiB (Linux /proc):
    it is fingerprinting or parsing it, not just looking at its first line."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    if int(info.readline().split()[1]) > 64 << 10:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def test_a_log_rotated_while_a_real_ingest_reads_it_loses_nothing_and_stores_nothing_twice(db_url, tmp_path):
    """The log is renamed and a new one written under its name as soon as the ingest process
    has it open, which is inside the window where the path used to be opened a second time."""
    old_lines, new_lines = 150_000, 1_000
    code = "import sys; from recaudit.audits.store import Store; from recaudit.audits.ingest import ingest; " \
           "ingest(Store(sys.argv[1]), [sys.argv[2]])"
    for attempt in range(3):
        log = tmp_path / f"try{attempt}" / "events.log"
        log.parent.mkdir()
        log.write_bytes(watch_lines(10 + attempt, old_lines))
        proc = subprocess.Popen([sys.executable, "-c", code, db_url, str(log)])
        while not _reading(proc.pid, log) and proc.poll() is None:
            time.sleep(0.0005)
        assert proc.poll() is None, "the ingest ended before it was seen reading the log"
        log.rename(log.with_name("events.log.1"))
        log.write_bytes(watch_lines(100 + attempt, new_lines))
        assert proc.wait(timeout=300) == 0
        # The service's next pass reads both files: each line must be stored exactly once.
        store = st.Store(db_url)
        ingest(store, [str(log.with_name("events.log.1")), str(log)])
        watches = stored_watches(store)
        assert (watches.user_id == 10 + attempt).sum() == old_lines
        assert (watches.user_id == 100 + attempt).sum() == new_lines
        assert not watches.duplicated().any()
        per_source_counts_add_up(store)
        store.close()


def test_a_log_that_shares_its_first_lines_with_a_continued_source_is_stored(store, tmp_path):
    head, more, other = watch_lines(1, 1000), watch_lines(1, 1000, start=1000), watch_lines(2, 500)
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(head)
    ingest(store, [str(a)])
    a.write_bytes(head + more)
    assert ingest(store, [str(a)]).sources[0].first_line == 1001
    b.write_bytes(head + other)  # the same first 1,000 lines, then lines of its own
    result = ingest(store, [str(b)]).sources[0]
    assert (result.status, result.first_line, result.lines) == ("ingested", 1001, 500)
    watches = stored_watches(store)
    assert ((watches.user_id == 1).sum(), (watches.user_id == 2).sum()) == (2000, 500)
    assert ingest(store, [str(a), str(b)]).totals()["lines"] == 0  # and neither is read again
    per_source_counts_add_up(store)


def test_concurrent_ingests_of_a_growing_log_store_every_line_once(db_url, tmp_path):
    log = tmp_path / "live.log"
    log.write_bytes(b"")
    batches, size = 40, 250

    def grow():
        for i in range(batches):
            with open(log, "ab") as f:
                f.write(watch_lines(7, size, start=i * size))

    def ingest_repeatedly(done: threading.Event, errors: list):
        own = st.Store(db_url)
        try:
            while not done.is_set():
                ingest(own, [str(log)])
        except Exception as exc:  # reported below: a thread's exception would be lost
            errors.append(exc)
        finally:
            own.close()

    done, errors = threading.Event(), []
    readers = [threading.Thread(target=ingest_repeatedly, args=(done, errors)) for _ in range(2)]
    for t in readers:
        t.start()
    grow()
    done.set()
    for t in readers:
        t.join()
    assert not errors
    store = st.Store(db_url)
    ingest(store, [str(log)])
    watches = stored_watches(store)
    assert len(watches) == batches * size and not watches.duplicated().any()
    per_source_counts_add_up(store)
    store.close()


def test_several_processes_opening_a_new_database_at_once_all_succeed(db_url, tmp_path):
    """They wait, imports done, on a barrier (a file that appears), then all create the schema
    of an empty database at the same moment."""
    go = tmp_path / "go"
    code = ("import os, sys, time; from recaudit.audits.store import Store; open(sys.argv[3], 'w').close(); "
            "[time.sleep(0.001) for _ in iter(lambda: os.path.exists(sys.argv[2]), True)]; Store(sys.argv[1]).close()")
    ready = [tmp_path / f"ready{i}" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url, str(go), str(r)], stderr=subprocess.PIPE)
             for r in ready]
    deadline = time.monotonic() + 120  # a bound on waiting, not an assertion on speed
    while not all(r.exists() for r in ready) and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()
    failures = [p.stderr.read().decode() for p in procs if p.wait(timeout=120) != 0]
    assert not failures, failures[0]
    store = st.Store(db_url)
    assert store.count("ingested_sources") == 0
    store.close()


def test_a_half_written_line_read_again_leaves_every_source_count_equal_to_its_rows(store, tmp_path):
    log = tmp_path / "live.log"
    good = b"2024-01-01T00:00:00,1,GET /data/m/a+2001/0.mpg\n"
    # Each growth leaves a different kind of fragment at the end: a watch, a recommendation,
    # and a line that is malformed until it is whole.
    fragments = [(b"2024-01-01T00:00:01,1,GET /data/m/a+2001/1", b"5.mpg\n"),
                 (b"2024-01-01T00:00:02,1,recommendation request s:8082, status 200, result: a+2001, b+2002",
                  b", c+2003, 12 ms\n"),
                 (b"2024-01-01T00:00:03,1,GET /rat", b"e/a+2001=4\n")]
    content = good
    log.write_bytes(content)
    ingest(store, [str(log)])
    for cut, rest in fragments:
        content += cut
        log.write_bytes(content)
        ingest(store, [str(log)])
        per_source_counts_add_up(store)
        content += rest
        log.write_bytes(content)
        ingest(store, [str(log)])
        per_source_counts_add_up(store)
    assert store.count("watches") == 2 and store.count("ratings") == 1 and store.count("recommendations") == 1
    assert store.count("quarantine") == 0 and store.count("recommendation_items") == 3
    with store.engine.connect() as conn:
        recorded = conn.execute(select(st.ingested_sources.c.lines)).scalars().all()
    assert sum(recorded) == 4  # every whole line counted once


def test_a_run_with_a_very_long_server_name_is_recorded_and_finished(store, tmp_path):
    """A 300-character server name makes metric keys longer than any VARCHAR(255)."""
    from recaudit.audits.config import load as load_config
    from recaudit.audits.run import run

    server = "s" * 300 + ":8082"
    day = pd.Timestamp("2024-01-01")
    lines = []
    for i in range(40):
        t = (day + pd.Timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S")
        lines.append(f"{t},{i},recommendation request {server}, status 200, result: a+2001, b+2002, 10 ms\n")
        lines.append(f"{t},{i},GET /data/m/a+2001/0.mpg\n")
    (tmp_path / "events.log").write_text("".join(lines))
    ingest(store, [str(tmp_path / "events.log")])
    done = run(store, day, day + pd.Timedelta(days=1), load_config(None), only=["online"], out=tmp_path / "out")
    runs = store.runs()
    assert runs[0]["id"] == done.run_id and runs[0]["status"] != "running" and runs[0]["error"] is None
    with store.engine.connect() as conn:
        keys = conn.execute(select(st.metrics.c.key).where(st.metrics.c.run_id == done.run_id)).scalars().all()
    assert any(server in k for k in keys)


def test_a_run_whose_results_cannot_be_written_is_marked_errored_with_the_reason(store, tmp_path):
    from recaudit.audits.config import load as load_config
    from recaudit.audits.run import run

    (tmp_path / "events.log").write_bytes(watch_lines(1, 10))
    ingest(store, [str(tmp_path / "events.log")])
    (tmp_path / "file").write_text("a file, not a directory")
    day = pd.Timestamp("2024-01-01")
    with pytest.raises(OSError):
        run(store, day, day + pd.Timedelta(days=1), load_config(None), only=["feedback"], out=tmp_path / "file" / "out")
    with store.engine.connect() as conn:
        row = conn.execute(select(st.audit_runs.c.status, st.audit_runs.c.error, st.audit_runs.c.finished_at)).one()
    assert row.status == "errored" and row.finished_at is not None
    assert "Not a directory" in row.error


# The tables whose shape changed, as the previous version created them.
_BEFORE = """
CREATE TABLE ingested_sources (
    id {serial} NOT NULL, kind VARCHAR(16) NOT NULL, name TEXT NOT NULL,
    fingerprint VARCHAR(64) NOT NULL, continues VARCHAR(64), partial_from BIGINT,
    start_offset BIGINT NOT NULL, end_offset BIGINT NOT NULL, first_line BIGINT NOT NULL,
    last_line BIGINT NOT NULL, lines BIGINT NOT NULL, stored TEXT NOT NULL, quarantined BIGINT NOT NULL,
    ingested_at {time} NOT NULL, PRIMARY KEY (id), UNIQUE (fingerprint), UNIQUE (continues));
CREATE TABLE metrics (run_id INTEGER NOT NULL, key VARCHAR(255) NOT NULL, value FLOAT, PRIMARY KEY (run_id, key));
CREATE TABLE audit_runs (
    id {serial} NOT NULL, started_at {time} NOT NULL, finished_at {time}, since {time} NOT NULL,
    until {time} NOT NULL, audits TEXT NOT NULL, status VARCHAR(16) NOT NULL, path TEXT, PRIMARY KEY (id))
"""


def test_a_database_of_the_previous_version_is_upgraded_and_takes_forks_and_long_keys(db_url, tmp_path):
    from sqlalchemy import create_engine

    url = st.resolve_url(db_url)
    engine = create_engine(url)
    types = {"serial": "SERIAL", "time": "TIMESTAMP"} if url.startswith("postgresql") else \
        {"serial": "INTEGER", "time": "BIGINT"}
    with engine.begin() as conn:
        for statement in _BEFORE.format(**types).split(";"):
            conn.exec_driver_sql(statement)
    engine.dispose()
    store = st.Store(db_url)
    head = watch_lines(1, 100)
    (tmp_path / "a.log").write_bytes(head)
    ingest(store, [str(tmp_path / "a.log")])
    (tmp_path / "a.log").write_bytes(head + watch_lines(1, 100, start=100))
    (tmp_path / "b.log").write_bytes(head + watch_lines(2, 10))
    ingest(store, [str(tmp_path / "a.log"), str(tmp_path / "b.log")])
    assert len(stored_watches(store)) == 210
    with store.transaction() as conn:
        conn.execute(st.metrics.insert().values(run_id=1, key="online.success_rate.server." + "s" * 400, value=1.0))
    run_id = store.start_run(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02"), ["online"])
    store.abandon_run(run_id, "a reason")
    assert store.runs()[0]["error"] == "a reason"
    store.close()


def test_a_gz_log_with_damaged_compressed_data_is_an_input_error_naming_it(store, tmp_path):
    import gzip as gz

    from recaudit.recsys.formats import InputError

    data = bytearray(gz.compress(watch_lines(1, 2000)))
    data[len(data) // 2: len(data) // 2 + 16] = b"\xff" * 16  # inside the deflate stream
    (tmp_path / "events.log.gz").write_bytes(bytes(data))
    with pytest.raises(InputError, match="events.log.gz: cannot be read"):
        ingest(store, [str(tmp_path / "events.log.gz")])
    assert store.count("watches") == 0 and store.count("ingested_sources") == 0


def test_the_lease_is_renewed_while_an_ingest_holds_the_write_lock(db_url):
    """On SQLite the database has one write lock, which an ingest holds while it stores a log:
    the scheduler's lease must not wait behind it (it would step down mid-job)."""
    ingesting, scheduler = st.Store(db_url), st.Store(db_url)
    try:
        with ingesting.transaction() as conn:
            ingesting.lock_for_ingest(conn)
            assert scheduler.take_lease("scheduler", "me", 30) == "me"
            assert scheduler.take_lease("scheduler", "other", 30) == "me"
    finally:
        ingesting.close()
        scheduler.close()

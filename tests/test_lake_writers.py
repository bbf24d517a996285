"""Several writers ingesting into one lake at once, its manifest in a real SQLite file and in a real
PostgreSQL: a writer parses and writes its files while another commits; one that finds its lines
committed by another first removes its files and stores nothing twice; one whose plan still holds
commits the files it wrote; new movie keys are taken once each; processes started together store
every line once; and an id taken by a writer killed with ``kill -9`` is never given again.

A writer is held in the middle of its log by its row check (called on each parsed piece), so
these tests order the writers without relying on timing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from recaudit.audits import store as st
from recaudit.audits.ingest import ingest
from recaudit.audits.schema import lake_files
from support import per_source_counts_add_up, stored_watches, watch_lines

CHUNK = 16 << 10  # several pieces per log, so that a writer can be held between two of them
WAIT = 120  # a bound on waiting for a thread or a process, not an assertion on speed


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def manifest_url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_schema_url")
    return f"sqlite:///{tmp_path / 'manifest.db'}"


def open_lake(url: str, tmp_path: Path) -> st.Store:
    return st.Store(url, lake=str(tmp_path / "lake"))


def files_on_disk(tmp_path: Path) -> set[str]:
    lake = tmp_path / "lake"
    return {str(p.relative_to(lake)) for p in lake.rglob("*.parquet*")}


def files_recorded(store: st.Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(select(lake_files.c.path)).scalars())


class Held:
    """An ingest in a thread of its own, held until `release`: after its first piece is stored,
    before its second (or, with `line`, before the piece holding that line is stored: all of the
    log is read then, and the source not committed)."""

    def __init__(self, url: str, tmp_path: Path, log: Path, line: int | None = None):
        self.line = line
        self.store = open_lake(url, tmp_path)
        self.holding, self.go = threading.Event(), threading.Event()
        self.result, self.error, self.pieces = None, None, 0
        self.thread = threading.Thread(target=self._run, args=(log,))
        self.thread.start()
        assert self.holding.wait(WAIT), self.error

    def _check(self, parsed, name):
        self.pieces += 1
        due = self.pieces == 2 if self.line is None else \
            self.line in set(parsed.watches["line"]) | set(parsed.rejects["line"])
        if due:
            self.holding.set()
            self.go.wait(WAIT)
        return parsed

    def _run(self, log: Path):
        try:
            self.result = ingest(self.store, [str(log)], chunk_bytes=CHUNK, check=self._check).sources[0]
        except BaseException as exc:  # reported by `release`: a thread's exception would be lost
            self.error = exc
            self.holding.set()

    def release(self):
        self.go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        self.store.close()
        return self.result


def test_a_writer_commits_another_log_while_one_is_in_the_middle_of_its_own(manifest_url, tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    # a's first lines are of 10 movies, its later ones of 40: it meets 30 movies only after the
    # other writer has taken their keys, and must use those.
    a.write_bytes(watch_lines(1, 1000, movies=10) + watch_lines(1, 2000, start=1000, movies=40))
    b.write_bytes(watch_lines(2, 2000, movies=60))
    held = Held(manifest_url, tmp_path, a)
    other = open_lake(manifest_url, tmp_path)
    assert ingest(other, [str(b)], chunk_bytes=CHUNK).sources[0].status == "ingested"  # not waiting for a
    assert held.release().status == "ingested"
    watches = other.read("watches")
    assert ((watches.user_id == 1).sum(), (watches.user_id == 2).sum()) == (3000, 2000)
    assert not watches[["user_id", "minute"]].duplicated().any()
    # Each movie id has one key, whichever writer took it first.
    movies = watches.user_id.map({1: 40, 2: 60}).where((watches.user_id == 2) | (watches.minute >= 1000), 10)
    assert (watches.movie_id == "m" + (watches.minute % movies).astype(str) + "+2001").all()
    assert other.movie_ids().is_unique and len(other.movie_ids()) == 60
    per_source_counts_add_up(other)
    assert files_on_disk(tmp_path) == files_recorded(other)
    other.close()


def test_a_writer_whose_lines_another_committed_first_removes_its_files_and_stores_each_line_once(
        manifest_url, tmp_path):
    log = tmp_path / "live.log"
    log.write_bytes(watch_lines(7, 3000))
    held = Held(manifest_url, tmp_path, log)
    with open(log, "ab") as f:
        f.write(watch_lines(7, 1000, start=3000))
    other = open_lake(manifest_url, tmp_path)
    assert ingest(other, [str(log)], chunk_bytes=CHUNK).sources[0].lines == 4000  # the same lines, and more
    assert held.release().status == "unchanged"  # planned again: nothing was left for it
    watches = stored_watches(other)
    assert len(watches) == 4000 and not watches.duplicated().any()
    per_source_counts_add_up(other)
    assert files_on_disk(tmp_path) == files_recorded(other)  # its files were removed
    other.close()


def test_a_writer_that_another_log_s_commit_leaves_free_commits_the_files_it_wrote(manifest_url, tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(watch_lines(1, 3000))
    b.write_bytes(watch_lines(2, 5000))  # longer than a: it could have been a's beginning
    held = Held(manifest_url, tmp_path, a)
    written = files_on_disk(tmp_path)
    assert written, "the held writer had written no file"
    other = open_lake(manifest_url, tmp_path)
    ingest(other, [str(b)], chunk_bytes=CHUNK)
    result = held.release()
    assert (result.status, result.lines) == ("ingested", 3000)
    assert written <= files_recorded(other)  # planned again, the same: nothing rewritten
    assert files_on_disk(tmp_path) == files_recorded(other)
    per_source_counts_add_up(other)
    other.close()


def test_processes_started_together_on_logs_new_and_shared_store_every_line_once(manifest_url, tmp_path):
    """Four processes wait, imports done, on a barrier (a file that appears): three ingest logs of
    their own, of movies new to the lake and shared between them, and two of those also ingest the
    same log."""
    logs = []
    for user in range(1, 4):
        logs.append(tmp_path / f"own{user}.log")
        logs[-1].write_bytes(watch_lines(user, 4000, movies=25 * user))
    shared = tmp_path / "shared.log"
    shared.write_bytes(watch_lines(9, 6000, movies=90))
    open_lake(manifest_url, tmp_path).close()
    go = tmp_path / "go"
    code = ("import os, sys, time; from recaudit.audits.store import Store; from recaudit.audits.ingest import ingest; "
            "store = Store(sys.argv[1], lake=sys.argv[2]); open(sys.argv[4], 'w').close(); "
            "[time.sleep(0.001) for _ in iter(lambda: os.path.exists(sys.argv[3]), True)]; "
            "ingest(store, sys.argv[5:], chunk_bytes=16 << 10)")
    jobs = [[logs[0], shared], [logs[1], shared], [logs[2]], [shared]]
    ready = [tmp_path / f"ready{i}" for i in range(len(jobs))]
    procs = [subprocess.Popen([sys.executable, "-c", code, manifest_url, str(tmp_path / "lake"), str(go), str(r),
                               *map(str, paths)], stderr=subprocess.PIPE) for r, paths in zip(ready, jobs)]
    deadline = time.monotonic() + WAIT
    while not all(r.exists() for r in ready) and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.touch()
    failures = [p.stderr.read().decode() for p in procs if p.wait(timeout=WAIT) != 0]
    assert not failures, failures[0]
    store = open_lake(manifest_url, tmp_path)
    watches = store.read("watches")
    assert watches.groupby("user_id").size().to_dict() == {1: 4000, 2: 4000, 3: 4000, 9: 6000}
    assert not watches[["user_id", "minute"]].duplicated().any()
    movies = {1: 25, 2: 50, 3: 75, 9: 90}
    assert (watches.movie_id == "m" + (watches.minute % watches.user_id.map(movies)).astype(str) + "+2001").all()
    assert store.movie_ids().is_unique and len(store.movie_ids()) == 90
    per_source_counts_add_up(store)
    assert files_on_disk(tmp_path) == files_recorded(store)
    store.close()


def test_a_source_id_taken_by_a_writer_killed_mid_write_is_never_given_again(manifest_url, tmp_path):
    big = tmp_path / "big.log"
    big.write_bytes(watch_lines(5, 400_000))
    code = ("import sys; from recaudit.audits.store import Store; from recaudit.audits.ingest import ingest; "
            "ingest(Store(sys.argv[1], lake=sys.argv[2]), [sys.argv[3]], chunk_bytes=256 << 10)")
    proc = subprocess.Popen([sys.executable, "-c", code, manifest_url, str(tmp_path / "lake"), str(big)])
    deadline = time.monotonic() + WAIT
    while len(files_on_disk(tmp_path)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    proc.kill()
    proc.wait()
    store = open_lake(manifest_url, tmp_path)
    with store.engine.connect() as conn:
        taken = list(conn.execute(select(st.source_ids.c.id)).scalars())
    assert taken == [1] and store.count("ingested_sources") == 0 and not files_recorded(store)
    small = tmp_path / "small.log"
    small.write_bytes(watch_lines(6, 10))
    assert ingest(store, [str(small)]).sources[0].source_id == 2
    assert store.count("watches") == 10
    store.close()


def test_a_writer_whose_log_was_copied_and_truncated_meanwhile_stores_nothing_twice(manifest_url, tmp_path):
    """logrotate's copytruncate: the log is copied to live.log.1 and emptied while a writer holds
    what it read; another ingests the copy first. The held writer's file no longer begins with
    what it read, and the copy holds the same first and last lines (the last one malformed, which
    the copy's quarantine holds under the copy's name), so it removes its files and reads what
    the file holds now."""
    log = tmp_path / "live.log"
    log.write_bytes(watch_lines(7, 2999) + b"not a line of the log\n")
    held = Held(manifest_url, tmp_path, log, line=3000)  # read whole: the truncation does not cut its reading
    with open(log, "ab") as f:
        f.write(watch_lines(7, 1000, start=3000))
    (tmp_path / "live.log.1").write_bytes(log.read_bytes())
    log.write_bytes(watch_lines(8, 500))  # truncated in place, then written anew
    other = open_lake(manifest_url, tmp_path)
    assert ingest(other, [str(tmp_path / "live.log.1")]).sources[0].lines == 4000
    result = held.release()
    assert (result.status, result.lines) == ("ingested", 500)
    assert ingest(other, [str(tmp_path / "live.log.1"), str(log)]).totals()["lines"] == 0
    watches = stored_watches(other)
    assert watches.groupby("user_id").size().to_dict() == {7: 3999, 8: 500}
    assert not watches.duplicated().any() and other.count("quarantine") == 1
    per_source_counts_add_up(other)
    assert files_on_disk(tmp_path) == files_recorded(other)
    other.close()


def test_a_writer_of_a_log_s_tail_truncated_with_no_copy_while_another_log_committed_keeps_what_it_read(
        manifest_url, tmp_path):
    """No source committed meanwhile took a tail from where the held writer's starts (it goes on
    from the log's first 1,000 lines, stored before): its lines were read by no one else, and
    are committed as read."""
    log, other = tmp_path / "live.log", tmp_path / "other.log"
    log.write_bytes(watch_lines(7, 1000))
    committer = open_lake(manifest_url, tmp_path)
    ingest(committer, [str(log)])
    with open(log, "ab") as f:
        f.write(watch_lines(7, 2000, start=1000))
    held = Held(manifest_url, tmp_path, log, line=3000)
    log.write_bytes(watch_lines(8, 500))  # truncated in place (copytruncate, no copy kept), written anew
    other.write_bytes(watch_lines(2, 5000))
    ingest(committer, [str(other)])
    assert (held.release().lines, ingest(committer, [str(log)]).sources[0].lines) == (2000, 500)
    assert stored_watches(committer).groupby("user_id").size().to_dict() == {2: 5000, 7: 3000, 8: 500}
    per_source_counts_add_up(committer)
    assert files_on_disk(tmp_path) == files_recorded(committer)
    committer.close()


def test_a_writer_whose_log_was_truncated_after_a_shorter_read_of_it_committed_stores_nothing_twice(
        manifest_url, tmp_path):
    """Another writer read the log when it was shorter and committed; the log is then truncated.
    The held writer cannot tell the other's lines from its own, and gives them up."""
    log = tmp_path / "live.log"
    log.write_bytes(watch_lines(7, 2000))
    early = open_lake(manifest_url, tmp_path)
    with open(log, "rb") as snapshot:
        (tmp_path / "as.read").write_bytes(snapshot.read())
    with open(log, "ab") as f:
        f.write(watch_lines(7, 1000, start=2000))
    held = Held(manifest_url, tmp_path, log, line=3000)
    ingest(early, [str(tmp_path / "as.read")])  # what the other writer read: the log's first 2,000 lines
    log.write_bytes(watch_lines(8, 500))
    assert held.release().lines == 500
    watches = stored_watches(early)
    assert watches.groupby("user_id").size().to_dict() == {7: 2000, 8: 500} and not watches.duplicated().any()
    per_source_counts_add_up(early)
    assert files_on_disk(tmp_path) == files_recorded(early)
    early.close()


def test_a_writer_that_others_commits_keep_sending_back_plans_again_under_the_lock_and_commits(
        manifest_url, tmp_path, monkeypatch):
    """Each time the held writer plans again without the lock, another log is committed at once
    after it read the manifest, so that its plan is out of date again when it tries to commit.
    After a few such rounds it plans under the lock, where no one can commit in between."""
    from recaudit.audits import ingest as ingesting

    a = tmp_path / "a.log"
    a.write_bytes(watch_lines(1, 3000))
    real, rounds = ingesting._plan_log, {"unlocked": 0, "locked": 0}
    committer = open_lake(manifest_url, tmp_path)

    def plan_with_others_committing(conn, f, kind="events", begins=None):
        locked = conn.in_transaction()  # the round under the lock plans in the commit's transaction
        plan = real(conn, f, kind, begins)
        if begins is not None and locked:
            rounds["locked"] += 1
        elif begins is not None and rounds["unlocked"] < 10:  # a bound, should it never plan under the lock
            rounds["unlocked"] += 1
            other = tmp_path / f"other{rounds['unlocked']}.log"
            other.write_bytes(watch_lines(100 + rounds["unlocked"], 10))
            ingest(committer, [str(other)])
        return plan

    monkeypatch.setattr(ingesting, "_plan_log", plan_with_others_committing)
    held = Held(manifest_url, tmp_path, a)
    first = tmp_path / "first.log"
    first.write_bytes(watch_lines(2, 10))
    ingest(committer, [str(first)])
    assert held.release().status == "ingested"
    assert rounds == {"unlocked": ingesting._REPLANS_UNLOCKED, "locked": 1}
    assert (stored_watches(committer).user_id == 1).sum() == 3000
    per_source_counts_add_up(committer)
    committer.close()


def test_a_table_that_fails_on_a_lake_removes_its_files_and_a_skipped_source_takes_no_id(manifest_url, tmp_path,
                                                                                        monkeypatch):
    from recaudit.audits import ingest as ingesting

    users = tmp_path / "users.csv"
    users.write_text("user_id,age,gender,occupation\n1,30,F,writer\n2,x,M,artist\n")  # one quarantined
    store = open_lake(manifest_url, tmp_path)
    monkeypatch.setattr(ingesting, "_close_source", lambda *a: (_ for _ in ()).throw(OSError("gone")))
    with pytest.raises(OSError):
        ingest(store, [str(users)])
    monkeypatch.undo()
    assert store.count("ingested_sources") == 0 and files_on_disk(tmp_path) == set()  # its quarantine's file
    assert ingest(store, [str(users)]).sources[0].source_id == 1  # rolled back: nothing of it is left
    assert store.count("quarantine") == 1 and store.count("users") == 1
    log = tmp_path / "a.log"
    log.write_bytes(watch_lines(1, 10))
    for _ in range(3):  # seen, then unchanged: no id is taken for either
        ingest(store, [str(users), str(log)])
    with store.engine.connect() as conn:
        assert list(conn.execute(select(st.source_ids.c.id).order_by(st.source_ids.c.id)).scalars()) == [1, 2]
    store.close()


def test_a_source_that_fails_after_taking_back_a_half_written_line_leaves_no_file_of_it(manifest_url, tmp_path,
                                                                                        monkeypatch):
    from recaudit.audits import ingest as ingesting

    log = tmp_path / "live.log"
    whole = watch_lines(3, 100)
    log.write_bytes(whole[:-1])  # the last line without its newline: stored as a watch, taken back
    store = open_lake(manifest_url, tmp_path)
    ingest(store, [str(log)])
    log.write_bytes(whole + watch_lines(3, 50, start=100))
    real = ingesting._close_source
    monkeypatch.setattr(ingesting, "_close_source", lambda *a: (_ for _ in ()).throw(OSError("gone")))
    with pytest.raises(OSError):
        ingest(store, [str(log)])
    assert files_on_disk(tmp_path) == files_recorded(store)  # the minute's take-back file too
    monkeypatch.setattr(ingesting, "_close_source", real)
    ingest(store, [str(log)])
    watches = stored_watches(store)
    assert len(watches) == 150 and not watches.duplicated().any()
    per_source_counts_add_up(store)
    assert files_on_disk(tmp_path) == files_recorded(store)
    store.close()

"""Ingestion into a real SQLite file and a real PostgreSQL: round trips of every kind, nothing
lost, idempotence, growing logs, and all-or-nothing commits."""

import gzip
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from sqlalchemy import text

from recaudit.audits import activity
from recaudit.audits import store as st
from recaudit.audits.ingest import ingest
from recaudit.recsys import events as ev
from recaudit.recsys.formats import InputError
from support import run_cli


def parsed_log(world) -> ev.ParsedEvents:
    return ev.parse_file(world / "events.log")


def without_source(df: pd.DataFrame) -> pd.DataFrame:
    out = df.drop(columns=["source_id"]).sort_values(["line", "rank"] if "rank" in df else "line")
    out = out.reset_index(drop=True)
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object)
    return out


def plain(df: pd.DataFrame) -> pd.DataFrame:
    out = df.reset_index(drop=True).copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object)
    return out


def test_every_kind_of_event_round_trips_through_the_store(store, small_world):
    ingest(store, [str(small_world)])
    parsed = parsed_log(small_world)
    window = store.window()
    for name in ("watches", "ratings", "recommendations", "items"):
        stored = without_source(getattr(window, name))
        expected = plain(getattr(parsed, name))
        if "time" in expected:  # the store keeps microseconds
            expected["time"] = expected["time"].dt.floor("us")
        pd.testing.assert_frame_equal(stored, expected[stored.columns.tolist()], check_dtype=False, obj=name)
    users = pd.read_csv(small_world / "users.csv")
    assert window.users[users.columns].astype(object).values.tolist() == users.astype(object).values.tolist()
    movies = pd.read_csv(small_world / "movies.csv", keep_default_na=False)
    assert sorted(window.movies.movie_id) == sorted(movies.movie_id)


def test_lines_equal_stored_plus_quarantined_and_quarantine_keeps_raw_text_and_reason(store, small_world):
    summary = ingest(store, [str(small_world / "events.log")]).to_dict()
    parsed = parsed_log(small_world)
    stored = summary["stored"]
    assert summary["lines"] == stored["watch"] + stored["rate"] + stored["recommend"] + summary["quarantined"]
    assert summary["lines"] == parsed.lines
    assert summary["quarantined"] == len(parsed.rejects) > 0
    for table, kind in (("watches", "watch"), ("ratings", "rate"), ("recommendations", "recommend")):
        assert store.count(table) == stored[kind]
    q = store.read("quarantine").sort_values("line").reset_index(drop=True)
    assert q[["line", "raw", "reason"]].values.tolist() == parsed.rejects[["line", "raw", "reason"]].values.tolist()
    assert set(q.file) == {str(small_world / "events.log")}


def test_ingesting_the_same_content_twice_stores_nothing_new(store, small_world, tmp_path):
    first = ingest(store, [str(small_world)]).totals()
    counts = {t: store.count(t) for t in ("watches", "ratings", "recommendations", "recommendation_items",
                                          "quarantine", "users", "movies")}
    copy = tmp_path / "renamed.log"
    copy.write_bytes((small_world / "events.log").read_bytes())
    again = ingest(store, [str(small_world), str(copy)]).totals()
    assert first["lines"] > 0
    assert again["lines"] == 0 and again["skipped_sources"] == 4
    assert counts == {t: store.count(t) for t in counts}


def test_a_grown_log_contributes_only_its_new_lines(store, tmp_path):
    log = tmp_path / "live.log"
    head = b"2024-01-01T00:00:00,1,GET /data/m/a+2001/0.mpg\n2024-01-01T00:00:01,1,GET /rate/a+2001=4\n"
    log.write_bytes(head)
    ingest(store, [str(log)])
    with open(log, "ab") as f:
        f.write(b"2024-01-01T00:01:00,1,GET /data/m/a+2001/1.mpg\nnot a line\n")
    result = ingest(store, [str(log)]).sources[0]
    assert (result.status, result.first_line, result.lines, result.quarantined) == ("ingested", 3, 2, 1)
    assert store.read("watches").line.tolist() == [1, 3]
    assert store.read("quarantine").line.tolist() == [4]


def test_a_rewritten_log_under_the_same_name_is_ingested_as_new(store, tmp_path):
    log = tmp_path / "rotated.log"
    log.write_bytes(b"2024-01-01T00:00:00,1,GET /data/m/a+2001/0.mpg\n")
    ingest(store, [str(log)])
    log.write_bytes(b"2024-01-02T00:00:00,2,GET /data/m/b+2001/0.mpg\n2024-01-02T00:00:01,2,GET /data/m/b+2001/1.mpg\n")
    assert ingest(store, [str(log)]).sources[0].first_line == 1
    assert store.count("watches") == 3


def test_a_half_written_last_line_is_read_again_whole_when_the_log_grows(store, tmp_path):
    log = tmp_path / "live.log"
    log.write_bytes(b"2024-01-01T00:00:00,1,GET /data/m/a+2001/0.mpg\n2024-01-01T00:00:01,1,GET /data/m/a+2001/1")
    first = ingest(store, [str(log)]).totals()
    assert first["lines"] == 2 and first["stored"]["watch"] + first["quarantined"] == 2
    with open(log, "ab") as f:
        f.write(b"2.mpg\n2024-01-01T00:00:03,1,GET /rate/a+2001=4\n")
    again = ingest(store, [str(log)]).sources[0]
    assert (again.first_line, again.lines) == (2, 2)
    assert store.read("watches")[["line", "minute"]].values.tolist() == [[1, 0], [2, 12]]
    assert store.read("ratings").line.tolist() == [3]
    assert store.count("quarantine") == 0
    assert activity.watch_sessions(store, pd.Timestamp("2024-01-01"),
                                   pd.Timestamp("2024-01-02")).minutes.tolist() == [2]
    spans = store.frame(text("SELECT first_at, last_at FROM watch_spans"))
    assert (spans.first_at.tolist(), spans.last_at.tolist()) == ([pd.Timestamp("2024-01-01 00:00:00")],
                                                                 [pd.Timestamp("2024-01-01 00:00:01")])


def test_the_same_log_under_another_name_or_rotated_is_not_stored_twice(store, tmp_path):
    head = b"".join(b"2024-01-01T00:00:%02d,1,GET /data/m/a+2001/%d.mpg\n" % (i, i) for i in range(5))
    tail = b"".join(b"2024-01-01T00:01:%02d,2,GET /data/m/b+2002/%d.mpg\n" % (i, i) for i in range(3))
    (tmp_path / "events.log").write_bytes(head)
    ingest(store, [str(tmp_path / "events.log")])
    (tmp_path / "events.log.1").write_bytes(head + tail)  # rotated after it grew
    result = ingest(store, [str(tmp_path / "events.log.1")]).sources[0]
    assert (result.status, result.first_line, result.lines) == ("ingested", 6, 3)
    (tmp_path / "events.log.2.gz").write_bytes(gzip.compress(head + tail))  # and compressed
    assert ingest(store, [str(tmp_path / "events.log.2.gz")]).sources[0].status == "unchanged"
    assert store.count("watches") == 8


def test_malformed_lines_of_a_log_without_any_event_are_dated_at_ingestion(store, tmp_path):
    (tmp_path / "broken.log").write_bytes(b"2024;01;01 broken\nnot a line either\n")
    ingest(store, [str(tmp_path / "broken.log")])
    now = pd.Timestamp.now("UTC").tz_localize(None)
    assert len(store.quarantine_of_window(now - pd.Timedelta(hours=1), now + pd.Timedelta(hours=1))) == 2


@pytest.mark.parametrize("name, content, message", [
    ("users.csv", b"user_id,age,sex,occupation\n1,20,F,x\n", "expected the header user_id,age,gender,occupation"),
    ("events.log.gz", b"this is not gzip", "cannot be read"),
])
def test_a_mislabelled_file_is_an_input_error_not_a_log(recaudit_bin, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    done = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "x.db"), str(tmp_path / name))
    assert done.returncode == 2 and message in done.stderr.decode() and "Traceback" not in done.stderr.decode()


def test_gzip_logs_are_ingested_like_plain_ones(store, small_world, tmp_path):
    gz = tmp_path / "events.log.gz"
    gz.write_bytes(gzip.compress((small_world / "events.log").read_bytes()))
    assert ingest(store, [str(gz)]).totals()["lines"] == parsed_log(small_world).lines


def test_a_failure_mid_source_commits_nothing_and_a_rerun_stores_everything(store, small_world, monkeypatch):
    calls = {"n": 0}
    real_insert = st.Store.insert

    def failing_insert(self, conn, table, df):
        calls["n"] += 1
        if calls["n"] == 6:  # after some rows of the log are written
            raise OSError("disk full")
        return real_insert(self, conn, table, df)

    monkeypatch.setattr(st.Store, "insert", failing_insert)
    with pytest.raises(OSError):
        ingest(store, [str(small_world / "events.log")], chunk_bytes=64 << 10)
    assert calls["n"] == 6
    assert all(store.count(t) == 0 for t in ("watches", "ratings", "recommendations", "quarantine", "ingested_sources"))
    monkeypatch.setattr(st.Store, "insert", real_insert)
    assert ingest(store, [str(small_world / "events.log")]).totals()["lines"] == parsed_log(small_world).lines


def test_an_ingest_killed_mid_write_leaves_nothing_and_a_rerun_stores_everything(tmp_path, small_world):
    """SIGKILL while the write-ahead log grows, i.e. inside the source's transaction (the log is
    made larger until the kill lands mid-write)."""
    code = ("import sys; from recaudit.audits.store import Store; from recaudit.audits.ingest import ingest; "
            "ingest(Store(sys.argv[1]), [sys.argv[2]], chunk_bytes=256 << 10)")
    for copies in (40, 160, 640):
        db, big = tmp_path / f"killed{copies}.db", tmp_path / f"big{copies}.log"
        big.write_bytes((small_world / "events.log").read_bytes() * copies)
        proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(big)])
        wal = db.with_name(db.name + "-wal")
        while not (wal.exists() and wal.stat().st_size > 4 << 20) and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            break
    assert proc.poll() is None, "every ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = st.Store(str(db))
    assert store.count("watches") == 0 and store.count("ingested_sources") == 0
    assert ingest(store, [str(big)]).totals()["lines"] == copies * parsed_log(small_world).lines
    assert store.count("watches") == copies * len(parsed_log(small_world).watches)


def test_a_changed_users_file_updates_users_in_place(store, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("user_id,age,gender,occupation\n1,30,F,writer\n2,70,M,retired\n")
    ingest(store, [str(users)])
    users.write_text("user_id,age,gender,occupation\n1,31,F,writer\n3,15,M,K-12 student\n")
    result = ingest(store, [str(users)]).sources[0]
    assert result.stored == {"users": 2}
    assert store.read("users")[["user_id", "age"]].values.tolist() == [[1, 31], [2, 70], [3, 15]]


def test_bad_rows_of_users_and_movies_files_are_quarantined_with_their_line(store, tmp_path):
    users = tmp_path / "u.csv"
    users.write_text("user_id,age,gender,occupation\n1,30,F,writer\nx,3,M,a\n4,old,M,a\n1,22,M,dup\n5,40,M\n")
    movies = tmp_path / "m.csv"
    movies.write_text('movie_id,title,year,genres\na+2001,"A, the",2001,Drama\n,B,2002,Drama\nc+,C,,Comedy\n')
    summary = ingest(store, [str(users), str(movies)]).to_dict()
    assert summary["stored"]["users"] == 1 and summary["stored"]["movies"] == 2
    assert (summary["lines"] == 5 + 3
            == summary["stored"]["users"] + summary["stored"]["movies"] + summary["quarantined"])
    q = store.read("quarantine")
    assert q[["line", "reason"]].values.tolist() == [
        [3, "user_id not a non-negative integer"], [4, "age not an integer"],
        [5, "duplicate user_id (first at line 2)"], [6, "expected 4 fields, got 3"], [3, "movie_id empty"]]
    movies_read = store.read("movies").set_index("movie_id")
    assert movies_read.loc["a+2001", "title"] == "A, the" and pd.isna(movies_read.loc["c+", "year"])


def test_movielens_1m_directory_is_ingested_with_its_age_codes(store, tmp_path):
    ml = tmp_path / "ml-1m"
    ml.mkdir()
    (ml / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")
    (ml / "movies.dat").write_bytes("1::Misérables, Les (1995)::Drama|Musical\n2::Jumanji (1995)::Adventure\n"
                                    .encode("latin-1"))
    (ml / "ratings.dat").write_bytes(b"1::1::5::978300760\n2::2::3::978302109\n2::1::9::978301968\n")
    summary = ingest(store, [str(ml)]).to_dict()
    assert summary["stored"] == {"watch": 0, "rate": 2, "recommend": 0, "users": 2, "movies": 2, "predictions": 0}
    assert summary["quarantined"] == 1
    users = store.read("users").set_index("user_id")
    assert users.loc[1, "age_group"] == "under_18" and pd.isna(users.loc[1, "age"])
    assert users.loc[2, "age"] == 56
    ratings = store.read("ratings")
    assert ratings.time.tolist() == [pd.Timestamp(978300760, unit="s"), pd.Timestamp(978302109, unit="s")]
    assert store.read("movies").set_index("movie_id").loc["1", "title"] == "Misérables, Les"
    assert ingest(store, [str(ml)]).totals()["skipped_sources"] == 1


def test_reading_a_window_returns_events_in_since_until(store, small_world):
    ingest(store, [str(small_world)])
    since, until = pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")
    window = store.window(since, until)
    for frame in (window.watches, window.ratings, window.recommendations):
        assert len(frame) > 0 and frame.time.min() >= since and frame.time.max() < until
    all_watches = store.read("watches")
    assert len(window.watches) == ((all_watches.time >= since) & (all_watches.time < until)).sum()
    assert set(window.items.line) == set(window.recommendations.line)


def test_missing_path_is_an_input_error_before_anything_is_written(store, small_world):
    with pytest.raises(InputError, match="nope.log: no such file"):
        ingest(store, [str(small_world / "events.log"), str(small_world / "nope.log")])
    assert store.count("ingested_sources") == 0


def test_cli_ingest_json_reports_counts_and_stdin_is_read_in_batches(recaudit_bin, tmp_path, small_world):
    db = tmp_path / "cli.db"
    data = (small_world / "events.log").read_bytes()
    done = run_cli(recaudit_bin, "ingest", "--db", str(db), "--json", "-", input=data)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["lines"] == parsed_log(small_world).lines
    assert summary["lines"] == (sum(summary["stored"][k] for k in ("watch", "rate", "recommend"))
                                + summary["quarantined"])
    again = json.loads(run_cli(recaudit_bin, "ingest", "--db", str(db), "--json", "-", input=data).stdout)
    assert again["lines"] == 0 and again["skipped_sources"] >= 1


@pytest.mark.parametrize("args, message", [
    (["ingest", "--db", "{db}", "{missing}"], "{missing}: no such file or directory"),
    (["ingest", "--db", "postgresql://nobody@127.0.0.1:1/none", "{log}"], "cannot open database"),
])
def test_cli_input_errors_exit_2_with_one_line_and_no_traceback(recaudit_bin, tmp_path, small_world, args, message):
    values = {"db": str(tmp_path / "x.db"), "missing": str(tmp_path / "missing.log"),
              "log": str(small_world / "events.log")}
    done = run_cli(recaudit_bin, *[a.format(**values) for a in args])
    err = done.stderr.decode()
    assert done.returncode == 2
    assert err.startswith("error: ") and message.format(**values) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

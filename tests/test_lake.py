"""The lake: events as Parquet files partitioned by day, their manifest in the database.

An ingest killed while it writes files leaves files nobody reads; a source that fails part-way
leaves none counted; re-ingesting stores nothing twice; the files are plain Parquet a user's own
Spark or DuckDB can read; the command line, the environment and recaudit.toml all name the lake;
and the lake may be an s3:// URL (against moto's S3-compatible server on 127.0.0.1, the one
stand-in here: a cloud's own endpoint cannot run on this machine).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, func, select

from recaudit.audits import store as st
from recaudit.audits.ingest import ingest
from recaudit.audits.schema import lake_files
from support import run_cli


def manifest(store: st.Store) -> pd.DataFrame:
    with store.engine.connect() as conn:
        rows = conn.execute(select(lake_files)).mappings().all()
    return pd.DataFrame(rows)


def lake_store(tmp_path: Path, name: str = "recaudit.db", **kw) -> st.Store:
    return st.Store(f"sqlite:///{tmp_path / name}", lake=str(tmp_path / "lake"), **kw)


def test_events_are_parquet_files_by_day_that_add_up_to_what_was_stored(tmp_path, small_world):
    store = lake_store(tmp_path)
    summary = ingest(store, [str(small_world / f) for f in ("users.csv", "movies.csv", "events.log")])
    files = manifest(store)
    assert set(files.table_name) == {"watches", "ratings", "recommendations", "recommendation_items", "quarantine",
                                     "watch_hours", "watch_spans"}
    assert files.day.nunique() == 4  # four simulated days
    for table, kind in (("watches", "watch"), ("ratings", "rate"), ("recommendations", "recommend")):
        assert files[files.table_name == table]["rows"].sum() == summary.totals()["stored"][kind] == store.count(table)
    assert files[files.table_name == "quarantine"]["rows"].sum() == summary.totals()["quarantined"]
    # plain Parquet, hive-style partitions: a team's own engine reads the lake as it is
    on_disk = pq.read_table(tmp_path / "lake" / "watches").to_pandas()
    assert len(on_disk) == summary.totals()["stored"]["watch"]
    assert set(on_disk["day"].astype(str)) == set(files.day)
    items = pq.read_table(tmp_path / "lake" / "recommendation_items").to_pandas()
    assert {"time", "user_id"} <= set(items.columns), "an item carries its request's time and user"
    store.close()


def test_reingesting_the_same_files_stores_nothing_twice(tmp_path, small_world):
    store = lake_store(tmp_path)
    paths = [str(small_world / "events.log")]
    first = ingest(store, paths).totals()
    again = ingest(store, paths).totals()
    assert again["lines"] == 0 and first["lines"] > 0
    assert len(manifest(store)) == len(manifest(store).path.unique())
    assert store.count("watches") == first["stored"]["watch"]
    store.close()


def test_a_source_that_fails_part_way_leaves_none_of_its_files_counted_nor_on_disk(tmp_path, small_world,
                                                                                   monkeypatch):
    from recaudit.audits.lake import Lake

    real, calls = Lake.write, {"n": 0, "in place": 0}

    def failing(self, table, df, files):
        calls["n"] += 1
        if calls["n"] == 6:
            calls["in place"] = len(list((tmp_path / "lake").rglob("*.parquet")))
            raise OSError("disk full")
        return real(self, table, df, files)

    store = lake_store(tmp_path)
    monkeypatch.setattr(Lake, "write", failing)
    with pytest.raises(OSError):
        ingest(store, [str(small_world / "events.log")], chunk_bytes=64 << 10)
    assert calls["in place"] >= 5, "files were renamed into place before the failure"
    assert list((tmp_path / "lake").rglob("*.parquet*")) == []  # removed, as their source failed
    assert manifest(store).empty
    assert all(store.count(t) == 0 for t in ("watches", "ratings", "recommendations", "quarantine",
                                             "ingested_sources"))
    monkeypatch.setattr(Lake, "write", real)
    lines = ingest(store, [str(small_world / "events.log")]).totals()["lines"]
    assert lines == sum(1 for _ in open(small_world / "events.log", "rb"))
    store.close()


def test_an_ingest_killed_while_it_writes_files_leaves_nothing_read_and_a_rerun_stores_everything(
        tmp_path, small_world):
    """SIGKILL once files of the source are in place but its transaction is not committed."""
    code = ("import sys; from recaudit.audits.store import Store; from recaudit.audits.ingest import ingest; "
            "ingest(Store(sys.argv[1], lake=sys.argv[3]), [sys.argv[2]], chunk_bytes=256 << 10)")
    lake = tmp_path / "lake"
    for copies in (40, 160, 640):
        db, big = tmp_path / f"killed{copies}.db", tmp_path / f"big{copies}.log"
        big.write_bytes((small_world / "events.log").read_bytes() * copies)
        proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(big), str(lake)])
        while len(list(lake.rglob("*.parquet"))) < 20 and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            break
    assert proc.poll() is None, "every ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphans = len(list(lake.rglob("*.parquet")))
    assert orphans >= 20
    store = st.Store(str(db), lake=str(lake))
    assert store.count("watches") == 0 and store.count("ingested_sources") == 0 and manifest(store).empty
    lines = sum(1 for _ in open(big, "rb"))
    assert ingest(store, [str(big)]).totals()["lines"] == lines
    stored = store.count("watches") + store.count("ratings") + store.count("recommendations") + \
        store.count("quarantine")
    assert stored == lines
    store.close()


def test_the_command_line_the_environment_and_the_settings_file_name_the_lake(recaudit_bin, tmp_path, small_world):
    log = str(small_world / "events.log")
    done = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "a.db"), "--lake", str(tmp_path / "a"), log)
    assert done.returncode == 0, done.stderr
    (tmp_path / "recaudit.toml").write_text(f'[store]\nlake = "{tmp_path / "b"}"\nengine = "duckdb"\n')
    done = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "b.db"), "--config", str(tmp_path / "recaudit.toml"),
                   log)
    assert done.returncode == 0, done.stderr
    done = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "c.db"), log,
                   env={"RECAUDIT_LAKE": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr
    for name in "abc":
        assert list((tmp_path / name / "watches").rglob("*.parquet")), name
        engine = create_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(st.watches)).scalar() == 0  # not in the database
            assert conn.execute(select(func.count()).select_from(lake_files)).scalar() > 0
        engine.dispose()
    done = run_cli(recaudit_bin, "audit", "--db", str(tmp_path / "a.db"), "--lake", str(tmp_path / "a"),
                   "--only", "online", "--out", str(tmp_path / "out"), "--json")
    assert done.returncode == 0, done.stderr
    done = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "a.db"), "--engine", "presto", log)
    assert done.returncode == 2 and b"presto" in done.stderr and b"Traceback" not in done.stderr


@pytest.fixture
def s3_lake(monkeypatch):
    """A bucket on moto's S3-compatible server, on 127.0.0.1."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    from support import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    s3 = fs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", scheme="http", region="us-east-1",
                          allow_bucket_creation=True)
    s3.create_dir("lake-bucket")
    yield f"s3://lake-bucket/events?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", s3
    server.stop()


def test_a_lake_in_an_object_store_gives_the_same_frames_as_one_on_disk(tmp_path, small_world, s3_lake):
    url, s3 = s3_lake
    paths = [str(small_world / f) for f in ("users.csv", "movies.csv", "events.log")]
    remote = st.Store(f"sqlite:///{tmp_path / 'remote.db'}", lake=url)
    local = lake_store(tmp_path)
    ingest(remote, paths)
    ingest(local, paths)
    assert s3.get_file_info(fs_selector("lake-bucket/events/watches"))
    for name in ("watches", "ratings", "recommendations", "items", "quarantine"):
        pd.testing.assert_frame_equal(remote.read(name), local.read(name))
    remote.close()
    local.close()


def fs_selector(path: str):
    from pyarrow import fs

    return fs.FileSelector(path, recursive=True)


def test_log_times_finer_than_a_microsecond_are_stored_as_the_databases_store_them(tmp_path):
    log = tmp_path / "e.log"
    log.write_text("2024-01-01T00:00:00.123456789,1,GET /data/m/a+2001/3.mpg\n"
                   "2024-01-01T00:00:01,2,GET /data/m/a+2001/4.mpg\n")
    on_lake, in_database = lake_store(tmp_path), st.Store(f"sqlite:///{tmp_path / 'plain.db'}")
    for store in (on_lake, in_database):
        assert ingest(store, [str(log)]).totals()["stored"]["watch"] == 2
    pd.testing.assert_frame_equal(on_lake.read("watches"), in_database.read("watches"))
    assert on_lake.read("watches")["time"].iloc[0] == pd.Timestamp("2024-01-01 00:00:00.123456")
    on_lake.close()
    in_database.close()


def test_a_database_is_refused_with_the_wrong_idea_of_where_its_events_are(recaudit_bin, tmp_path, small_world):
    log = str(small_world / "events.log")
    assert run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "lake.db"), "--lake", str(tmp_path / "l"),
                   log).returncode == 0
    assert run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "plain.db"), log).returncode == 0
    without = run_cli(recaudit_bin, "audit", "--db", str(tmp_path / "lake.db"), "--out", str(tmp_path / "o"))
    assert without.returncode == 2 and b"are in a lake" in without.stderr and b"Traceback" not in without.stderr
    added = run_cli(recaudit_bin, "ingest", "--db", str(tmp_path / "plain.db"), "--lake", str(tmp_path / "m"), log)
    assert added.returncode == 2 and b"holds its events itself" in added.stderr


@pytest.mark.spark
def test_two_stores_of_one_process_read_their_own_lakes_on_spark(tmp_path, spark):
    stores = []
    for i, n in enumerate((3, 1)):
        where = tmp_path / str(i)
        where.mkdir()
        (where / "e.log").write_text("".join(f"2024-01-01T00:00:0{k},{k},GET /rate/a+2001=4\n" for k in range(n)))
        store = st.Store(f"sqlite:///{where / 'r.db'}", lake=str(where / "lake"), engine="spark")
        ingest(store, [str(where / "e.log")])
        stores.append(store)
    assert [len(s.read("ratings")) for s in stores + stores] == [3, 1, 3, 1]
    for s in stores:
        s.close()


@pytest.mark.parametrize("manifest_db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_query_sees_the_manifest_and_the_tables_it_copies_in_as_of_one_moment(request, manifest_db, tmp_path,
                                                                                small_world):
    """What a concurrent ingest commits between the reader's reads of the database (the files
    listed, the lines taken back, the users copied in) is seen by all of them or by none: else
    one query could count a re-read line twice, or a file's rows without their users."""
    url = (f"sqlite:///{tmp_path / 'manifest.db'}" if manifest_db == "sqlite"
           else request.getfixturevalue("postgres_schema_url"))
    store = st.Store(url, lake=str(tmp_path / "lake"))
    ingest(store, [str(small_world)])
    other = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    count = select(func.count()).select_from(lake_files)
    with store.snapshot() as conn:
        before = conn.execute(count).scalar()
        with other.begin() as writer:  # another process's ingest commits meanwhile
            writer.execute(lake_files.insert().values(table_name="watches", day="2024-01-09", path="x.parquet",
                                                      source_id=1, rows=0))
        assert conn.execute(count).scalar() == before
    with store.snapshot() as conn:
        assert conn.execute(count).scalar() == before + 1
    other.dispose()
    store.close()


def test_duckdb_keeps_to_the_memory_it_is_given_and_spills_outside_the_working_directory(
        recaudit_bin, tmp_path, small_world, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECAUDIT_DUCKDB_MEMORY", "300MB")
    store = lake_store(tmp_path)
    ingest(store, [str(small_world)])
    con = store.reader.backend.con
    (limit, spill), = con.execute("SELECT current_setting('memory_limit'), "
                                  "current_setting('temp_directory')").fetchall()
    assert limit.endswith("MiB") and float(limit.split()[0]) < 300
    assert not spill.startswith(str(tmp_path)) and Path(spill).is_dir()
    assert len(store.read("watches")) > 1000
    store.close()
    assert not Path(spill).exists() and not (tmp_path / ".tmp").exists()
    monkeypatch.setenv("RECAUDIT_DUCKDB_MEMORY", "plenty")
    done = run_cli(recaudit_bin, "audit", "--db", str(tmp_path / "recaudit.db"), "--lake", str(tmp_path / "lake"))
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    said = done.stderr.decode().strip().splitlines()
    assert len(said) == 1 and said[0].startswith("error: cannot open ") and \
        said[0].endswith(": $RECAUDIT_DUCKDB_MEMORY is 'plenty': give an amount such as 6GB or 512MB")

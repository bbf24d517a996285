"""The schema's revisions, on a real SQLite file and a real PostgreSQL: a new database records the
head, databases of earlier versions (tests/data, written by their own code) are upgraded on open
and keep their rows, a database at the head opens without the schema lock, and one upgraded by a
newer recaudit is refused."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import String, Text, create_engine, inspect, select, text

from recaudit.audits import migrations
from recaudit.audits import store as st
from recaudit.audits.ingest import ingest
from recaudit.recsys.formats import InputError

DATA = Path(__file__).resolve().parent / "data"
OLD = ("489ba0b", "75b1b4d")  # before forks of logs; the last before revisions were recorded
TABLES = ("ingested_sources", "movie_keys", "watches", "ratings", "recommendations", "recommendation_items",
          "quarantine", "watch_hours", "watch_spans", "audit_runs", "audit_results", "metrics", "findings", "job_runs")


def load_old(db_url: str, commit: str) -> None:
    """Make the database `commit`'s code made, from its dump."""
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    sql = (DATA / f"{commit}.{dialect}.sql").read_text()
    if dialect == "sqlite":
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            conn.executescript(sql)
        return
    engine = create_engine(st.resolve_url(db_url))
    with engine.begin() as conn:
        conn.connection.driver_connection.execute(sql)
    engine.dispose()


def _same_type(context, inspected, declared, inspected_type, declared_type) -> bool | None:
    """SQLite never enforced a VARCHAR's length, so upgrades leave its VARCHARs that are TEXT now."""
    if context.dialect.name == "sqlite" and isinstance(declared_type, Text) and isinstance(inspected_type, String):
        return False
    return None


def schema_at_head(store: st.Store) -> None:
    """The database records the head revision and has the tables the code declares."""
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [migrations.head()]
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": _same_type}), st.metadata) == []


def test_a_new_database_records_the_head_revision_and_has_the_declared_schema(db_url):
    store = st.Store(db_url)
    schema_at_head(store)
    store.close()


@pytest.mark.parametrize("commit", OLD)
def test_a_database_of_an_earlier_version_is_upgraded_on_open_and_keeps_its_rows(db_url, commit, tmp_path):
    load_old(db_url, commit)
    engine = create_engine(st.resolve_url(db_url))
    with engine.connect() as conn:
        before = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    engine.dispose()
    assert before["watches"] == 2 and before["metrics"] == 1 and before["quarantine"] == 1
    store = st.Store(db_url)
    schema_at_head(store)
    assert {t: store.count(t) for t in TABLES} == before
    [run] = store.runs()
    assert run["status"] == "findings"
    assert run["document"]["audits"]["online"]["metrics"] == {"online.success_rate": 0.25}
    assert store.latest_metrics()[["key", "value"]].values.tolist() == [["online.success_rate", 0.25]]
    assert store.read("watches").movie_id.tolist() == ["a+2001", "a+2001"]
    assert store.read("items").movie_id.tolist() == ["a+2001", "b+2002"]
    # New rows take new ids, and the columns added since take values.
    run_id = store.start_run(pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03"), ["online"])
    store.abandon_run(run_id, "a reason")
    assert run_id == run["id"] + 1 and store.runs()[0]["error"] == "a reason"
    with store.transaction() as conn:
        conn.execute(st.metrics.insert().values(run_id=run_id, key="online.success_rate.server." + "s" * 400))
        recorded = conn.execute(select(st.ingested_sources.c.id)).scalars().all()
    log = tmp_path / "new.log"  # 0006: a new source's id follows those recorded before it
    log.write_bytes(b"2024-01-03T00:00:00,1,GET /data/m/a+2001/0.mpg\n")
    assert ingest(store, [str(log)]).sources[0].source_id == max(recorded) + 1
    store.close()


def test_a_database_at_the_head_opens_while_another_process_holds_the_schema_lock(db_url):
    st.Store(db_url).close()
    if db_url.startswith("sqlite"):  # the schema lock is SQLite's write lock
        holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:  # the schema lock as the migrations take it: until the holder's transaction ends
        engine = create_engine(st.resolve_url(db_url))
        holder = engine.connect()
        holder.execute(text(f"SELECT pg_advisory_xact_lock({migrations._SCHEMA_LOCK})"))
    opened = []
    opener = threading.Thread(target=lambda: opened.append(st.Store(db_url).close()), daemon=True)
    opener.start()
    opener.join(timeout=10)  # a bound on waiting: the lock is held for as long as the test runs
    holder.close()  # ends the transaction, and with it the lock
    if not db_url.startswith("sqlite"):
        engine.dispose()
    assert opened, "opening a database at the head waited for the schema lock"


def test_a_database_upgraded_by_a_newer_recaudit_is_refused_in_one_line_naming_it_and_its_revision(db_url):
    st.Store(db_url).close()
    engine = create_engine(st.resolve_url(db_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    engine.dispose()
    with pytest.raises(InputError) as raised:
        st.Store(db_url)
    message = str(raised.value)
    database = db_url.removeprefix("sqlite:///") if db_url.startswith("sqlite") else "postgresql+psycopg://"
    assert "\n" not in message and database in message and "f00dfeed" in message and "newer recaudit" in message
    with engine.connect() as conn:  # and left as it was
        assert conn.execute(select(text("version_num")).select_from(text("alembic_version"))).scalar_one() == "f00dfeed"
    engine.dispose()


def test_the_scheduler_s_jobs_stored_by_an_earlier_version_call_the_packaged_service_and_keep_their_times(
        db_url, tmp_path):
    import pickle

    from recaudit.audits import config as configuration
    from recaudit.audits.schema import SCHEDULER_JOBS
    from recaudit.scheduler import service

    url = st.Store(db_url).url
    scheduler = service.build(url, None, configuration.load())
    due = {job.id: job.next_run_time for job in scheduler.get_jobs()}
    service.close(scheduler)
    # As an earlier version left them: the function named by its path before recaudit was one
    # package, and the schema at the revision before this one.
    engine = create_engine(url)
    with engine.begin() as conn:
        for job_id, blob in conn.execute(text(f"SELECT id, job_state FROM {SCHEDULER_JOBS}")).all():
            state = pickle.loads(blob)
            state["func"] = "scheduler.service:run_job"
            conn.execute(text(f"UPDATE {SCHEDULER_JOBS} SET job_state = :s WHERE id = :i"),
                         {"s": pickle.dumps(state), "i": job_id})
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        for table in ("user_attributes", "movie_attributes", "predictions"):  # added by 0003
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("DROP INDEX audit_runs_newest"))  # added by 0004, with the column
        conn.execute(text("ALTER TABLE audit_runs DROP COLUMN schedule"))
        for table in ("lake_files", "lake_forgotten", "source_ids"):  # added by 0005 and 0006
            conn.execute(text(f"DROP TABLE {table}"))
    engine.dispose()
    st.Store(db_url).close()
    scheduler = service.build(url, None, configuration.load())
    try:
        jobs = scheduler.get_jobs()
        assert {job.id: job.next_run_time for job in jobs} == due and len(due) > 0
        assert {job.func_ref for job in jobs} == {"recaudit.scheduler.service:run_job"}
    finally:
        service.close(scheduler)


def test_a_database_holding_someone_else_s_tables_of_the_same_names_is_refused_and_left_alone(db_url):
    engine = create_engine(st.resolve_url(db_url))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (user_id BIGINT PRIMARY KEY, email TEXT)"))
    with pytest.raises(InputError, match="holds tables named like recaudit's \\(users\\) that recaudit did not make"):
        st.Store(db_url)
    with engine.connect() as conn:  # not altered, and nothing added beside it
        assert list(conn.execute(text("SELECT * FROM users")).keys()) == ["user_id", "email"]
        assert inspect(conn).get_table_names() == ["users"]
    engine.dispose()


def test_runs_and_open_conditions_of_an_earlier_version_are_given_the_schedule_that_made_them(db_url):
    """0004: a condition a scheduled job opened goes on being judged by that job's runs, and one an
    ad-hoc audit opened by ad-hoc runs, after the upgrade as before it."""
    store = st.Store(db_url)
    result = {"status": "findings", "error": None, "seconds": 0.1, "metrics": {}, "findings": []}
    document = {"status": "findings", "audits": {"fairness": result}}
    for run_id in (1, 2):
        assert store.start_run("2024-01-01", "2024-01-02", ["fairness"]) == run_id
        store.finish_run(run_id, document, None)
    for job, detail in (("fairness", {"run_id": 1, "status": "findings", "alerts": 1}), ("ingest", {"watch": 5})):
        store.finish_job(store.start_job(job), "ok", json.dumps(detail))
    with store.transaction() as conn:
        conn.execute(st.open_conditions.insert(), [{"condition": "finding:abc", "alert_id": "a1", "opened_run_id": 1},
                                                   {"condition": "rule:gini-high", "alert_id": "a2",
                                                    "opened_run_id": 2}])
        # As 0003 left them: no schedule recorded.
        conn.execute(text("DROP INDEX audit_runs_newest"))
        conn.execute(text("ALTER TABLE audit_runs DROP COLUMN schedule"))
        for table in ("lake_files", "lake_forgotten", "source_ids"):  # added by 0005 and 0006
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
    store.close()
    store = st.Store(db_url)
    try:
        assert {r["id"]: r["schedule"] for r in store.runs()} == {1: "fairness", 2: None}
        with store.engine.connect() as conn:
            keys = sorted(conn.execute(select(st.open_conditions.c.condition)).scalars())
        assert keys == ["adhoc/rule:gini-high", "schedule:fairness/finding:abc"]
    finally:
        store.close()

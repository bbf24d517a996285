"""Writes the databases of earlier recaudit versions that tests/test_migrations.py upgrades, as
SQL: `.venv/bin/python tests/data/old_databases.py` (needs the git history; run from anywhere).

For each commit below, the code of that commit (its audits/ and recsys/, which then imported as
`audits` and `recsys`) ingests a small log and records a finished run in an SQLite file. The
file is dumped as it is (<commit>.sqlite.sql); for PostgreSQL (<commit>.postgresql.sql) the
same rows follow the CREATE statements that commit's metadata compiles to there.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMITS = {
    "489ba0b": "before forks of logs: UNIQUE(continues), VARCHAR columns, no audit_runs.error",
    "75b1b4d": "the last schema before revisions were recorded (no alembic_version)",
}
LOG = (b"2024-01-01T00:00:00,1,GET /data/m/a+2001/0.mpg\n"
       b"2024-01-01T00:00:01,1,GET /data/m/a+2001/1.mpg\n"
       b"2024-01-01T00:10:00,2,GET /rate/a+2001=4\n"
       b"2024-01-01T00:20:00,2,recommendation request s:8082, status 200, result: a+2001, b+2002, 12 ms\n"
       b"2024-01-01T00:30:00,3,GET /nonsense\n")
DOCUMENT = {"status": "findings", "audits": {"online": {
    "status": "findings", "error": None, "seconds": 0.5, "metrics": {"online.success_rate": 0.25},
    "findings": [{"audit": "online", "key": "online.success_rate", "kind": "threshold", "severity": "warning",
                  "message": "success rate 0.25 below 0.5", "value": 0.25, "threshold": 0.5,
                  "fingerprint": "0123456789abcdef0123456789abcdef"}]}}}


def build(commit: str, work: Path) -> None:
    """In a process whose `audits` is the commit's: the database, then both dumps."""
    import pandas as pd
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    from audits import store as st
    from audits.ingest import ingest

    assert Path(st.__file__).is_relative_to(work), st.__file__
    (work / "events.log").write_bytes(LOG)
    db = work / "old.db"
    store = st.Store(str(db))
    ingest(store, [str(work / "events.log")])
    run_id = store.start_run(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02"), ["online"])
    store.finish_run(run_id, DOCUMENT, work / "out")
    store.finish_job(store.start_job("ingest"), "ok", "1 source")
    with sqlite3.connect(db) as conn:
        (HERE / f"{commit}.sqlite.sql").write_text("\n".join(conn.iterdump()) + "\n")
    dialect = postgresql.dialect()
    out = [f"-- recaudit {commit}: {COMMITS[commit]}"]
    with store.engine.connect() as conn:
        for table in st.metadata.sorted_tables:
            out.append(f"{str(CreateTable(table).compile(dialect=dialect)).strip()};")
            out += [f"{CreateIndex(index).compile(dialect=dialect)};" for index in table.indexes]
            for row in conn.execute(select(table)).mappings():
                insert = table.insert().values(**row).compile(dialect=dialect, compile_kwargs={"literal_binds": True})
                out.append(f"{insert};")
            serial = [c.name for c in table.primary_key.columns if c.autoincrement is True]
            out += [f"SELECT setval(pg_get_serial_sequence('{table.name}', '{c}'), "
                    f"coalesce((SELECT max({c}) FROM {table.name}), 0) + 1, false);" for c in serial]
    lines = [line.rstrip() for statement in out for line in statement.splitlines()]
    (HERE / f"{commit}.postgresql.sql").write_text("\n".join(lines) + "\n")
    store.close()


def main() -> None:
    for commit in COMMITS:
        with tempfile.TemporaryDirectory() as tmp:
            tree = subprocess.run(["git", "-C", str(HERE.parents[1]), "archive", commit, "audits", "recsys"],
                                  check=True, capture_output=True).stdout
            tarfile.open(fileobj=io.BytesIO(tree)).extractall(tmp, filter="data")
            subprocess.run([sys.executable, __file__, "--build", commit, tmp], check=True,
                           env={"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin"}, cwd=tmp)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        build(sys.argv[2], Path(sys.argv[3]).resolve())
    else:
        main()

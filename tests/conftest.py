"""Shared fixtures: databases (a real SQLite file and a real PostgreSQL), simulated data, the
installed `recaudit` command and a browser. The helpers the tests import are in support.py."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from recaudit.recsys.simulate import Config, simulate

POSTGRES_URL = os.environ.get("RECAUDIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL to test against: skipped with a reason where none runs, except in CI."""
    import psycopg

    conninfo = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        psycopg.connect(conninfo, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = f"PostgreSQL not reachable at {POSTGRES_URL} ({str(exc).strip().splitlines()[0]})"
        if IN_CI:
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(f"{reason}; start one or set RECAUDIT_TEST_POSTGRES_URL")
    return POSTGRES_URL


@pytest.fixture
def postgres_schema_url(postgres_url: str):
    """A URL whose connections live in a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"recaudit_test_{uuid.uuid4().hex[:12]}"
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """Each store test runs on an SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recaudit.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def store(db_url):
    from recaudit.audits.store import Store

    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def spark():
    """This test session's one Spark session (local mode; starting it takes seconds): skipped with
    a reason where Java or pyspark is missing, except in CI."""
    reason = None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        reason = "no Java (Spark needs Java 17: apt-get install openjdk-17-jre-headless)"
    else:
        try:
            import pyspark  # noqa: F401
        except ImportError:
            reason = "pyspark is not installed (pip install -e '.[test]')"
    if reason:
        if IN_CI:
            pytest.fail(f"{reason}; CI must run the Spark tests")
        pytest.skip(reason)
    from recaudit.audits.engines import spark_session

    return spark_session()


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """Four simulated days, corrupt from day 2: every kind of line and of fault, small."""
    out = tmp_path_factory.mktemp("world")
    simulate(out, Config(users=300, movies=120, days=4, seed=7, inject=("corrupt",)))
    return out


@pytest.fixture(scope="session")
def recaudit_bin() -> str:
    """The installed console script, for what must run as a process of its own (run_process, Popen)."""
    path = Path(sys.executable).parent / "recaudit"
    found = str(path) if path.exists() else shutil.which("recaudit")
    if not found:
        pytest.fail("the recaudit console script is not installed: pip install -e '.[test]'")
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{reason}; CI must run the browser tests")
        pytest.skip(reason)
    return found


"""Shared fixtures: databases (a real SQLite file and a real PostgreSQL), simulated data, and
the installed `recaudit` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from recaudit.recsys.simulate import Config, simulate

ARTIFACTS = Path(os.environ.get("RECAUDIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
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
def small_world(tmp_path_factory) -> Path:
    """Four simulated days, corrupt from day 2: every kind of line and of fault, small."""
    out = tmp_path_factory.mktemp("world")
    simulate(out, Config(users=300, movies=120, days=4, seed=7, inject=("corrupt",)))
    return out


def seeded_services(tmp_path_factory, fault: str, seeds=range(10), **sizes):
    """For each seed, a simulated service without `fault` and one with it: yields (faulty,
    seed, config, directory), for the detection-rate tests."""
    for inject in ((), (fault,)):
        for seed in seeds:
            out = tmp_path_factory.mktemp(f"seed{seed}")
            cfg = Config(**sizes, seed=seed, inject=inject)
            simulate(out, cfg)
            yield bool(inject), seed, cfg, out


@pytest.fixture(scope="session")
def recaudit_bin() -> str:
    """The installed console script, run the way a user types it."""
    path = Path(sys.executable).parent / "recaudit"
    found = str(path) if path.exists() else shutil.which("recaudit")
    if not found:
        pytest.fail("the recaudit console script is not installed: pip install -e '.[test]'")
    return found


def run_cli(recaudit_bin: str, *args: str, input: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RECAUDIT_DATABASE_URL"}
    return subprocess.run([recaudit_bin, *args], input=input, capture_output=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{reason}; CI must run the browser tests")
        pytest.skip(reason)
    return found


def open_page(chromium, path: Path, name: str, viewport=(1200, 900)):
    """Load a page from disk; returns what a reviewer's browser saw: the page's text, every
    requested URL, console errors, dialogs, and layout facts."""
    from playwright.sync_api import sync_playwright

    seen = {"requests": [], "errors": [], "dialogs": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        seen["text"] = page.inner_text("body")
        seen["charts"] = page.locator("svg.chart").count()
        seen["findings"] = page.locator("#summary ul.findings li").count()
        seen["run_links"] = page.locator("#runs a").count()
        seen["overflow"] = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        browser.close()
    return seen

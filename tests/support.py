"""What the tests share besides fixtures (those are in conftest.py): running the command line,
in this process or as a real one, free ports and GETs, a webhook receiver, simulated services
a browser that opens report pages, and logs of watches with what checks how they were stored."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from sqlalchemy import func, select

from recaudit.audits import store as st
from recaudit.audits.urls import URL_ENV
from recaudit.recsys.simulate import Config, simulate
from recaudit.scheduler.cli import main

# What neither `import recaudit` nor `recaudit --help` may load: each takes a noticeable time to import.
HEAVY = ("pandas", "numpy", "pyarrow", "scipy", "sqlalchemy", "evidently", "great_expectations", "surprise", "pyspark")
ARTIFACTS = Path(os.environ.get("RECAUDIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


# -- the command line -----------------------------------------------------------------------------

def run_cli(recaudit_bin: str, *args: str, input: bytes | None = None, cwd=None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `recaudit ARGS` in this process and answer as run_process does: the exit status, and
    stdout and stderr as bytes; an uncaught exception leaves its traceback on stderr and status 1,
    as the interpreter would.

    No interpreter starts and nothing is imported again, so a run takes milliseconds instead of
    the seconds pandas and SQLAlchemy take to load. What a finished process would not leave
    behind is put back afterwards: the environment (during the run without $RECAUDIT_DATABASE_URL,
    so that only --db names the database, plus `env`), the working directory (`cwd` during the
    run), the logging setup (which the run starts without, as a new process does, so that a
    command's logging.basicConfig writes to its stderr) and the SIGTERM and SIGINT handlers.

    `recaudit_bin` is not run: it keeps the call that of run_process, so that a test moves
    between the two unchanged."""
    environ, where = dict(os.environ), os.getcwd()
    loggers = [logging.getLogger(), logging.getLogger("recaudit")]
    logging_state = [(logger, logger.level, logger.handlers[:]) for logger in loggers]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    os.environ.pop(URL_ENV, None)
    os.environ.update(env or {})
    loggers[0].handlers.clear()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(main, list(args), input=input, prog_name="recaudit")
    finally:
        os.chdir(where)
        os.environ.clear()
        os.environ.update(environ)
        for logger, level, attached in logging_state:
            logger.setLevel(level)
            logger.handlers[:] = attached
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    stderr = result.stderr_bytes
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info)).encode()
    return subprocess.CompletedProcess(["recaudit", *args], result.exit_code, result.stdout_bytes, stderr)


def run_process(recaudit_bin: str, *args: str, input: bytes | None = None, cwd=None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `recaudit_bin ARGS` as a process of its own, the way a user types it, without
    $RECAUDIT_DATABASE_URL (plus `env`): for what only a real process shows, such as the
    permissions of another user or the installed console script."""
    environ = {k: v for k, v in os.environ.items() if k != URL_ENV} | (env or {})
    return subprocess.run([recaudit_bin, *args], input=input, capture_output=True, cwd=cwd, env=environ, timeout=300)


# -- HTTP -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, an HTTP error status included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("content-type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read().decode()


class Receiver:
    """A webhook receiver: answers each request with the next planned (status, delay) or
    (status, delay, headers), else (200, `delay`). A request is recorded when it arrives, before
    the delay: a receiver sees an alert even when its answer comes too late."""

    def __init__(self, port: int = 0, plan=(), delay: float = 0.0):
        self.requests, self.plan = [], list(plan)
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):  # any method: a followed redirect arrives as a GET
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, pause, *headers = outer.plan.pop(0) if outer.plan else (200, delay)
                with outer.arrived:
                    outer.requests.append({"method": self.command, "headers": dict(self.headers), "body": body,
                                           "status": status})
                    outer.arrived.notify_all()
                time.sleep(pause)
                self.send_response(status)
                for name, value in (headers[0] if headers else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET = answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def wait_for(self, n: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= n, timeout=30), f"{n} requests never came"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# -- data and pages ---------------------------------------------------------------------------------

def seeded_services(tmp_path_factory, fault: str, seeds=range(10), **sizes):
    """For each seed, a simulated service without `fault` and one with it: yields (faulty,
    seed, config, directory), for the detection-rate tests."""
    for inject in ((), (fault,)):
        for seed in seeds:
            out = tmp_path_factory.mktemp(f"seed{seed}")
            cfg = Config(**sizes, seed=seed, inject=inject)
            simulate(out, cfg)
            yield bool(inject), seed, cfg, out


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


# -- stored logs -------------------------------------------------------------------------------

def watch_lines(user: int, n: int, start: int = 0, movies: int = 1) -> bytes:
    """`n` distinct watch lines of one user: minute i at second i of 2024-01-01, of movie
    m{i % movies}+2001 (a+2001 when there is one movie)."""
    day = pd.Timestamp("2024-01-01")
    return b"".join(b"%s,%d,GET /data/m/%s/%d.mpg\n" % (
        (day + pd.Timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S").encode(), user,
        b"a+2001" if movies == 1 else b"m%d+2001" % (i % movies), i) for i in range(start, start + n))


def stored_watches(store: st.Store) -> pd.DataFrame:
    return store.read("watches")[["user_id", "minute"]]


def per_source_counts_add_up(store: st.Store) -> None:
    """Each source's recorded counts: lines == stored + quarantined, and equal to its rows."""
    with store.engine.connect() as conn:
        sources = conn.execute(select(st.ingested_sources)).mappings().all()
    tables = {"watch": "watches", "rate": "ratings", "recommend": "recommendations"}
    for s in sources:
        stored = json.loads(s["stored"])
        assert s["lines"] == sum(stored.get(k, 0) for k in tables) + s["quarantined"], dict(s)
        for kind, table in {**tables, "quarantined": "quarantine"}.items():
            t = st.metadata.tables[table]
            rows = store.frame(select(func.count().label("n")).where(t.c.source_id == s["id"])).n.iloc[0]
            assert rows == (s["quarantined"] if table == "quarantine" else stored.get(kind, 0)), (kind, dict(s))

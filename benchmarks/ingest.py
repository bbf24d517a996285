"""Parse and ingest speed at a stated scale, beside a per-line regex yardstick.

    python benchmarks/ingest.py [--lines 1000000] [--postgres URL] [--workdir DIR]

Simulates the scenario's world (27,000 movies) until the log has --lines lines, in both forms of
the log (the same events as text lines and as JSON Lines), then runs each phase in its own process
(so that peak memory is the phase's own):
- yardstick: a plain loop of `re.match` per line that only returns tuples of strings (the fields
  of the three line kinds); also the plainer 3-field split, for reference;
- reference: the text form's per-line reference parser (`parse_line`), which JSON Lines must match;
- parse: recsys.events into typed frames (datetimes, integers, categorical ids), of each form;
- ingest into SQLite (a new file) and PostgreSQL (a new schema): parse + store, one transaction;
  JSON Lines into SQLite too.
Each phase runs --repeat times (default 3) and the median is reported. Prints a Markdown table;
rows/s counts every row written (events, recommended items, quarantine).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import peak_mb  # noqa: E402

FIELDS = re.compile(
    r"(?P<time>[^,]+),(?P<user>\d+),(?:GET /data/m/(?P<wm>[^/]+)/(?P<minute>\d+)\.mpg|GET /rate/(?P<rm>[^=]+)="
    r"(?P<rating>\d+)|recommendation request (?P<server>[^,]+), status (?P<status>\d+), result: (?P<result>.*), "
    r"(?P<latency>\d+) ms)$")
SPLIT = re.compile(r"^([^,]*),([^,]*),(.*)$")


def make_log(workdir: Path, lines: int, log_format: str = "text") -> Path:
    """The first `lines` lines of a simulated day, in the form `log_format` (the same events
    in either form)."""
    from recaudit.recsys.simulate import LOG_FILES, Config, simulate

    log = workdir / f"events-{lines}{Path(LOG_FILES[log_format]).suffix}"
    if log.exists():
        return log
    # About 8.3 lines per user-day (the scenario's 8.3 M a day for 1 M users).
    sim = workdir / f"sim-{log_format}"
    simulate(sim, Config(users=max(1000, int(lines / 7.5)), movies=27_000, days=1, seed=0, log_format=log_format))
    with open(sim / LOG_FILES[log_format], "rb") as src, open(log, "wb") as dst:
        for i, line in enumerate(src):
            if i == lines:
                break
            dst.write(line)
    return log


def phase(name: str, log: Path, url: str | None) -> dict:
    """One measurement, run inside its own process."""
    t0 = time.perf_counter()
    rows = 0
    if name in ("yardstick", "split"):
        pattern = FIELDS if name == "yardstick" else SPLIT
        with open(log, encoding="utf-8") as f:
            text = f.read()
        t0 = time.perf_counter()
        matched = [pattern.match(line).groups() for line in text.splitlines()]
        lines = len(matched)
    elif name == "reference":
        from recaudit.recsys.events import parse_line

        with open(log, encoding="utf-8") as f:
            text = f.read()
        t0 = time.perf_counter()
        lines = len([parse_line(line) for line in text.splitlines()])
    elif name == "parse":  # chunk by chunk, as ingestion reads a log
        from recaudit.recsys.events import open_log, parse_stream

        t0 = time.perf_counter()
        with open_log(log) as f:
            lines = sum(part.lines for part in parse_stream(f, str(log)))
    else:
        from recaudit.audits.ingest import ingest
        from recaudit.audits.store import Store

        store = Store(url)  # creates the schema
        t0 = time.perf_counter()
        summary = ingest(store, [str(log)])
        lines = summary.totals()["lines"]
        source = summary.sources[0]
        rows = sum(source.stored.values()) + source.items + source.quarantined
    seconds = time.perf_counter() - t0
    return {"phase": name, "lines": lines, "seconds": seconds, "rows": rows,
            "peak_mb": peak_mb()}


def run_phase(name: str, log: Path, url: str | None, repeat: int) -> dict:
    """The median of `repeat` runs, each in a fresh process (this machine's speed varies)."""
    runs = []
    for _ in range(repeat):
        target = url() if callable(url) else url
        done = subprocess.run([sys.executable, __file__, "--phase", name, "--log", str(log), "--url", target or ""],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "runs": [round(r["seconds"], 2) for r in runs]}


def postgres_schema(url: str) -> tuple[str, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema, f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL to measure ('' to skip)")
    ap.add_argument("--workdir", type=Path, help="keep the generated log here (default: a temporary directory)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per phase; the median is reported")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.log, args.url or None)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        log, json_log = make_log(workdir, args.lines), make_log(workdir, args.lines, "jsonl")
        megabytes, json_megabytes = log.stat().st_size / 1e6, json_log.stat().st_size / 1e6
        results = [run_phase(p, log, None, args.repeat) for p in ("split", "yardstick", "reference", "parse")]
        results.append({**run_phase("parse", json_log, None, args.repeat), "phase": "parse JSON Lines"})
        new_sqlite = lambda: f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"  # noqa: E731
        results.append({**run_phase("ingest", log, new_sqlite, args.repeat), "phase": "ingest SQLite"})
        results.append({**run_phase("ingest", json_log, new_sqlite, args.repeat), "phase": "ingest SQLite JSON Lines"})
        for db in workdir.glob("bench-*.db*"):
            db.unlink()
        if args.postgres:
            schemas = []

            def new_schema() -> str:
                schema, url = postgres_schema(args.postgres)
                schemas.append(schema)
                return url

            try:
                results.append({**run_phase("ingest", log, new_schema, args.repeat), "phase": "ingest PostgreSQL"})
            finally:
                for schema in schemas:
                    drop_schema(args.postgres, schema)

    yard = next(r for r in results if r["phase"] == "yardstick")
    print(f"{args.lines:,} simulated log lines ({megabytes:.0f} MB as text, {json_megabytes:.0f} MB as JSON Lines), "
          f"Python {sys.version.split()[0]}\n")
    print(f"median of {args.repeat} runs per phase, each in a fresh process\n")
    print("| phase | lines/s | rows/s | × yardstick | seconds (all runs) | peak memory |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        rate = r["lines"] / r["seconds"]
        rows = f"{r['rows'] / r['seconds']:,.0f}" if r["rows"] else ""
        print(f"| {r['phase']} | {rate:,.0f} | {rows} | {rate / (yard['lines'] / yard['seconds']):.2f} "
              f"| {r['seconds']:.2f} ({', '.join(map(str, r['runs']))}) | {r['peak_mb']:,.0f} MB |")


if __name__ == "__main__":
    main()

"""Several writers at once: one simulated day's log cut into parts, ingested by one process part
after part and by one process per part started together.

    python benchmarks/writers.py [--users 1000000] [--movies 27000] [--writers 2]
                                 [--backends lake-sqlite,lake-postgres,postgres]
                                 [--postgres URL] [--workdir DIR]

The day is simulated once (kept in --workdir, shared with benchmarks/day.py) and its events.log
cut into --writers files of about equal size at line ends. For each backend, a new store is
given users.csv and movies.csv, then the parts, timed from the first process's start to the last
one's end (wall clock): lake-sqlite and lake-postgres are a new lake with its manifest in SQLite
or in a new schema of --postgres; postgres keeps the events in a new schema, where ingests take
turns. Each run checks that every line was stored or quarantined. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.day import _store_args, simulated  # noqa: E402

BACKENDS = ("lake-sqlite", "lake-postgres", "postgres")


def cut(log: Path, parts: int, out: Path) -> list[Path]:
    """`log` as `parts` files of about equal size, each ending at a line's end."""
    data = log.read_bytes()
    paths, start = [], 0
    for i in range(parts):
        end = len(data) if i == parts - 1 else data.index(b"\n", (i + 1) * len(data) // parts) + 1
        paths.append(out / f"{log.stem}.part{i}{log.suffix}")
        if not paths[-1].exists() or paths[-1].stat().st_size != end - start:
            paths[-1].write_bytes(data[start:end])
        start = end
    return paths


def store_of(backend: str, workdir: Path, postgres: str) -> dict:
    if backend == "lake-sqlite":
        return _store_args("lake-duckdb", workdir, postgres)
    args = _store_args("postgres", workdir, postgres)
    if backend == "lake-postgres":
        args["lake"] = str(workdir / f"lake-{uuid.uuid4().hex[:8]}")
    return args


def ingest_process(args: dict, paths: list[Path]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--ingest", json.dumps(args), *map(str, paths)],
                            stdout=subprocess.PIPE, text=True)


def lines_of(procs: list[subprocess.Popen]) -> int:
    total = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"an ingest failed (exit status {p.returncode})")
        total += json.loads(out.strip().splitlines()[-1])["lines"]
    return total


def timed(args: dict, groups: list[list[Path]]) -> tuple[float, int]:
    started = time.perf_counter()
    lines = lines_of([ingest_process(args, group) for group in groups])
    return time.perf_counter() - started, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--movies", type=int, default=27_000)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--workdir")
    p.add_argument("--ingest", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ingest:
        from recaudit.audits.ingest import ingest
        from recaudit.audits.store import Store

        args = json.loads(a.ingest)
        store = Store(args["url"], lake=args.get("lake"))
        print(json.dumps({"lines": ingest(store, a.paths).totals()["lines"]}))
        store.close()
        return
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="recaudit-writers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sim = simulated(workdir, a.users, a.movies, 1)
    parts = cut(sim / "events.log", a.writers, workdir)
    lines = sum(1 for _ in open(sim / "events.log", "rb"))
    print(f"one simulated day, {a.users:,} users, {a.movies:,} movies: {lines:,} log lines in {a.writers} parts\n")
    print(f"| backend | one process, part after part (s) | {a.writers} processes at once (s) | speed-up |")
    print("|---|---:|---:|---:|")
    for backend in a.backends.split(","):
        seconds = []
        for groups in ([parts], [[part] for part in parts]):
            args = store_of(backend, workdir, a.postgres)
            lines_of([ingest_process(args, [sim / "users.csv", sim / "movies.csv"])])
            took, stored = timed(args, groups)
            if stored != lines:
                raise SystemExit(f"{backend}: {stored:,} lines ingested of {lines:,}")
            seconds.append(took)
        print(f"| {backend} | {seconds[0]:.0f} | {seconds[1]:.0f} | {seconds[0] / seconds[1]:.2f}× |", flush=True)


if __name__ == "__main__":
    main()

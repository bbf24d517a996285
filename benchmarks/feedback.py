"""The feedback and online audits on a day at the scenario's scale (~8 M events).

    python benchmarks/feedback.py [--users 1000000] [--movies 27000] [--workdir DIR]
                                  [--postgres URL] [--reuse]

Simulates two days (1 M users, 27,000 movies; the first day is the lagged correlation's
"before") with the feedback fault, ingests them into SQLite and PostgreSQL, then times
`recaudit audit --only feedback,online` over the second day, each database in its own process
so that peak memory is its own. --reuse keeps databases a previous run left in --workdir.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import peak_mb  # noqa: E402

DAY = ("2024-01-02", "2024-01-03")


def audits(url: str, out: str) -> dict:
    from recaudit.audits import config
    from recaudit.audits import run as runs
    from recaudit.audits.store import Store

    cfg = config.load()
    cfg["feedback"]["correlation_window"] = "1d"  # this day against the one before, whatever the default
    started = time.perf_counter()
    result = runs.run(Store(url), *DAY, cfg, ["feedback", "online"], out)
    seconds = time.perf_counter() - started
    m = {**result.results["feedback"].metrics, **result.results["online"].metrics}
    return {"seconds": seconds, "each": {k: round(r.seconds, 1) for k, r in result.results.items()},
            "status": {k: r.status for k, r in result.results.items()},
            "figures": {k: m.get(k) for k in ("feedback.recommendations", "feedback.gini", "feedback.top10_share",
                                              "feedback.rating_rec_corr.pearson", "online.requests",
                                              "online.success_rate", "online.mrr")},
            "peak_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--movies", type=int, default=27_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recaudit-bench-feedback"))
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        url, out = args.phase.split("|")
        print(json.dumps(audits(url, out), default=str))
        return

    from recaudit.audits.ingest import ingest
    from recaudit.audits.store import Store
    from recaudit.recsys.simulate import Config, simulate

    data = args.workdir / "data"
    if not (data / "events.log").exists():
        simulate(data, Config(users=args.users, movies=args.movies, days=2, seed=0, inject=("feedback",)))
    lines = sum(1 for _ in open(data / "events.log", "rb"))
    databases = {"SQLite": f"sqlite:///{args.workdir / 'bench.db'}"}
    if args.postgres:
        databases["PostgreSQL"] = f"{args.postgres}?options=-csearch_path%3Dbench_feedback"
    if not args.reuse:
        for old in args.workdir.glob("bench.db*"):
            old.unlink()
        if args.postgres:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as c:
                c.execute("DROP SCHEMA IF EXISTS bench_feedback CASCADE")
                c.execute("CREATE SCHEMA bench_feedback")
        for url in databases.values():
            ingest(Store(url), [str(data)])
    results = {}
    for name, url in databases.items():
        done = subprocess.run([sys.executable, __file__, "--phase", f"{url}|{args.workdir / 'out'}"],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{lines:,} log lines over 2 days ({args.users:,} users, {args.movies:,} movies, feedback fault); "
          f"audited: day 2; Python {sys.version.split()[0]}\n")
    print("| database | feedback | online | both | peak memory |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['each']['feedback']:.1f} s | {r['each']['online']:.1f} s | {r['seconds']:.1f} s "
              f"| {r['peak_mb']:,.0f} MB |")
    print("\nwhat they measured: " + json.dumps(next(iter(results.values()))["figures"]))


if __name__ == "__main__":
    main()

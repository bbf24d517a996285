"""Validation speed: 1 M simulated events through the Great Expectations suites.

    python benchmarks/validate.py [--lines 1000000] [--repeat 3]

The log comes from the scenario's world (27,000 movies), as in benchmarks/ingest.py. Reported:
importing Great Expectations (once per process), parsing the log into frames, and running every
suite (log, watches, ratings, recommendations, users, movies) with the catalogue and a window,
the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from ingest import make_log  # noqa: E402  (benchmarks/ingest.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = make_log(Path(tmp), args.lines)
        from recaudit.audits import config, validation
        from recaudit.recsys import events, formats

        started = time.perf_counter()
        validation._gx()
        import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        parsed = events.parse_file(log)
        parse_seconds = time.perf_counter() - started
        movies, _ = formats.read_movies_csv(Path(tmp) / "sim" / "movies.csv")
        users, _ = formats.read_users_csv(Path(tmp) / "sim" / "users.csv")
        catalog = set(movies["movie_id"])
        frames = {**validation.event_frames(parsed, catalog), **validation.table_frames(users, movies)}
        params = validation.parameters(config.load(), "2024-01-01", "2024-01-02", catalog)
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            outcomes = validation.run_suites(frames, params)
            runs.append(time.perf_counter() - started)
    rows = {name: len(frame) for name, frame in frames.items()}
    print(f"{parsed.lines:,} log lines: " + ", ".join(f"{n:,} {name}" for name, n in rows.items())
          + f"; {len(outcomes)} expectations, {sum(o.success is False for o in outcomes)} failed\n")
    print("| step | seconds |")
    print("|---|---:|")
    print(f"| import Great Expectations (once per process) | {import_seconds:.2f} |")
    print(f"| parse the log into frames | {parse_seconds:.2f} |")
    print(f"| run every suite (median of {args.repeat}: {', '.join(f'{r:.2f}' for r in runs)}) "
          f"| {statistics.median(runs):.2f} |")


if __name__ == "__main__":
    main()

"""Drift at the scenario's scale: a day of ~8 M events against a reference day of ~8 M.

    python benchmarks/drift.py [--users 1000000] [--movies 27000] [--workdir DIR]
                               [--postgres URL] [--plain-limit 900]

Simulates two days (1 M users, 27,000 movies), ingests them (PostgreSQL, and SQLite), then
measures, each in its own process so that peak memory is its own:
- ours: the drift audit of `recaudit audit --only drift` (signals aggregated in the database,
  evidently's tests and its HTML report), day 2 against day 1;
- plain: `Report([DataDriftPreset()]).run` on the raw event frames of the two days with the
  same columns (every event with its rating, latency, status, the user's age group, sex and
  occupation, the movie's genre and popularity rank), as one would write it without recaudit.
  Building those frames is timed apart; the plain run is stopped after --plain-limit seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import peak_mb  # noqa: E402

REFERENCE = ("2024-01-01", "2024-01-02")
CURRENT = ("2024-01-02", "2024-01-03")


def ours(url: str, out: Path) -> dict:
    from recaudit.audits import config
    from recaudit.audits import run as runs
    from recaudit.audits.store import Store

    store = Store(url)
    started = time.perf_counter()
    result = runs.run(store, *CURRENT, config.load(), ["drift"], out, REFERENCE).results["drift"]
    seconds = time.perf_counter() - started
    signals = {s["signal"]: (s.get("current_n"), s.get("current_sample")) for s in result.details["signals"]}
    return {"seconds": seconds, "status": result.status, "share_drifted": result.metrics.get("drift.share_drifted"),
            "signals": signals}


def raw_frames(data: Path) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """One row per event of each day with the columns the signals compare."""
    from recaudit.audits import config, groups
    from recaudit.recsys import events, formats

    started = time.perf_counter()
    parsed = events.parse_file(data / "events.log")
    users = formats.read_users_csv(data / "users.csv")[0]
    users["age_group"] = groups.age_group(users, config.load()["groups"]["age"])
    movies = formats.read_movies_csv(data / "movies.csv")[0].set_index("movie_id")
    first_day = parsed.watches[parsed.watches.time < pd.Timestamp(REFERENCE[1])]
    rank = first_day.groupby("movie_id", observed=True).size().rank(ascending=False)
    frames = []
    for kind, frame in (("watch", parsed.watches), ("rate", parsed.ratings), ("recommend", parsed.recommendations)):
        f = pd.DataFrame({"time": frame["time"], "user_id": frame["user_id"]})
        if "movie_id" in frame:
            ids = frame["movie_id"].astype(str)
            f["genre"] = movies["genres"].reindex(ids).str.split("|").str[0].to_numpy()
            f["popularity_rank"] = rank.reindex(ids).to_numpy()
        if kind == "rate":
            f["rating"] = frame["rating"].to_numpy(dtype=float)
        if kind == "recommend":
            f["latency"] = frame["latency_ms"].to_numpy(dtype=float)
            f["status"] = frame["status"].astype(str).to_numpy()
        frames.append(f)
    events_ = pd.concat(frames, ignore_index=True).merge(
        users[["user_id", "age_group", "gender", "occupation"]], on="user_id", how="left")
    events_ = events_.drop(columns=["user_id"])
    cut = events_["time"] < pd.Timestamp(REFERENCE[1])
    reference, current = events_[cut].drop(columns="time"), events_[~cut].drop(columns="time")
    return reference.reset_index(drop=True), current.reset_index(drop=True), time.perf_counter() - started


def plain(data: Path) -> dict:
    import os

    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = raw_frames(data)[:2]
    definition = DataDefinition(numerical_columns=["popularity_rank", "rating", "latency"],
                                categorical_columns=["genre", "status", "age_group", "gender", "occupation"])
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                               Dataset.from_pandas(reference, data_definition=definition))
    seconds = time.perf_counter() - started
    drifted = next(m["value"] for m in snapshot.dict()["metrics"] if m["metric_name"].startswith("DriftedColumns"))
    return {"seconds": seconds, "rows": [len(reference), len(current)], "share_drifted": drifted["share"]}


def frames_only(data: Path) -> dict:
    reference, current, seconds = raw_frames(data)
    return {"seconds": seconds, "rows": [len(reference), len(current)]}


def child(phase: str, arg: str, timeout: float | None = None) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, "--phase", phase, "--arg", arg], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--movies", type=int, default=27_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recaudit-bench-drift"))
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--plain-limit", type=float, default=900)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--arg", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        work = {"ours": lambda a: ours(*a.split("|")), "plain": lambda a: plain(Path(a)),
                "frames": lambda a: frames_only(Path(a))}[args.phase]
        result = work(args.arg if args.phase != "ours" else args.arg)
        result["peak_mb"] = peak_mb()
        print(json.dumps(result, default=str))
        return

    from recaudit.audits.ingest import ingest
    from recaudit.audits.store import Store
    from recaudit.recsys.simulate import Config, simulate

    data = args.workdir / "data"
    if not (data / "events.log").exists():
        simulate(data, Config(users=args.users, movies=args.movies, days=2, seed=0))
    lines = sum(1 for _ in open(data / "events.log", "rb"))
    for old in args.workdir.glob("bench.db*"):  # every run ingests into fresh databases
        old.unlink()
    databases = {"SQLite": f"sqlite:///{args.workdir / 'bench.db'}"}
    if args.postgres:
        schema = "bench_drift"
        import psycopg

        with psycopg.connect(args.postgres.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            c.execute(f"CREATE SCHEMA {schema}")
        databases["PostgreSQL"] = f"{args.postgres}?options=-csearch_path%3D{schema}"
    ingest_seconds = {}
    for name, url in databases.items():
        store = Store(url)
        started = time.perf_counter()
        ingest(store, [str(data)])
        ingest_seconds[name] = time.perf_counter() - started
    results = {f"ours ({name})": child("ours", f"{url}|{args.workdir / 'out' / uuid.uuid4().hex[:6]}")
               for name, url in databases.items()}
    results["plain: build the raw event frames"] = child("frames", str(data))
    results["plain: Report([DataDriftPreset()]).run"] = child("plain", str(data), timeout=args.plain_limit)

    print(f"{lines:,} log lines over 2 days ({args.users:,} users, {args.movies:,} movies); day 2 against day 1; "
          f"Python {sys.version.split()[0]}\n")
    print("| measure | seconds | peak memory | share of signals drifted |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        if "timeout" in r:
            print(f"| {name} | did not finish in {r['timeout']:.0f} s | | |")
            continue
        share = "" if r.get("share_drifted") is None else f"{r['share_drifted']:.2f}"
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} MB | {share} |")
    plain_run = results["plain: Report([DataDriftPreset()]).run"]
    for name in databases:
        mine = results[f"ours ({name})"]
        if "timeout" not in plain_run:
            print(f"\nratio, plain run / ours ({name}): {plain_run['seconds'] / mine['seconds']:.1f}×")
    print(f"\n(ingest, not timed above: {', '.join(f'{n} {s:.0f} s' for n, s in ingest_seconds.items())}; "
          "rows compared by the plain run: "
          f"{plain_run.get('rows') or results['plain: build the raw event frames']['rows']})")
    print("ours, values behind each signal (current window: population, compared sample): "
          + json.dumps(results[f"ours ({next(iter(databases))})"]["signals"]))


if __name__ == "__main__":
    main()

"""One simulated day at the scenario's scale, ingested and audited on every backend.

    python benchmarks/day.py [--users 1000000] [--movies 27000] [--days 1] [--window 1d]
                             [--backends sqlite,postgres,lake-duckdb,lake-spark,notebook]
                             [--postgres URL] [--workdir DIR]

Simulates --days days of --users users and --movies movies once (kept in --workdir), then, for
each backend, runs two phases each in its own process, so that the peak memory reported is the
phase's own (the kernel's high-water mark, VmHWM): ingest (users.csv, movies.csv, the log) and
`recaudit audit` with every audit over the last --window (default: all --days; drift against its
first half; fairness on the reference model, trained on the data before the window's second half
in a phase of its own, not counted). Backends:
sqlite (a new file), postgres (a new schema of --postgres), lake-duckdb and lake-spark (a new
lake, its manifest in SQLite), and notebook: what the scenario's teams did by hand, the raw log
read with pandas (`read_log`) and every audit of frames run on it, in one process. Prints a
Markdown table.
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

from benchmarks.memory import peak_mb  # noqa: E402

BACKENDS = ("sqlite", "postgres", "lake-duckdb", "lake-spark", "notebook")


def simulated(workdir: Path, users: int, movies: int, days: int) -> Path:
    from recaudit.recsys.simulate import Config, simulate

    out = workdir / f"sim-{users}-{movies}-{days}"
    if not (out / "simulation.json").exists():
        simulate(out, Config(users=users, movies=movies, days=days, seed=0))
    return out


def _store_args(backend: str, workdir: Path, postgres: str) -> dict:
    tag = uuid.uuid4().hex[:8]
    if backend == "postgres":
        import psycopg

        schema = f"bench_{tag}"
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return {"url": f"{postgres}?options=-csearch_path%3D{schema}"}
    args = {"url": f"sqlite:///{workdir / f'{backend}-{tag}.db'}"}
    if backend.startswith("lake-"):
        args.update(lake=str(workdir / f"lake-{tag}"), engine=backend.split("-", 1)[1])
    return args


def phase(name: str, args: dict, sim: str) -> dict:
    """One phase in this process: its seconds and peak memory."""
    started = time.perf_counter()
    detail: dict = {}
    if name == "notebook":
        detail = _notebook(Path(sim))
    else:
        from recaudit.audits import config as cfg
        from recaudit.audits import run as runs
        from recaudit.audits.ingest import ingest
        from recaudit.audits.store import Store

        store = Store(args["url"], lake=args.get("lake"), engine=args.get("engine"))
        if name == "ingest":
            paths = [str(Path(sim) / f) for f in ("users.csv", "movies.csv", "events.log")]
            detail = {"lines": ingest(store, paths).totals()["lines"]}
        elif name == "train":  # the reference model the fairness audit evaluates, on the first half
            from recaudit.recsys import recommender as rc
            from recaudit.scheduler.cli import load_split
            from recaudit.scheduler.jobs import save_model

            until = runs.default_window(store, "100d")[1]
            data = load_split(store, until - runs.parse_duration(args["span"]) / 2)
            save_model(store, rc.train(data, algo="svd", seed=0), Path(args["out"]) / "models")
        else:
            config = cfg.load(None)
            since, until = runs.default_window(store, "100d")
            since = max(since, until - runs.parse_duration(args["span"]))
            run = runs.run(store, since, until, config, out=Path(args["out"]),
                           reference=(since, since + (until - since) / 2))
            detail = {n: round(r.seconds, 1) for n, r in run.results.items()}
            detail["status"] = {n: r.status for n, r in run.results.items()}
        store.close()
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_mb(), "detail": detail}


def _notebook(sim: Path) -> dict:
    """The audits by hand: the raw log read into frames with pandas, every audit of frames."""
    import recaudit
    from recaudit.recsys import formats

    seconds = {}
    started = time.perf_counter()
    events = recaudit.read_log(sim / "events.log")
    users = formats.read_users_csv(sim / "users.csv", (sim / "users.csv").read_bytes())[0]
    movies = formats.read_movies_csv(sim / "movies.csv", (sim / "movies.csv").read_bytes())[0]
    seconds["read"] = round(time.perf_counter() - started, 1)
    times = events.watches["time"]
    middle = times.min() + (times.max() - times.min()) / 2

    def half(first: bool) -> dict:
        frames = {n: getattr(events, n) for n in ("watches", "ratings", "recommendations")}
        frames = {n: f[(f["time"] < middle) == first] for n, f in frames.items()}
        frames["items"] = events.items[events.items["line"].isin(frames["recommendations"]["line"])]
        return frames
    for name, call in {
        "validation": lambda: recaudit.validate(events, users, movies),
        "feedback": lambda: recaudit.feedback(events, movies=movies),
        "online": lambda: recaudit.online(events),
        "exposure": lambda: recaudit.exposure(events, users=users, movies=movies),
        "drift": lambda: recaudit.drift(half(True), half(False), users=users, movies=movies),
    }.items():
        started = time.perf_counter()
        try:
            call()
            seconds[name] = round(time.perf_counter() - started, 1)
        except Exception as exc:  # reported: the table says which audit the notebook could not run
            seconds[name] = f"{type(exc).__name__}: {exc}"[:80]
    return seconds


def run_phase(name: str, args: dict, sim: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--args", json.dumps(args), "--sim", str(sim)],
                         capture_output=True, text=True)
    if out.returncode:
        return {"seconds": float("nan"), "peak_mb": float("nan"), "detail": {"error": out.stderr.strip()[-400:]}}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--movies", type=int, default=27_000)
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--window", help="the audited span, ending with the data [default: --days]")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--workdir")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    p.add_argument("--sim", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        print(json.dumps(phase(a.phase, json.loads(a.args), a.sim), default=str))
        return
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="recaudit-day-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sim = simulated(workdir, a.users, a.movies, a.days)
    lines = sum(1 for _ in open(sim / "events.log", "rb"))
    print(f"{a.days} simulated day(s), {a.users:,} users, {a.movies:,} movies: {lines:,} log lines "
          f"(simulated in {time.perf_counter() - started:.0f} s, or kept from an earlier run); "
          f"audited: the last {a.window or f'{a.days}d'}\n")
    print("| backend | ingest s | ingest peak MB | audit s | audit peak MB | ingest + audit s | per audit (s) "
          "| train s (not counted) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for backend in a.backends.split(","):
        if backend == "notebook":
            r = run_phase("notebook", {}, sim)
            print(f"| notebook (pandas) | | | {r['seconds']:.0f} | {r['peak_mb']:,.0f} | {r['seconds']:.0f} | "
                  f"{r['detail']} | |", flush=True)
            continue
        args = {**_store_args(backend, workdir, a.postgres), "span": a.window or f"{a.days}d",
                "out": str(workdir / f"reports-{backend}")}
        i = run_phase("ingest", args, sim)
        t = run_phase("train", args, sim)
        r = run_phase("audit", args, sim)
        per = {k: v for k, v in r["detail"].items() if k != "status"}
        print(f"| {backend} | {i['seconds']:.0f} | {i['peak_mb']:,.0f} | {r['seconds']:.0f} | {r['peak_mb']:,.0f} | "
              f"{i['seconds'] + r['seconds']:.0f} | {per} {i['detail'].get('error', '')} | "
              f"{t['seconds']:.0f} {t['detail'].get('error', '')} |",
              flush=True)


if __name__ == "__main__":
    main()

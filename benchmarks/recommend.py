"""Recommendation speed at the scenario's catalogue size, numpy beside surprise's own predict.

    python benchmarks/recommend.py [--movies 27000] [--factors 100] [--users 100000]
                                   [--rate 200] [--seconds 10]

- Fits SVD (scikit-surprise, one epoch: speed does not depend on how well it learned) on
  synthetic ratings covering every movie and --users users.
- Top-20 for one user: recsys.recommender (numpy over the factor arrays, seen movies excluded)
  against a loop of surprise's `predict` over every movie, in the same run, with the ratio.
- Batch scoring: top-20 for every one of the --users users.
- HTTP: `recaudit serve` on 127.0.0.1 with that model; a client in another process sends
  --rate requests/s for --seconds (open loop: latency counts from the scheduled send time, so a
  stalled server cannot hide), then as fast as 4 connections allow for the same time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_ratings(users: int, movies: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = users * per_user
    user = np.repeat(np.arange(1, users + 1), per_user)
    movie = np.concatenate([np.arange(movies), rng.integers(0, movies, n - movies)])  # every movie once at least
    start = np.datetime64("2024-01-01T00:00:00", "ns")
    return pd.DataFrame({
        "time": start + rng.integers(0, 14 * 86400, n).astype("timedelta64[s]"),
        "user_id": user, "movie_id": pd.Categorical([f"movie+{m}+2000" for m in movie]),
        "rating": rng.integers(1, 6, n),
    })


def measure_top20(model, fitted, users: np.ndarray, loop_users: int) -> dict:
    ours = []
    for u in users:
        started = time.perf_counter()
        model.recommend(int(u), 20)
        ours.append(time.perf_counter() - started)
    items = [fitted.trainset.to_raw_iid(i) for i in range(fitted.trainset.n_items)]
    loop = []
    for u in users[:loop_users]:
        started = time.perf_counter()
        scored = sorted(((fitted.predict(int(u), i, clip=False).est, i) for i in items), reverse=True)[:20]
        loop.append(time.perf_counter() - started)
        assert scored
    numpy_ms, loop_ms = 1000 * float(np.median(ours)), 1000 * float(np.median(loop))
    return {"numpy_ms": numpy_ms, "predict_loop_ms": loop_ms, "ratio": loop_ms / numpy_ms,
            "numpy_users": len(ours), "loop_users": len(loop)}


def client(port: int, user_ids: list[int], rate: float | None, seconds: float, connections: int) -> dict:
    """Send requests for `seconds`: at `rate` per second (open loop), or back to back."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = k
        while True:
            scheduled = start + i / rate if rate else time.perf_counter()
            if scheduled - start > seconds:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.request("GET", f"/recommend/{user_ids[i % len(user_ids)]}")
            response = conn.getresponse()
            response.read()
            done = time.perf_counter()
            with lock:
                latencies.append(done - scheduled)
                errors[0] += response.status != 200
            i += connections
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "errors": errors[0], "per_second": len(ms) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--movies", type=int, default=27_000)
    ap.add_argument("--factors", type=int, default=100)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--per-user", type=int, default=10, help="ratings per user")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--client", nargs=4, help=argparse.SUPPRESS)  # port rate seconds connections (child process)
    args = ap.parse_args()
    if args.client:
        port, rate, seconds, connections = args.client
        users = list(range(1, args.users + 1, max(1, args.users // 5000)))
        print(json.dumps(client(int(port), users, float(rate) or None, float(seconds), int(connections))))
        return

    from recaudit.audits.store import Store
    from recaudit.recsys import recommender as rc

    ratings = synthetic_ratings(args.users, args.movies, args.per_user)
    data = rc.split(ratings)
    started = time.perf_counter()
    model = rc.train(data, "svd", factors=args.factors, epochs=1, seed=0)
    train_seconds = time.perf_counter() - started
    fitted = rc.fit_surprise("svd", data.train, args.factors, 1, 0)
    rng = np.random.default_rng(1)
    sample = rng.choice(model.users, 200, replace=False)
    top20 = measure_top20(model, fitted, sample, loop_users=5)

    started = time.perf_counter()
    _ids, _scores, cold = model.recommend_many(model.users, 20)
    batch_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        store.record_model("bench", model.save(Path(tmp) / "bench"), model.metadata)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([str(Path(sys.executable).parent / "recaudit"), "serve", "--db", store.url,
                                   "--port", str(port), "--log", f"{tmp}/service.log"], stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
                    break
                except OSError:
                    time.sleep(0.1)
            runs = {}
            for name, rate, connections in (("fixed", args.rate, 8), ("saturated", 0, 4)):
                done = subprocess.run([sys.executable, __file__, "--users", str(args.users), "--client", str(port),
                                       str(rate), str(args.seconds), str(connections)],
                                      capture_output=True, text=True, check=True)
                runs[name] = json.loads(done.stdout)
        finally:
            server.terminate()
            server.wait()

    print(f"{args.movies:,} movies × {args.factors} factors, {len(model.users):,} users "
          f"(SVD fit, 1 epoch: {train_seconds:.1f} s), Python {sys.version.split()[0]}\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| top-20 for one user, numpy (median of {top20['numpy_users']}) | {top20['numpy_ms']:.2f} ms |")
    print(f"| top-20 for one user, surprise `predict` per movie (median of {top20['loop_users']}) "
          f"| {top20['predict_loop_ms']:,.0f} ms |")
    print(f"| ratio | {top20['ratio']:,.0f}× |")
    print(f"| batch: top-20 for {len(model.users):,} users | {batch_seconds:.1f} s "
          f"({1000 * batch_seconds / len(model.users):.2f} ms per user) |")
    for name, r in runs.items():
        label = f"{args.rate:.0f} requests/s offered" if name == "fixed" else "saturated, 4 connections"
        print(f"| HTTP /recommend, {label}: served | {r['per_second']:,.0f} requests/s, {r['errors']} errors |")
        print(f"| HTTP /recommend, {label}: latency p50 / p95 / p99 | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} / "
              f"{r['p99_ms']:.1f} ms |")


if __name__ == "__main__":
    main()

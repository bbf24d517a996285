"""The fairness audit's computation at 1 M evaluation ratings, at its default 2,000 bootstrap
resamples and 2,000 shuffles of the permutation test.

    python benchmarks/fairness.py [--ratings 1000000] [--resamples 2000] [--permutations 2000]

Two shapes of the same million ratings: MovieLens-1M's (6,040 users, 3,706 movies; many
ratings per user) and a streaming service's (250,000 users, 27,000 movies; few per user), since
the bootstrap's cost grows with the number of users. Ratings come from a seeded latent-factor
model; an SVD is trained on a separate 200,000 of them (not timed). Timed: predicting every
rating with the model and its groups (`fairness.evaluate`), ranking quality for up to 5,000
users, and every group metric, gap, interval, test, influence and finding (`fairness.assess`),
for sex, age group and occupation, on all, warm and cold-start ratings. Peak memory is the
process's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import peak_mb  # noqa: E402


def world(n_users: int, n_movies: int, n_ratings: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "age": rng.integers(8, 80, n_users),
                          "gender": np.where(rng.random(n_users) < 0.3, "F", "M"),
                          "occupation": rng.choice([f"job{i}" for i in range(21)], n_users), "age_group": None})
    activity = rng.lognormal(0, 1, n_users)
    who = rng.choice(n_users, n_ratings, p=activity / activity.sum())
    what = rng.choice(n_movies, n_ratings, p=(p := 1 / (np.arange(n_movies) + 10)) / p.sum())
    taste, factors = rng.normal(0, 0.4, (n_users, 8)), rng.normal(0, 0.4, (n_movies, 8))
    truth = 3.6 + np.einsum("ij,ij->i", taste[who], factors[what]) + rng.normal(0, 0.9, n_ratings)
    ratings = pd.DataFrame({
        "time": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 30 * 86400, n_ratings)), "s"),
        "user_id": who + 1, "movie_id": pd.Categorical(what.astype(str)),
        "rating": np.clip(np.round(truth), 1, 5).astype(np.int64)})
    return users, ratings


def measure(n_users: int, n_movies: int, n_ratings: int, resamples: int, permutations: int) -> dict:
    from recaudit.audits import config, fairness
    from recaudit.recsys import recommender as rc

    users, ratings = world(n_users, n_movies, n_ratings + 200_000, seed=0)
    train, evaluation = ratings.iloc[:200_000], ratings.iloc[200_000:].reset_index(drop=True)
    model = rc.train(rc.Split(evaluation["time"].min(), train, evaluation.iloc[:0]), "svd", factors=20, epochs=5)
    cfg = config.load()
    settings = {**cfg["fairness"], "resamples": resamples, "permutations": permutations}
    started = time.perf_counter()
    evaluated = fairness.evaluate(model, evaluation, users, cfg)
    predicted = time.perf_counter()
    ranking = fairness._ranking(model, evaluated, settings, rc.ranking_per_user)
    ranked = time.perf_counter()
    metrics, findings, _rows, _gaps = fairness.assess(evaluated, settings, cfg["groups"]["age"], ranking)
    done = time.perf_counter()
    return {"users": evaluated["user_id"].nunique(), "predict": predicted - started, "ranking": ranked - predicted,
            "assess": done - ranked, "total": done - started, "rmse_gap_sex": metrics["fairness.rmse_gap.sex"],
            "cold": float(evaluated["cold_start"].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratings", type=int, default=1_000_000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--permutations", type=int, default=2000)
    args = ap.parse_args()
    print(f"{args.ratings:,} evaluation ratings, {args.resamples:,} bootstrap resamples and {args.permutations:,} "
          f"shuffles of users, sex × age group × occupation; Python {sys.version.split()[0]}\n")
    print("| shape | users rated | cold-start share | predict + groups | ranking (≤5,000 users) "
          "| metrics, intervals, tests, influence | total |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, users, movies in (("MovieLens-1M", 6_040, 3_706), ("streaming", 250_000, 27_000)):
        r = measure(users, movies, args.ratings, args.resamples, args.permutations)
        print(f"| {name} | {r['users']:,} | {r['cold']:.0%} | {r['predict']:.1f} s | {r['ranking']:.1f} s "
              f"| {r['assess']:.1f} s | {r['total']:.1f} s |")
    print(f"\npeak memory: {peak_mb():,.0f} MB")


if __name__ == "__main__":
    main()

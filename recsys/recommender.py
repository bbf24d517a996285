"""The reference recommender: SVD (scikit-surprise) trained on the past, served from numpy.

Training is temporal, as in production: the model learns from ratings before a cutoff and is
judged on the ratings after it. The fitted model is kept as plain arrays (factors, biases, the
catalogue, what each user has already seen, the popularity of the training window) so that it
loads without surprise and ranks a user's whole catalogue with one matrix-vector product; it
gives surprise's own ranking, which a test checks. Users the model never saw get the most
popular movies of the training window.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recaudit.clock import utc_now

ALGOS = ("svd", "baseline")
RATING_SCALE = (1, 5)
HOLDOUT = 0.2  # the most recent share of the time span held out when no cutoff is given
LIKED = 4  # held-out ratings at least this high are what a good top-20 should contain
SHORTLIST_MARGIN = 20  # extra candidates re-ranked exactly after the float32 pass
SHORTLIST_TOLERANCE = 1e-4  # float32 estimates closer than this to the k-th may be out of order


PREDICT_CHUNK = 1 << 18  # pairs whose factor rows `Model.predict` holds at once (40 MB at 10 factors)


@dataclass
class Model:
    """A fitted model as arrays; indices below are into `catalog` (movies) and `users`."""

    catalog: np.ndarray  # movie ids of the training window (rated or watched)
    rated: np.ndarray  # which catalogue movies had ratings, i.e. can be scored
    users: np.ndarray  # sorted ids of the users with ratings
    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray  # zero for movies without ratings
    user_factors: np.ndarray  # users × k (k = 0 for the baseline)
    item_factors: np.ndarray  # catalogue × k
    seen_users: np.ndarray  # sorted ids of every user of the training window
    seen_indptr: np.ndarray  # CSR: seen_indices[seen_indptr[i]:seen_indptr[i+1]] for seen_users[i]
    seen_indices: np.ndarray
    popular: np.ndarray  # catalogue indices, most watched or rated by distinct users first
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._movie_index = pd.Index(self.catalog)
        # Ranking streams every movie's factors once per user: in float32 that is half the
        # memory traffic. The shortlist it gives is re-ranked exactly, in float64.
        self._factors32 = np.ascontiguousarray(self.item_factors.T, dtype=np.float32)
        self._bias32 = np.where(self.rated, self.item_bias, -np.inf).astype(np.float32)

    # -- scoring ------------------------------------------------------------------------------

    def user_index(self, user_ids) -> np.ndarray:
        """Position of each user in `users`, -1 for users the model never saw."""
        ids = np.asarray(user_ids, dtype=np.int64)
        if len(self.users) == 0:
            return np.full(len(ids), -1)
        pos = np.searchsorted(self.users, ids)
        found = (pos < len(self.users)) & (self.users[np.minimum(pos, len(self.users) - 1)] == ids)
        return np.where(found, pos, -1)

    def seen_pairs(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in user_ids, catalogue index) of every movie those users have seen."""
        if len(self.seen_users) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self.seen_users, user_ids)
        clipped = np.minimum(pos, len(self.seen_users) - 1)
        has = (pos < len(self.seen_users)) & (self.seen_users[clipped] == user_ids)
        starts = np.where(has, self.seen_indptr[clipped], 0)
        lengths = np.where(has, self.seen_indptr[np.minimum(clipped + 1, len(self.seen_indptr) - 1)] - starts, 0)
        rows = np.repeat(np.arange(len(user_ids)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.seen_indices[np.repeat(starts, lengths) + within]

    def recommend(self, user_id: int, k: int = 20) -> tuple[list[str], np.ndarray, bool]:
        """Top-k movie ids for a user, their scores, and whether it was a cold start."""
        ids, scores, cold = self.recommend_many([user_id], k)
        return ids[0], scores[0], bool(cold[0])

    def recommend_many(self, user_ids, k: int = 20,
                       block: int = 2048) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """Top-k for many users at once: movies they have seen are never recommended. Users the
        model never saw (cold) get the most popular movies they have not seen, with NaN scores."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        rows = self.user_index(user_ids)
        top = np.full((len(user_ids), k), -1, dtype=np.int64)
        score = np.full((len(user_ids), k), np.nan)
        known = np.flatnonzero(rows >= 0)
        for start in range(0, len(known), block):
            part = known[start:start + block]
            best, best_scores = self._top(rows[part], user_ids[part], k)
            valid = np.isfinite(best_scores)
            top[part, : best.shape[1]] = np.where(valid, best, -1)
            score[part, : best.shape[1]] = np.where(valid, best_scores, np.nan)
        cold = np.flatnonzero(rows < 0)
        seen_rows, seen_movies = self.seen_pairs(user_ids[cold])
        top[cold[np.setdiff1d(np.arange(len(cold)), seen_rows)], : min(k, len(self.popular))] = self.popular[:k]
        for r in np.unique(seen_rows):  # cold users who watched before: skip what they saw
            seen = set(seen_movies[seen_rows == r].tolist())
            picks = [m for m in self.popular[: k + len(seen)] if m not in seen][:k]
            top[cold[r], : len(picks)] = picks
        ids = [[self.catalog[m] for m in row if m >= 0] for row in top]
        return ids, score, rows < 0

    def _top(self, rows: np.ndarray, user_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best unseen movies of known users, by exact estimate, best first."""
        u = self.user_factors[rows]
        approx = (self.global_mean + self.user_bias[rows]).astype(np.float32)[:, None] + self._bias32
        approx += u.astype(np.float32) @ self._factors32
        approx[self.seen_pairs(user_ids)] = -np.inf
        n = min(k + SHORTLIST_MARGIN, approx.shape[1])
        shortlist = np.argpartition(-approx, n - 1, axis=1)[:, :n] if n < approx.shape[1] else \
            np.tile(np.arange(n), (len(rows), 1))
        if n < approx.shape[1]:  # where float32 cannot tell the shortlist's edge from the k-th: all of them, exactly
            edge = np.sort(np.take_along_axis(approx, shortlist, axis=1), axis=1)[:, ::-1]
            close = np.flatnonzero(edge[:, min(k, n) - 1] - edge[:, -1] < SHORTLIST_TOLERANCE)
            if len(close):
                return self._top_exact(rows, user_ids, k, close, shortlist, approx)
        return self._rank(rows, shortlist, approx, k)

    def _top_exact(self, rows, user_ids, k, close, shortlist, approx):
        """Rank with float64 over every movie for the rows whose float32 shortlist is in doubt."""
        widened = np.tile(np.arange(approx.shape[1]), (len(rows), 1))
        best, scores = self._rank(rows, widened, approx, k)
        fast_rows = np.setdiff1d(np.arange(len(rows)), close)
        if len(fast_rows):
            best_fast, scores_fast = self._rank(rows[fast_rows], shortlist[fast_rows], approx[fast_rows], k)
            best[fast_rows], scores[fast_rows] = best_fast, scores_fast
        return best, scores

    def _rank(self, rows, candidates, approx, k):
        """Exact float64 estimates of the candidates, best k first (seen and unrated: -inf)."""
        u = self.user_factors[rows]
        exact = (self.global_mean + self.user_bias[rows][:, None] + self.item_bias[candidates]
                 + np.einsum("uk,unk->un", u, self.item_factors[candidates]))
        exact[~np.isfinite(np.take_along_axis(approx, candidates, axis=1))] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(exact, order, axis=1)

    def predict(self, user_ids, movie_ids) -> tuple[np.ndarray, np.ndarray]:
        """Predicted ratings for (user, movie) pairs, clipped to the rating scale as surprise's
        predict does, and whether each pair is a cold start (user or movie never rated)."""
        rows = self.user_index(user_ids)
        items = self._movie_index.get_indexer(pd.Index(np.asarray(movie_ids).astype(str)))
        known_user = rows >= 0
        known_item = (items >= 0) & self.rated[np.maximum(items, 0)]
        est = np.full(len(rows), self.global_mean)
        est[known_user] += self.user_bias[rows[known_user]]
        est[known_item] += self.item_bias[items[known_item]]
        both = known_user & known_item
        # The factor rows of PREDICT_CHUNK pairs at a time: gathering every pair's rows at once
        # takes pairs x factors x 16 bytes (tens of GB for a large service's ratings).
        at = np.flatnonzero(both)
        for start in range(0, len(at), PREDICT_CHUNK):
            part = at[start:start + PREDICT_CHUNK]
            est[part] += np.einsum("ij,ij->i", self.user_factors[rows[part]], self.item_factors[items[part]])
        return np.clip(est, *RATING_SCALE), ~both

    # -- artifacts ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write model.npz and metadata.json into `directory` (created)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        arrays["catalog"] = np.asarray(self.catalog, dtype=str)
        np.savez(out / "model.npz", global_mean=np.float64(self.global_mean), **arrays)
        (out / "metadata.json").write_text(json.dumps(self.metadata, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Model":
        path = Path(directory)
        with np.load(path / "model.npz", allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _ARRAYS}
            global_mean = float(npz["global_mean"])
        metadata = json.loads((path / "metadata.json").read_text())
        return cls(global_mean=global_mean, metadata=metadata, **arrays)


_ARRAYS = ("catalog", "rated", "users", "user_bias", "item_bias", "user_factors", "item_factors",
           "seen_users", "seen_indptr", "seen_indices", "popular")


# ---------------------------------------------------------------------------------------------
# Training.

@dataclass
class Split:
    """Ratings before the cutoff (train) and from it on (test), and the (user_id, movie_id)
    pairs watched before it (`seen`, never recommended back)."""

    cutoff: pd.Timestamp
    train: pd.DataFrame
    test: pd.DataFrame
    seen: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"user_id": [], "movie_id": []}))


def split(ratings: pd.DataFrame, until=None) -> Split:
    """Train strictly before `until` (default: all but the most recent HOLDOUT of the span)."""
    if ratings.empty:
        raise ValueError("no ratings to train on")
    if until is None:
        first, last = ratings["time"].min(), ratings["time"].max()
        until = first + (last - first) * (1 - HOLDOUT)
    cutoff = pd.Timestamp(until)
    train = ratings[ratings["time"] < cutoff]
    if train.empty:
        raise ValueError(f"no ratings before {cutoff}")
    return Split(cutoff, train, ratings[ratings["time"] >= cutoff])


def watched_before(watches: pd.DataFrame, cutoff) -> pd.DataFrame:
    """The distinct (user_id, movie_id) pairs of a watches frame before `cutoff`."""
    before = watches[watches["time"] < pd.Timestamp(cutoff)]
    return before[["user_id", "movie_id"]].drop_duplicates().reset_index(drop=True)


def data_hash(ratings: pd.DataFrame) -> str:
    """SHA-256 of the training ratings in a canonical order (provenance of a model)."""
    canon = ratings[["time", "user_id", "movie_id", "rating"]].astype({"movie_id": str})
    canon = canon.sort_values(["time", "user_id", "movie_id", "rating"], kind="stable")
    digest = hashlib.sha256()
    digest.update(canon["time"].to_numpy(dtype="datetime64[ns]").astype(np.int64).tobytes())
    digest.update(canon["user_id"].to_numpy(dtype=np.int64).tobytes())
    digest.update(canon["rating"].to_numpy(dtype=np.int64).tobytes())
    digest.update("\n".join(canon["movie_id"]).encode())
    return digest.hexdigest()


def fit_surprise(algo, train: pd.DataFrame, factors: int, epochs: int, seed: int):
    """A fitted surprise algorithm (svd, baseline, knn) on ratings in a canonical order."""
    from surprise import SVD, BaselineOnly, Dataset, KNNBaseline, Reader

    ordered = train.sort_values(["time", "user_id"], kind="stable")
    frame = pd.DataFrame({"user": ordered["user_id"].to_numpy(), "item": ordered["movie_id"].astype(str).to_numpy(),
                          "rating": ordered["rating"].to_numpy(dtype=float)})
    trainset = Dataset.load_from_df(frame, Reader(rating_scale=RATING_SCALE)).build_full_trainset()
    if algo == "svd":  # the only one that draws random numbers (baselines are fitted by ALS)
        model = SVD(n_factors=factors, n_epochs=epochs, random_state=seed)
    elif algo == "baseline":
        model = BaselineOnly(verbose=False)
    elif algo == "knn":
        model = KNNBaseline(sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False)
    else:
        raise ValueError(f"unknown algorithm {algo!r}")
    return model.fit(trainset)


def train(data: Split, algo: str = "svd", factors: int = 100, epochs: int = 20, seed: int = 0) -> Model:
    """Fit on `data.train` and evaluate on `data.test`; the metadata tells how it was made."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r} (choose from {', '.join(ALGOS)})")
    started = time.perf_counter()
    fitted = fit_surprise(algo, data.train, factors, epochs, seed)
    seconds = time.perf_counter() - started
    model = _from_surprise(fitted, data)
    metrics = evaluate(model, data.test)
    versions = _versions()
    model.metadata = {
        "algo": algo,
        "params": {"factors": factors if algo == "svd" else 0, "epochs": epochs if algo == "svd" else None,
                   "seed": seed},
        "cutoff": data.cutoff.isoformat(),
        "train": {"ratings": len(data.train), "watched_pairs": len(data.seen),
                  "since": data.train["time"].min().isoformat(), "until": data.train["time"].max().isoformat(),
                  "users": len(model.users), "movies": int(model.rated.sum()), "sha256": data_hash(data.train)},
        "test": {"ratings": len(data.test),
                 "since": data.test["time"].min().isoformat() if len(data.test) else None,
                 "until": data.test["time"].max().isoformat() if len(data.test) else None},
        "metrics": metrics,
        "training_seconds": round(seconds, 3),
        "versions": versions,
        "created_at": utc_now().isoformat(),
    }
    return model


def _catalog(data: Split, rated: list[str]) -> np.ndarray:
    """Every movie of the training window: rated, or only watched."""
    return np.array(sorted(set(rated) | set(data.seen["movie_id"].astype(str).unique())), dtype=str)


def _history(data: Split, catalog: np.ndarray) -> dict[str, np.ndarray]:
    """What each user saw before the cutoff (rated or watched) as CSR over catalogue indices,
    and the catalogue by popularity (distinct users who rated or watched a movie)."""
    index = pd.Index(catalog)
    pairs = pd.DataFrame({
        "user_id": np.concatenate([data.train["user_id"].to_numpy(), data.seen["user_id"].to_numpy(dtype=np.int64)]),
        "movie": index.get_indexer(np.concatenate([data.train["movie_id"].astype(str).to_numpy(),
                                                   data.seen["movie_id"].astype(str).to_numpy()])),
    }).drop_duplicates().sort_values(["user_id", "movie"])
    popular = pairs.groupby("movie").size().sort_values(ascending=False, kind="stable").index.to_numpy(np.int64)
    seen_users, counts = np.unique(pairs["user_id"].to_numpy(), return_counts=True)
    return {"seen_users": seen_users.astype(np.int64), "seen_indptr": np.concatenate([[0], np.cumsum(counts)]),
            "seen_indices": pairs["movie"].to_numpy(np.int64), "popular": popular}


def _from_surprise(fitted, data: Split) -> Model:
    ts = fitted.trainset
    raw_users = np.array([ts.to_raw_uid(u) for u in range(ts.n_users)], dtype=np.int64)
    raw_items = [ts.to_raw_iid(i) for i in range(ts.n_items)]
    catalog = _catalog(data, raw_items)
    item_pos = pd.Index(catalog).get_indexer(raw_items)
    k = fitted.pu.shape[1] if hasattr(fitted, "pu") else 0
    item_bias, item_factors = np.zeros(len(catalog)), np.zeros((len(catalog), k))
    rated = np.zeros(len(catalog), dtype=bool)
    item_bias[item_pos], rated[item_pos] = fitted.bi, True
    if k:
        item_factors[item_pos] = fitted.qi
    order = np.argsort(raw_users)
    return Model(catalog=catalog, rated=rated, users=raw_users[order], global_mean=float(ts.global_mean),
                 user_bias=np.asarray(fitted.bu, dtype=float)[order], item_bias=item_bias,
                 user_factors=fitted.pu[order] if k else np.zeros((len(raw_users), 0)), item_factors=item_factors,
                 **_history(data, catalog))


def popularity_model(data: Split) -> Model:
    """A model that knows only popularity: every user is cold (the comparison's floor)."""
    catalog = _catalog(data, list(data.train["movie_id"].astype(str).unique()))
    return Model(catalog=catalog, rated=np.zeros(len(catalog), bool), users=np.zeros(0, np.int64),
                 global_mean=float(data.train["rating"].mean()), user_bias=np.zeros(0),
                 item_bias=np.zeros(len(catalog)), user_factors=np.zeros((0, 0)),
                 item_factors=np.zeros((len(catalog), 0)), **_history(data, catalog))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("scikit-surprise", "numpy", "pandas", "recaudit"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation.

def evaluate(model: Model, test: pd.DataFrame) -> dict:
    """RMSE and MAE on held-out ratings, with the share of cold starts among them."""
    if test.empty:
        return {"rmse": None, "mae": None, "n": 0, "cold_start_share": None}
    predicted, cold = model.predict(test["user_id"].to_numpy(), test["movie_id"].astype(str).to_numpy())
    error = predicted - test["rating"].to_numpy(dtype=float)
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
            "n": int(len(test)), "cold_start_share": float(cold.mean())}


def ranking_per_user(top: dict[int, list[str]], test: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """(user_id, hit, ndcg) at k for each user of `top` with held-out ratings of at least LIKED."""
    # Only the users ranked: `top` is often a sample of a few thousand among many more raters.
    rows = test[(test["rating"] >= LIKED) & test["user_id"].isin(list(top))]
    liked = rows["movie_id"].astype(str).groupby(rows["user_id"]).agg(set)
    users = [u for u in liked.index if u in top]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits, ndcgs = [], []
    for u in users:
        relevant = np.array([m in liked[u] for m in top[u][:k]], dtype=bool)
        hits.append(relevant.any())
        ideal = discounts[: min(len(liked[u]), k)].sum()
        ndcgs.append(float(discounts[: len(relevant)][relevant].sum() / ideal))
    return pd.DataFrame({"user_id": np.array(users, dtype=np.int64), "hit": np.array(hits, dtype=float),
                         "ndcg": np.array(ndcgs, dtype=float)})


def ranking_quality(top: dict[int, list[str]], test: pd.DataFrame, k: int = 20) -> dict:
    """Hit rate and NDCG at k against each user's held-out ratings of at least LIKED."""
    per_user = ranking_per_user(top, test, k)
    if per_user.empty:
        return {"hit_rate": None, "ndcg": None, "users": 0}
    return {"hit_rate": float(per_user["hit"].mean()), "ndcg": float(per_user["ndcg"].mean()), "users": len(per_user)}


# ---------------------------------------------------------------------------------------------
# Comparison of algorithms on one split.

KNN_MAX_SIMILARITY_BYTES = 1 << 30  # item-item similarities above this are not attempted


def compare(data: Split, factors: int = 100, epochs: int = 20, seed: int = 0, k: int = 20,
            max_users: int = 300) -> dict:
    """SVD, item-based KNNBaseline, BaselineOnly and a popularity ranker on the same split.

    Rating accuracy on every held-out rating; ranking quality (hit rate, NDCG at k against
    held-out ratings >= LIKED) on up to `max_users` users drawn with `seed`; cost in training
    time, time to rank one user's top-k, and size on disk and in memory.

    Users a model never saw get the popularity ranking, whatever the model, so on cold users every
    algorithm scores the same and the all-user figures dilute the differences. Each row therefore
    also has them on warm ratings and users alone (`warm_rmse`, `warm_mae`, `warm_hit_rate@k`,
    `warm_ndcg@k`), and the result the counts (`warm_test_ratings`, `ranked_users`,
    `warm_ranked_users`) and the cold shares. Warm is what SVD's `predict` and `recommend_many`
    say is not a cold start: a rating whose user and movie have training ratings, a user with
    training ratings. Every algorithm is fitted on the same training ratings, so these flags
    are every algorithm's.
    """
    import pickle
    import tempfile

    liked_users = np.unique(data.test.loc[data.test["rating"] >= LIKED, "user_id"].to_numpy())
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(liked_users, size=min(max_users, len(liked_users)), replace=False))
    popularity = popularity_model(data)
    test_users, test_movies = data.test["user_id"].to_numpy(), data.test["movie_id"].astype(str).to_numpy()
    rows = []
    for algo in ("svd", "knn", "baseline", "popularity"):  # svd first: its cold flags define warm
        row = {"algo": algo}
        started = time.perf_counter()
        if algo == "popularity":
            model = popularity
        elif algo == "knn":
            n_items = data.train["movie_id"].nunique()
            if 8 * n_items ** 2 > KNN_MAX_SIMILARITY_BYTES:
                rows.append({**row, "skipped": f"item-item similarities of {n_items:,} movies need "
                                               f"{8 * n_items ** 2 / 2**30:.1f} GiB"})
                continue
            fitted = fit_surprise("knn", data.train, factors, epochs, seed)
        else:
            model = train(data, algo, factors, epochs, seed)
        row["train_seconds"] = time.perf_counter() - started

        if algo == "knn":
            top, one_user = _knn_top(fitted, popularity, users, k)
            predicted = np.array([fitted.predict(u, m).est for u, m in zip(test_users, test_movies)])
            row["disk_bytes"] = len(pickle.dumps(fitted))
            row["memory_bytes"] = int(fitted.sim.nbytes + sum(b.nbytes for b in fitted.compute_baselines()))
        else:
            ids, _scores, cold_users = model.recommend_many(users, k)
            top = dict(zip(users.tolist(), ids))
            one_user = _time_one_user(model, users, k)
            predicted, cold_ratings = model.predict(test_users, test_movies)
            if algo == "svd":
                warm_ratings, warm_users = ~cold_ratings, set(users[~cold_users].tolist())
            elif algo == "popularity":
                predicted = None  # it rates nothing: every user is cold to it
            with tempfile.TemporaryDirectory() as tmp:
                model.save(tmp)
                row["disk_bytes"] = sum(f.stat().st_size for f in Path(tmp).iterdir())
            row["memory_bytes"] = int(sum(getattr(model, name).nbytes for name in _ARRAYS))
        row.update(_quality(predicted, top, data.test, k, warm_ratings, warm_users))
        row["top_k_ms"] = None if one_user is None else one_user * 1000
        rows.append(row)
    ranked, warm_ranked = rows[0]["ranked_users"], rows[0]["warm_ranked_users"]
    return {"cutoff": data.cutoff.isoformat(), "train_ratings": len(data.train), "test_ratings": len(data.test),
            "warm_test_ratings": int(warm_ratings.sum()),
            "cold_test_ratings_share": float(1 - warm_ratings.mean()) if len(data.test) else None,
            "ranked_users": ranked, "warm_ranked_users": warm_ranked,
            "cold_ranked_users_share": 1 - warm_ranked / ranked if ranked else None,
            "k": k, "seed": seed, "algorithms": rows,
            "created_at": utc_now().isoformat()}


def _quality(predicted: np.ndarray | None, top: dict[int, list[str]], test: pd.DataFrame, k: int,
             warm_ratings: np.ndarray, warm_users: set[int]) -> dict:
    """Accuracy of `predicted` (one per test rating) and ranking of `top`, on every rating and
    ranked user, then under warm_ keys on the warm ratings and users alone."""
    warm_top = {u: ids for u, ids in top.items() if u in warm_users}
    out = {}
    for prefix, keep, ranked in (("", np.ones(len(test), dtype=bool), top), ("warm_", warm_ratings, warm_top)):
        accuracy = _accuracy(None if predicted is None else predicted[keep], test[keep])
        out.update({prefix + key: value for key, value in accuracy.items()})
        out.update({prefix + (f"{key}@{k}" if key != "users" else "ranked_users"): value
                    for key, value in ranking_quality(ranked, test, k).items()})
    return out


def _accuracy(predicted: np.ndarray | None, test: pd.DataFrame) -> dict:
    """RMSE and MAE of `predicted` against the ratings of `test` (None: none to judge, or no predictions)."""
    if predicted is None or test.empty:
        return {"rmse": None, "mae": None}
    error = predicted - test["rating"].to_numpy(dtype=float)
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}


def _time_one_user(model: Model, users: np.ndarray, k: int) -> float:
    """Median seconds to rank one user's top-k, over a few users."""
    spent = []
    for u in users[:7]:
        started = time.perf_counter()
        model.recommend(int(u), k)
        spent.append(time.perf_counter() - started)
    return float(np.median(spent)) if spent else None


def _knn_top(fitted, popularity: Model, users: np.ndarray, k: int) -> tuple[dict, float]:
    """KNN's top-k through surprise's predict over every rated movie (it has no factor arrays)."""
    ts = fitted.trainset
    items = [ts.to_raw_iid(i) for i in range(ts.n_items)]
    known = {ts.to_raw_uid(i) for i in range(ts.n_users)}
    top, spent = {}, []
    for u in users.tolist():
        if u not in known:
            top[u] = popularity.recommend(u, k)[0]
            continue
        started = time.perf_counter()
        seen = {ts.to_raw_iid(i) for i, _ in ts.ur[ts.to_inner_uid(u)]}
        seen |= {popularity.catalog[m] for m in popularity.seen_pairs(np.array([u]))[1]}
        scores = [(fitted.predict(u, i, clip=False).est, i) for i in items if i not in seen]
        top[u] = [i for _, i in sorted(scores, key=lambda si: -si[0])[:k]]
        spent.append(time.perf_counter() - started)
    return top, float(np.median(spent)) if spent else None

"""The reference recommender: temporal training without leakage, numpy ranking equal to
surprise's, seen movies never recommended, cold start, artifacts, and the HTTP service."""

import json
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from recaudit.audits.ingest import ingest
from recaudit.recsys import events as ev
from recaudit.recsys import recommender as rc
from recaudit.recsys.simulate import Config, simulate
from support import free_port, get, run_cli

DENSE = dict(users=600, movies=150, days=21, active_share=0.8)  # enough ratings per user to learn from


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense")
    simulate(path, Config(**DENSE, seed=0))
    return path


@pytest.fixture(scope="module")
def log(world):
    return ev.parse_file(world / "events.log")


@pytest.fixture(scope="module")
def data(log):
    d = rc.split(log.ratings)
    d.seen = rc.watched_before(log.watches, d.cutoff)
    return d


@pytest.fixture(scope="module")
def svd(data):
    return rc.train(data, "svd", factors=20, epochs=20, seed=3)


def test_training_uses_only_ratings_before_the_cutoff_and_evaluates_on_the_rest(log, data, svd):
    assert data.train.time.max() < data.cutoff <= data.test.time.min()
    assert len(data.train) + len(data.test) == len(log.ratings)
    span = log.ratings.time.max() - log.ratings.time.min()
    assert data.cutoff == log.ratings.time.min() + span * 0.8  # the most recent 20% is held out
    assert svd.metadata["train"]["until"] < svd.metadata["cutoff"] <= svd.metadata["test"]["since"]
    chosen = rc.split(log.ratings, until="2024-01-10")
    assert chosen.train.time.max() < pd.Timestamp("2024-01-10") <= chosen.test.time.min()


def test_same_seed_same_model_and_another_seed_another(data, svd):
    again = rc.train(data, "svd", factors=20, epochs=20, seed=3)
    other = rc.train(data, "svd", factors=20, epochs=20, seed=4)
    assert np.array_equal(svd.user_factors, again.user_factors) and np.array_equal(svd.item_bias, again.item_bias)
    assert not np.array_equal(svd.user_factors, other.user_factors)


def test_numpy_ranking_and_predictions_equal_surprises_own_predict(data, svd):
    fitted = rc.fit_surprise("svd", data.train, 20, 20, 3)
    rated = svd.catalog[svd.rated]
    users = svd.users[:: max(1, len(svd.users) // 15)]
    for user in users.tolist():
        seen = set(svd.catalog[svd.seen_pairs(np.array([user]))[1]])
        estimates = sorted(((fitted.predict(user, m, clip=False).est, m) for m in rated if m not in seen),
                           key=lambda em: -em[0])
        ours, scores, cold = svd.recommend(user, 20)
        assert not cold
        assert ours == [m for _, m in estimates[:20]]
        assert np.allclose(scores, [e for e, _ in estimates[:20]])
    pairs = data.test.head(300)
    predicted, _cold = svd.predict(pairs.user_id.to_numpy(), pairs.movie_id.astype(str).to_numpy())
    expected = [fitted.predict(u, m).est for u, m in zip(pairs.user_id, pairs.movie_id.astype(str))]
    assert np.allclose(predicted, expected)


def test_movies_a_user_rated_or_watched_before_the_cutoff_are_never_recommended(data, svd):
    history = pd.concat([data.train[["user_id", "movie_id"]], data.seen]).astype({"movie_id": str})
    history = history.groupby("user_id").movie_id.apply(set)
    users = np.array(sorted(history.index))[:400]
    ids, _scores, _cold = svd.recommend_many(users, 20)
    assert all(not set(recs) & history[u] for u, recs in zip(users.tolist(), ids))
    assert all(len(recs) == 20 == len(set(recs)) for recs in ids)


def test_unknown_users_get_the_most_popular_movies_of_the_training_window(data, svd):
    never = int(data.train.user_id.max()) + 10**6
    movies, scores, cold = svd.recommend(never, 20)
    pairs = pd.concat([data.train[["user_id", "movie_id"]], data.seen]).astype({"movie_id": str}).drop_duplicates()
    counts = pairs.movie_id.value_counts()
    assert cold and np.isnan(scores).all()
    assert all(counts[m] >= counts.iloc[19] for m in movies) and len(movies) == 20
    # A user who watched but never rated is unknown to SVD: popular movies, minus what they watched.
    watcher = sorted(set(data.seen.user_id) - set(data.train.user_id))[0]
    movies, _scores, cold = svd.recommend(watcher, 20)
    assert cold and not set(movies) & set(data.seen.loc[data.seen.user_id == watcher, "movie_id"].astype(str))


def test_near_ties_beyond_float32_precision_are_still_ranked_exactly(svd):
    import dataclasses

    tied = dataclasses.replace(svd, item_bias=svd.item_bias.copy(), item_factors=np.zeros_like(svd.item_factors),
                               user_factors=np.zeros_like(svd.user_factors))
    rated = np.flatnonzero(tied.rated)
    tied.item_bias[rated] = 1.0 + np.arange(len(rated)) * 1e-9  # all within float32's rounding
    tied.__post_init__()
    user = int(tied.users[0])
    seen = set(tied.seen_pairs(np.array([user]))[1])
    exact = [tied.catalog[m] for m in rated[::-1] if m not in seen][:20]
    assert tied.recommend(user, 20)[0] == exact


def test_comparison_without_liked_held_out_ratings_reports_no_ranking_rather_than_failing(data):
    d = rc.split(data.train.assign(rating=1 + data.train.index % 3))  # nobody liked anything (< 4)
    d.seen = data.seen
    result = rc.compare(d, factors=5, epochs=2, seed=0, max_users=10)
    assert all(r["hit_rate@20"] is None is r["warm_hit_rate@20"] for r in result["algorithms"] if "skipped" not in r)
    assert result["ranked_users"] == 0 and result["cold_ranked_users_share"] is None
    json.dumps(result, allow_nan=False)


def test_artifact_round_trip_keeps_arrays_and_provenance(tmp_path, svd, data):
    loaded = rc.Model.load(svd.save(tmp_path / "m"))
    for name in rc._ARRAYS:
        assert np.array_equal(getattr(loaded, name), getattr(svd, name)), name
    meta = loaded.metadata
    assert meta == json.loads(json.dumps(svd.metadata, default=str))
    assert meta["train"]["ratings"] == len(data.train) and meta["train"]["sha256"] == rc.data_hash(data.train)
    assert meta["params"] == {"factors": 20, "epochs": 20, "seed": 3}
    assert {"python", "scikit-surprise", "numpy", "pandas"} <= set(meta["versions"])
    assert meta["metrics"]["rmse"] > 0 and meta["test"]["ratings"] == len(data.test)
    assert loaded.recommend(int(svd.users[0]), 20)[0] == svd.recommend(int(svd.users[0]), 20)[0]


def test_svd_learns_tastes_that_biases_alone_miss(data):
    svd = rc.train(data, "svd", factors=100, epochs=20, seed=1).metadata["metrics"]["rmse"]
    baseline = rc.train(data, "baseline").metadata["metrics"]["rmse"]
    assert svd < baseline - 0.005, (svd, baseline)


def test_comparison_reports_every_algorithm_on_the_same_split(data):
    result = rc.compare(data, factors=20, epochs=10, seed=0, max_users=60)
    rows = {r["algo"]: r for r in result["algorithms"]}
    assert set(rows) == {"svd", "knn", "baseline", "popularity"}
    for r in rows.values():
        assert 0 <= r["hit_rate@20"] <= 1 and 0 <= r["ndcg@20"] <= r["hit_rate@20"]
        assert r["ranked_users"] == 60 and r["disk_bytes"] > 0 and r["memory_bytes"] > 0 and r["top_k_ms"] > 0
    assert rows["popularity"]["rmse"] is None and all(rows[a]["rmse"] > 0 for a in ("svd", "knn", "baseline"))


def test_warm_columns_judge_only_ratings_and_users_seen_in_training():
    day = pd.Timestamp("2024-01-01")
    # Before the cutoff users 1-3 rate a (by all three), b (two), c and d (one each): popularity a, b, c, d.
    train = [(1, "a", 5), (1, "b", 4), (2, "a", 4), (2, "c", 3), (3, "a", 2), (3, "b", 5), (3, "d", 4)]
    # After it: user 1 likes c (warm rating), user 2 likes e (a movie nobody rated: cold), user 4 is new
    # and likes a, user 5 is new and likes nothing (not ranked).
    test = [(1, "c", 5), (2, "e", 5), (4, "a", 4), (5, "b", 2)]
    ratings = pd.DataFrame([(day + pd.Timedelta(hours=i), u, m, r) for i, (u, m, r) in enumerate(train + test)],
                           columns=["time", "user_id", "movie_id", "rating"])
    data = rc.split(ratings, until=day + pd.Timedelta(hours=len(train)))
    result = rc.compare(data, factors=2, epochs=5, seed=0, max_users=10)
    rows = {r["algo"]: r for r in result["algorithms"]}
    assert (result["test_ratings"], result["warm_test_ratings"], result["cold_test_ratings_share"]) == (4, 1, 0.75)
    assert (result["ranked_users"], result["warm_ranked_users"]) == (3, 2)
    assert result["cold_ranked_users_share"] == pytest.approx(1 / 3)
    # Popularity ranks c, d for user 1 (a hit at rank 1), b, d for user 2 (a miss), a, b, c, d for user 4 (a hit
    # at rank 1): 2 of 3 users, 1 of the 2 warm ones.
    popularity = rows["popularity"]
    assert (popularity["hit_rate@20"], popularity["ndcg@20"]) == pytest.approx((2 / 3, 2 / 3))
    assert (popularity["warm_hit_rate@20"], popularity["warm_ndcg@20"]) == (0.5, 0.5)
    assert popularity["warm_ranked_users"] == 2 and popularity["warm_rmse"] is None
    baseline = rc.train(data, "baseline")  # the one warm rating: user 1's 5 for c
    predicted = baseline.predict(np.array([1, 2, 4, 5]), np.array(["c", "e", "a", "b"]))[0]
    assert rows["baseline"]["warm_rmse"] == pytest.approx(abs(predicted[0] - 5))
    assert rows["baseline"]["warm_mae"] == pytest.approx(abs(predicted[0] - 5))
    assert rows["baseline"]["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - [5, 5, 4, 2]) ** 2)))
    assert rows["baseline"]["rmse"] != pytest.approx(rows["baseline"]["warm_rmse"])


def test_cold_users_rank_alike_in_every_algorithm_so_only_warm_users_tell_them_apart(data):
    result = rc.compare(data, factors=20, epochs=10, seed=0, max_users=10**6)  # every user who liked something
    rows = {r["algo"]: r for r in result["algorithms"]}
    warm_share = result["warm_ranked_users"] / result["ranked_users"]
    assert 0 < warm_share < 1
    for metric in ("hit_rate@20", "ndcg@20"):
        for a, b in (("svd", "baseline"), ("svd", "knn"), ("svd", "popularity"), ("baseline", "popularity")):
            all_users = rows[a][metric] - rows[b][metric]
            warm = rows[a][f"warm_{metric}"] - rows[b][f"warm_{metric}"]
            # Cold users' hits and NDCG are the same for a and b, so they add nothing to the difference.
            assert all_users == pytest.approx(warm_share * warm, abs=1e-12), (metric, a, b)
            assert all_users != pytest.approx(warm, abs=1e-6), (metric, a, b)
    # SVD's warm hit rate, by hand: its top 20 for each user who rated before the cutoff and liked a later movie.
    svd = rc.train(data, "svd", factors=20, epochs=10, seed=0)
    liked = data.test[data.test.rating >= rc.LIKED].groupby("user_id").movie_id.apply(lambda m: set(m.astype(str)))
    warm_users = [u for u in liked.index if u in set(data.train.user_id)]
    tops, _scores, _cold = svd.recommend_many(np.array(warm_users), 20)
    hits = [bool(set(top) & liked[u]) for u, top in zip(warm_users, tops)]
    assert result["warm_ranked_users"] == len(warm_users)
    assert rows["svd"]["warm_hit_rate@20"] == pytest.approx(np.mean(hits))
    assert rows["svd"]["hit_rate@20"] != pytest.approx(np.mean(hits))


def test_ranking_quality_counts_hits_and_discounts_by_rank():
    test = pd.DataFrame({"user_id": [1, 1, 2, 3], "movie_id": ["a", "b", "c", "x"], "rating": [5, 4, 5, 2]})
    q = rc.ranking_quality({1: ["z", "a", "b"], 2: ["y", "w"], 3: ["x"]}, test, k=3)
    assert q["users"] == 2 and q["hit_rate"] == 0.5  # user 3 liked nothing
    ideal = 1 + 1 / np.log2(3)
    assert q["ndcg"] == pytest.approx(((1 / np.log2(3) + 1 / np.log2(4)) / ideal + 0) / 2)


def test_models_are_recorded_and_the_newest_is_the_default(store, data, tmp_path, log):
    assert store.model_artifact() is None
    first = rc.train(data, "baseline")
    store.record_model("old", first.save(tmp_path / "old"), first.metadata)
    newer = rc.train(data, "baseline")
    newer.metadata["created_at"] = (pd.Timestamp(first.metadata["created_at"]) + pd.Timedelta(seconds=5)).isoformat()
    store.record_model("new", newer.save(tmp_path / "new"), newer.metadata)
    assert store.model_artifact() == ("new", str(tmp_path / "new"))
    assert store.model_artifact("old") == ("old", str(tmp_path / "old"))


def test_watched_pairs_come_from_the_database_before_the_cutoff(store, world, data):
    ingest(store, [str(world)])
    pairs = store.watched_pairs(data.cutoff).astype({"movie_id": str})
    expected = data.seen.astype({"movie_id": str}).sort_values(["user_id", "movie_id"]).reset_index(drop=True)
    got = pairs.sort_values(["user_id", "movie_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


# -- through the command line and a real server ---------------------------------------------

@pytest.fixture(scope="module")
def trained_db(tmp_path_factory, world, recaudit_bin):
    home = tmp_path_factory.mktemp("cli")
    db = home / "recaudit.db"
    assert run_cli(recaudit_bin, "ingest", "--db", str(db), str(world)).returncode == 0
    done = run_cli(recaudit_bin, "train", "--db", str(db), "--factors", "20", "--json", cwd=home)
    assert done.returncode == 0, done.stderr
    return home, db, json.loads(done.stdout)


def test_cli_train_saves_an_artifact_with_provenance_and_recommend_uses_it(trained_db, recaudit_bin):
    home, db, meta = trained_db
    assert (home / "models" / meta["id"] / "model.npz").exists()
    assert meta["params"]["factors"] == 20 and meta["train"]["sha256"]
    known = int(rc.Model.load(meta["path"]).users[0])
    done = run_cli(recaudit_bin, "recommend", "--db", str(db), str(known), "--k", "5", "--json")
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["model"] == meta["id"] and not out["cold_start"]
    assert len(out["movies"]) == 5 and all(m["title"] for m in out["movies"])
    cold = run_cli(recaudit_bin, "recommend", "--db", str(db), "987654321", "--k", "3")
    assert "unknown to model" in cold.stdout.decode()


def test_cli_compare_prints_a_table_and_saves_it(trained_db, recaudit_bin):
    home, db, _ = trained_db
    done = run_cli(recaudit_bin, "train", "--db", str(db), "--compare", "--factors", "10", "--epochs", "5", cwd=home)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert all(name in out for name in ("svd", "knn", "baseline", "popularity", "NDCG@20"))
    saved = list((home / "models" / "comparisons").glob("comparison-*.json"))
    assert len(saved) == 1 and len(json.loads(saved[0].read_text())["algorithms"]) == 4


def test_cli_without_ratings_or_model_explains_in_one_line(tmp_path, recaudit_bin):
    db = str(tmp_path / "empty.db")
    for args, message in ((["train", "--db", db], "no ratings"),
                          (["recommend", "--db", db, "1"], "no model trained yet")):
        done = run_cli(recaudit_bin, *args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr.decode() and "Traceback" not in done.stderr.decode()


@pytest.fixture
def server(trained_db, recaudit_bin, tmp_path):
    home, db, meta = trained_db
    port, log = free_port(), tmp_path / "service.log"
    proc = subprocess.Popen([recaudit_bin, "serve", "--db", str(db), "--port", str(port), "--log", str(log),
                             "--server-name", "test-server:8082", "--reload-seconds", "0.5"], cwd=home)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(base + "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    yield base, log, meta
    proc.terminate()  # uvicorn shuts down gracefully, then exits by the signal it was sent
    assert proc.wait(timeout=15) in (0, -signal.SIGTERM)


def test_http_recommend_returns_twenty_distinct_movies_as_text_and_logs_a_parseable_line(server):
    base, log, meta = server
    known = int(rc.Model.load(meta["path"]).users[0])
    status, ctype, body = get(f"{base}/recommend/{known}")
    movies = body.split(",")
    assert status == 200 and ctype.startswith("text/plain")
    assert len(movies) == 20 == len(set(movies))
    assert get(f"{base}/recommend/abc")[0] == 400 and get(f"{base}/recommend/-1")[0] == 400
    assert get(f"{base}/recommend/99999999")[0] == 200  # cold start still answers
    parsed = ev.parse_file(log)
    assert parsed.rejects.empty and parsed.counts["recommend"] == 2
    first = parsed.recommendations.iloc[0]
    assert (first.user_id, first.server, first.status, first.n_items) == (known, "test-server:8082", 200, 20)
    assert parsed.items[parsed.items.line == first.line].movie_id.tolist() == movies


def test_a_newer_model_is_swapped_in_while_requests_keep_being_answered(server, trained_db, recaudit_bin):
    base, _log, meta = server
    home, db, _ = trained_db
    assert json.loads(get(base + "/healthz")[2])["model"] == meta["id"]
    trainer = subprocess.Popen([recaudit_bin, "train", "--db", str(db), "--algo", "baseline", "--json"], cwd=home,
                               stdout=subprocess.PIPE)
    statuses = []
    while trainer.poll() is None:
        statuses.append(get(f"{base}/recommend/1")[0])
    newer = json.loads(trainer.stdout.read())["id"]
    deadline = time.monotonic() + 10
    while json.loads(get(base + "/healthz")[2])["model"] != newer and time.monotonic() < deadline:
        statuses.append(get(f"{base}/recommend/1")[0])
    assert json.loads(get(base + "/healthz")[2])["model"] == newer
    assert statuses and set(statuses) == {200}


def test_predictions_made_a_few_pairs_at_a_time_equal_those_made_at_once(data, svd, monkeypatch):
    """`predict` gathers factor rows in chunks of bounded memory: the chunks change nothing."""
    from recaudit.recsys import recommender

    users, movies = data.test["user_id"].to_numpy(), data.test["movie_id"].astype(str).to_numpy()
    whole, cold = svd.predict(users, movies)
    assert (~cold).sum() > 100, "enough warm pairs for several chunks"
    monkeypatch.setattr(recommender, "PREDICT_CHUNK", 7)
    chunked, cold_chunked = svd.predict(users, movies)
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(cold_chunked, cold)

"""Fairness: per-group accuracy equals fairlearn's, gaps and intervals match hand computation,
small groups never alarm or vanish, the injected fault is found in every seed while a fair
service stays quiet, and the audit runs from the CLI on the stream world and on MovieLens."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from recaudit.audits import config as configuration
from recaudit.audits import fairness
from recaudit.audits.fairness import GroupMetrics
from recaudit.audits.ingest import ingest
from recaudit.audits.online import follow_ups
from recaudit.recsys import events, formats
from recaudit.recsys import recommender as rc
from recaudit.recsys.simulate import Config, simulate
from support import run_cli, seeded_services

SEEDS = range(10)


def settings(**changes):
    s = configuration.load()["fairness"]
    s.update(changes)
    return s


def frame_of(errors_by_user: dict, group_of: dict, **kw) -> GroupMetrics:
    users = np.concatenate([[u] * len(e) for u, e in errors_by_user.items()])
    errors = np.concatenate([np.asarray(e, dtype=float) for e in errors_by_user.values()])
    return GroupMetrics(errors, users, np.array([group_of[u] for u in users]), **kw)


# -- oracles ---------------------------------------------------------------------------------

def test_per_group_rmse_and_mae_equal_fairlearns_metricframe():
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    rng = np.random.default_rng(0)
    n = 3000
    user = rng.integers(0, 400, n)
    group = np.array(["F", "M", "unknown"])[user % 3]
    truth = rng.integers(1, 6, n).astype(float)
    predicted = np.clip(truth + rng.normal(0, 0.9, n), 1, 5)
    ours = GroupMetrics(predicted - truth, user, group, min_group_size=1, resamples=10)
    theirs = MetricFrame(metrics={"rmse": lambda t, p: np.sqrt(mean_squared_error(t, p)), "mae": mean_absolute_error},
                         y_true=truth, y_pred=predicted, sensitive_features=group)
    pd.testing.assert_frame_equal(ours.by_group[["rmse", "mae"]], theirs.by_group[["rmse", "mae"]],
                                  check_names=False, check_index_type=False)
    assert ours.overall["rmse"] == pytest.approx(theirs.overall["rmse"])
    assert ours.difference("rmse") == pytest.approx(theirs.difference()["rmse"])
    assert ours.ratio("mae") == pytest.approx(1 / theirs.ratio()["mae"])


def test_gap_between_constant_groups_is_exact_and_so_is_its_interval():
    frame = frame_of({1: [1.0, -1.0], 2: [1.0], 3: [0.5, -0.5], 4: [0.5]}, {1: "x", 2: "x", 3: "y", 4: "y"},
                     min_group_size=1, min_group_users=1, resamples=300)
    assert frame.difference("rmse") == pytest.approx(0.5) and frame.ratio("rmse") == pytest.approx(2.0)
    assert frame.worst_and_best("rmse") == ("x", "y")
    interval = frame.difference_interval("rmse")
    assert (interval.low, interval.high) == (pytest.approx(0.5), pytest.approx(0.5))


def test_interval_of_two_users_spans_the_hand_computed_resample_values():
    # Resampling users a (error 0) and b (error 2): {a,a} RMSE 0 (1/4), {a,b} sqrt 2 (1/2), {b,b} 2 (1/4).
    frame = frame_of({"a": [0.0], "b": [2.0]}, {"a": "g", "b": "g"}, min_group_size=1, resamples=2000)
    row = frame.intervals().loc["g"]
    assert (row["rmse_low"], row["rmse_high"]) == (0.0, 2.0)
    draws = frame._draws()[""][:, 0, 0]
    assert set(np.round(draws, 6)) == {0.0, round(np.sqrt(2), 6), 2.0}
    assert np.mean(np.isclose(draws, np.sqrt(2))) == pytest.approx(0.5, abs=0.04)


def test_bootstrap_is_seeded():
    args = ({1: [1.0, 0.2], 2: [0.1], 3: [2.0]}, {1: "x", 2: "y", 3: "y"})
    one, two = frame_of(*args, min_group_size=1, seed=3), frame_of(*args, min_group_size=1, seed=3)
    pd.testing.assert_frame_equal(one.intervals(), two.intervals())


def test_a_tiny_group_gets_a_wide_interval_and_raises_no_alert():
    rng = np.random.default_rng(1)
    errors = {u: rng.normal(0, 0.8, 10) for u in range(500)}
    errors.update({1001: np.full(20, 2.0), 1002: np.zeros(10), 1003: np.full(10, 0.1)})  # 40 ratings, 3 users
    frame = frame_of(errors, {u: "tiny" if u > 1000 else "big" for u in errors}, min_group_size=30, min_group_users=1)
    assert frame.difference("rmse") > 0.5  # far above the 0.2 threshold ...
    interval = frame.difference_interval("rmse")
    assert interval.low < 0 < interval.high and interval.high - interval.low > 1  # ... but it could be chance
    tiny = frame.intervals().loc["tiny"]
    assert tiny["rmse_high"] - tiny["rmse_low"] > 1
    # Three users are three users, however odd: at the default 20 users the group has no verdict.
    guarded = frame_of(errors, {u: "tiny" if u > 1000 else "big" for u in errors}, min_group_size=30)
    metrics = {}
    verdict = fairness._gap(guarded, "sex", "rmse", "", settings(), metrics, {})
    assert verdict.finding is None and verdict.row["verdict"].startswith("no verdict")


def test_a_group_of_one_user_gets_no_verdict_however_many_ratings():
    errors = {u: np.random.default_rng(u).normal(0, 0.8, 5) for u in range(300)}
    errors[999] = np.full(150, 1.3)  # one user's own bias, not a group's
    frame = frame_of(errors, {u: "alone" if u == 999 else "many" for u in errors})
    assert not frame.by_group.loc["alone", "sufficient"] and frame.difference("rmse") is None


def test_groups_below_the_minimum_are_reported_as_insufficient_not_dropped():
    evaluated = pd.DataFrame({
        "user_id": np.arange(250), "rating": 3.0, "prediction": 3.5, "cold_start": False,
        "sex": ["F"] * 120 + ["M"] * 120 + ["unknown"] * 10,
        "age_group": ["teen"] * 5 + ["senior"] * 245, "occupation": "writer"})
    metrics, findings, rows, _gaps = fairness.assess(evaluated, settings(resamples=20),
                                              configuration.DEFAULTS["groups"]["age"])
    by = {(r["dimension"], r["group"]): r for r in rows}
    assert by[("sex", "unknown")]["sufficient"] is False and by[("sex", "unknown")]["n"] == 10
    assert metrics["fairness.n.sex.unknown"] == 10 and metrics["fairness.rmse.sex.unknown"] is None
    assert metrics["fairness.rmse.sex.F"] == pytest.approx(0.5)
    assert metrics["fairness.rmse_gap.age"] is None  # one group left: no gap to speak of
    info = [f.message for f in findings if f.kind == "insufficient_group"]
    assert any("sex unknown (10 ratings by 10 users)" in m for m in info)
    assert any("teen (13-17) (5 ratings by 5 users)" in m for m in info)


# -- cold start ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("fair")
    cfg = Config(users=600, movies=150, days=4, seed=2)
    simulate(out, cfg)
    parsed = events.parse_file(out / "events.log")
    users = formats.read_users_csv(out / "users.csv")[0]
    data = rc.split(parsed.ratings, pd.Timestamp("2024-01-03"))
    return rc.train(data, "svd", factors=8, epochs=10, seed=0), data, users


def test_cold_starts_are_predicted_as_served_counted_and_shown_apart(model_and_data):
    model, data, users = model_and_data
    test = data.test.copy()
    newcomer = pd.DataFrame({"time": test["time"].iloc[:3].to_numpy(), "user_id": [10**9] * 3,
                             "movie_id": pd.Categorical(test["movie_id"].astype(str).iloc[:3]), "rating": 4})
    test = pd.concat([test[["time", "user_id", "movie_id", "rating"]], newcomer], ignore_index=True)
    evaluated = fairness.evaluate(model, test, users, configuration.DEFAULTS)
    new = evaluated[evaluated.user_id == 10**9]
    item = model._movie_index.get_indexer(new.movie_id)
    expected = np.clip(model.global_mean + np.where(item >= 0, model.item_bias[np.maximum(item, 0)], 0), 1, 5)
    assert new.cold_start.all() and np.allclose(new.prediction, expected) and (new.sex == "unknown").all()
    metrics, _f, rows, _gaps = fairness.assess(evaluated, settings(resamples=20, min_group_size=1, min_group_users=1),
                                        configuration.DEFAULTS["groups"]["age"])
    assert metrics["fairness.cold_start_share"] == pytest.approx(evaluated.cold_start.mean())
    assert metrics["fairness.cold_start_share.sex.unknown"] == 1.0
    warm = evaluated[~evaluated.cold_start]
    assert metrics["fairness.rmse_warm"] == pytest.approx(np.sqrt(np.mean((warm.prediction - warm.rating) ** 2)))
    assert metrics["fairness.rmse_warm.sex.unknown"] is None and metrics["fairness.rmse.sex.unknown"] is not None


def test_the_python_api_gives_the_audits_numbers_and_findings_for_the_same_ratings(model_and_data):
    import recaudit

    model, data, users = model_and_data
    evaluated = fairness.evaluate(model, data.test, users, configuration.DEFAULTS)
    small = {"resamples": 20, "min_group_size": 30, "min_group_users": 5}
    metrics, findings, _rows, _gaps = fairness.assess(evaluated, settings(**small),
                                                      configuration.DEFAULTS["groups"]["age"])
    result = recaudit.fairness(evaluated, config={"fairness": small})  # its columns: sex, age_group, occupation

    def named_by_column(key):  # the audit names the configured dimension, "age"; the function its column
        parts = key.split(".")
        return ".".join(parts[:2] + ["age_group" if parts[2] == "age" else parts[2]] + parts[3:]) \
            if len(parts) > 2 else key

    assert result.metrics == pytest.approx({named_by_column(k): v for k, v in metrics.items()}, nan_ok=True)
    assert [f.message for f in result.findings] == [f.message for f in findings]
    assert any("age group" in f.message for f in findings)


# -- warm and cold, chance and one user ----------------------------------------------------

def planted(rng, users: int, sd_of) -> pd.DataFrame:
    """Evaluated ratings of `users` users (half women), 10 warm and 10 cold-start ratings each,
    errors N(0, sd_of(sex, cold)) on a per-user bias of sd 0.2."""
    rows = []
    for u in range(users):
        sex = "F" if u % 2 else "M"
        bias = rng.normal(0, 0.2)
        for cold in (False, True):
            for e in bias + rng.normal(0, sd_of(sex, cold), 10):
                rows.append((u, 3.0, 3.0 + e, cold, sex))
    return pd.DataFrame(rows, columns=["user_id", "rating", "prediction", "cold_start", "sex"])


def test_a_gap_planted_among_warm_ratings_only_is_found_warm_and_not_cold():
    evaluated = planted(np.random.default_rng(0), 300, lambda sex, cold: 1.0 if cold else (1.3 if sex == "F" else 0.7))
    metrics, findings, _rows, gap_rows = fairness.assess(evaluated, settings(resamples=300, permutations=500), {},
                                                         dimensions={"sex": "sex"})
    keys = {f.key: f for f in findings if f.kind == "fairness_gap"}
    assert keys["fairness.rmse_gap_warm.sex"].severity == "warning"
    assert "for women" in keys["fairness.rmse_gap_warm.sex"].message
    assert "fairness.rmse_gap_cold.sex" not in keys and metrics["fairness.rmse_gap_cold.sex"] < 0.2
    assert metrics["fairness.rmse_gap_p_cold.sex"] > 0.05 and metrics["fairness.rmse_gap_p_warm.sex"] < 0.01
    assert metrics["fairness.rmse_warm.sex.F"] > metrics["fairness.rmse_warm.sex.M"] + 0.4
    assert "driven by warm ratings" in keys["fairness.rmse_gap.sex"].message
    verdicts = {(g["metric"], g["part"]): g["verdict"] for g in gap_rows}
    assert verdicts["rmse", "_warm"] == "gap beyond chance" and verdicts["rmse", "_cold"].startswith("no gap above")


def test_a_gap_made_by_one_heavy_user_is_reported_as_info_naming_the_user():
    rng = np.random.default_rng(0)
    rows = [(u, "A" if u < 60 else "B", e) for u in range(120) for e in rng.normal(0, 0.62 if u < 60 else 0.5, 10)]
    rows += [(999, "A", e) for e in rng.normal(0, 1.6, 120)]  # one user with 120 bad predictions
    frame = pd.DataFrame(rows, columns=["user_id", "region", "error"])
    evaluated = frame.assign(rating=3.0, prediction=3.0 + frame["error"], cold_start=False)
    metrics, findings, _rows, _gaps = fairness.assess(evaluated, settings(resamples=300, permutations=500), {},
                                                      dimensions={"region": "region"})
    gap = next(f for f in findings if f.key == "fairness.rmse_gap.region")
    assert metrics["fairness.rmse_gap.region"] > 0.2 and metrics["fairness.rmse_gap_p.region"] < 0.05
    assert gap.severity == "info" and "user 999 (120 ratings" in gap.message
    assert "one user makes this gap" in gap.message
    assert metrics["fairness.rmse_gap_without_user.region"] < 0.2
    assert not [f for f in findings if f.key.endswith("_warm.region")]  # every rating is warm: the mix says it
    # Without that user the groups differ by less than the threshold, and nothing is found.
    rest = evaluated[evaluated.user_id != 999]
    assert not [f for f in fairness.assess(rest, settings(resamples=300, permutations=500), {},
                                           dimensions={"region": "region"})[1] if f.kind == "fairness_gap"]


def test_the_detectable_gap_of_a_dimension_says_whether_no_finding_means_fair_or_too_little_data():
    verdicts = {}
    for users in (12, 2000):
        evaluated = planted(np.random.default_rng(2), users, lambda sex, cold: 2.0)
        metrics, findings, _rows, gap_rows = fairness.assess(
            evaluated, settings(resamples=100, permutations=300, min_group_size=20, min_group_users=5), {},
            dimensions={"sex": "sex"})
        assert not [f for f in findings if f.kind == "fairness_gap"]
        verdicts[users] = (metrics["fairness.rmse_mde.sex"],
                           next(g["verdict"] for g in gap_rows if g["metric"] == "rmse" and g["part"] == ""))
    assert verdicts[12][0] > 0.2 > verdicts[2000][0]
    assert verdicts[12][1].startswith("too little data to tell") and verdicts[2000][1].startswith("no gap above 0.2")


# -- online success --------------------------------------------------------------------------

def test_a_recommendation_succeeds_when_a_listed_movie_is_watched_within_15_minutes():
    t = pd.Timestamp("2024-01-01 10:00:00")
    recs = pd.DataFrame({"source_id": 1, "line": [1, 2, 3, 4], "time": [t, t, t, t], "user_id": [1, 2, 3, 4],
                         "server": "a", "status": [200, 200, 200, 500], "n_items": [3, 3, 3, 0]})
    items = pd.DataFrame({"source_id": 1, "line": np.repeat([1, 2, 3], 3), "rank": np.tile([1, 2, 3], 3),
                          "movie_id": ["a", "b", "c"] * 3})
    watches = pd.DataFrame({"user_id": [1, 1, 2, 3, 4], "movie_id": ["c", "b", "a", "x", "a"],
                            "time": [t + pd.Timedelta("10min"), t + pd.Timedelta("12min"), t + pd.Timedelta("15min1s"),
                                     t + pd.Timedelta("1min"), t + pd.Timedelta("1min")]})
    out = follow_ups(recs, items, watches).set_index("user_id")
    assert out.success.to_dict() == {1: True, 2: False, 3: False}  # 4 failed: not a list at all
    assert out.loc[1, "first_rank"] == 3  # the first watched (c at 10 min), not the best ranked (b at 12)
    watches.loc[2, "time"] = t  # a watch at the very time of the request is not a follow-up
    assert not follow_ups(recs, items, watches).set_index("user_id").loc[2, "success"]


# -- detection over seeds --------------------------------------------------------------------

@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    """For each seed, the gap findings on a clean service and on one with the fairness fault."""
    age = configuration.DEFAULTS["groups"]["age"]
    found = {}
    for faulty, seed, cfg, out in seeded_services(tmp_path_factory, "fairness", SEEDS, users=6000, movies=300, days=6):
        ratings = events.parse_file(out / "events.log").ratings
        data = rc.split(ratings, pd.Timestamp(cfg.start) + pd.Timedelta(days=cfg.injection_day))
        model = rc.train(data, "svd", factors=10, epochs=20, seed=0)
        evaluated = fairness.evaluate(model, data.test, formats.read_users_csv(out / "users.csv")[0],
                                      configuration.DEFAULTS)
        findings = fairness.assess(evaluated, settings(), age)[1]
        found[faulty, seed] = [f for f in findings if f.kind == "fairness_gap"]
    return found


def test_the_fairness_fault_is_found_for_women_in_every_seed_and_a_fair_service_stays_quiet(detection):
    injected = [any(f.key == "fairness.rmse_gap.sex" and "for women against" in f.message for f in found)
                for (faulty, _), found in detection.items() if faulty]
    seniors = [any(f.key.endswith(".age") and "senior" in f.message.split(" against ")[0] for f in found)
               for (faulty, _), found in detection.items() if faulty]
    alarms = [bool(found) for (faulty, _), found in detection.items() if not faulty]
    print(f"fairness fault found for women in {sum(injected)}/{len(injected)} seeds, for seniors in "
          f"{sum(seniors)}/{len(seniors)}; clean service alarmed in {sum(alarms)}/{len(alarms)}")
    assert all(injected) and sum(alarms) <= 1


# -- the audit, end to end -------------------------------------------------------------------

def test_cli_audit_exports_every_evaluated_rating_and_reviewers_can_recompute_the_metrics(
        recaudit_bin, db_url, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=800, movies=150, days=6, seed=4, inject=("fairness",)))
    assert run_cli(recaudit_bin, "ingest", "--db", db_url, str(data)).returncode == 0
    assert run_cli(recaudit_bin, "train", "--db", db_url, "--until", "2024-01-04", "--factors", "8",
                   "--models", str(tmp_path / "models")).returncode == 0
    csv_path, toml = tmp_path / "predictions.csv", tmp_path / "recaudit.toml"
    toml.write_text("[fairness]\nmin_group_size = 20\nresamples = 50\n")
    done = run_cli(recaudit_bin, "audit", "--db", db_url, "--config", str(toml), "--only", "fairness",
                   "--out", str(tmp_path / "reports"), "--export-predictions", str(csv_path), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["audits"]["fairness"]
    exported = pd.read_csv(csv_path)
    assert list(exported.columns) == ["user_id", "movie_id", "time", "rating", "prediction", "cold_start", "sex",
                                      "age_group", "occupation"]
    assert len(exported) == result["metrics"]["fairness.n"] > 0
    assert pd.to_datetime(exported.time).min() >= pd.Timestamp("2024-01-04")  # only after the training cutoff
    women = exported[exported.sex == "F"]
    rmse = np.sqrt(np.mean((women.prediction - women.rating) ** 2))
    assert result["metrics"]["fairness.rmse.sex.F"] == pytest.approx(rmse, abs=1e-9)
    assert result["metrics"]["fairness.hit_rate.sex.M"] is not None
    page = (tmp_path / "reports" / "runs" / str(json.loads(done.stdout)["run_id"]) / "index.html").read_text()
    assert "By sex" in page and "<svg" in page and "women" in page


def test_cli_audit_with_an_unknown_model_is_a_usage_error(recaudit_bin, tmp_path):
    done = run_cli(recaudit_bin, "audit", "--db", str(tmp_path / "x.db"), "--model", "nope")
    assert done.returncode == 2 and b"no model 'nope'" in done.stderr and b"Traceback" not in done.stderr


def test_without_a_model_the_fairness_audit_says_so(store, tmp_path):
    from recaudit.audits import run as runs

    (tmp_path / "e.log").write_text("2024-01-01T00:00:00,1,GET /rate/a+2001=4\n")
    ingest(store, [str(tmp_path / "e.log")])
    result = runs.run(store, "2024-01-01", "2024-01-02", configuration.load(), ["fairness"], tmp_path).results
    assert result["fairness"].status == "insufficient_data" and "recaudit train" in result["fairness"].details["reason"]


def write_movielens_1m(world, out):
    """The simulated world in MovieLens-1M's files (ages as its codes, occupations as numbers)."""
    users = formats.read_users_csv(world / "users.csv")[0]
    movies = formats.read_movies_csv(world / "movies.csv")[0]
    ratings = events.parse_file(world / "events.log").ratings
    ids = {m: i + 1 for i, m in enumerate(movies.movie_id)}
    codes = np.array([1, 18, 25, 35, 45, 50, 56])
    age = codes[np.searchsorted(codes, users.age.to_numpy(), side="right") - 1]
    jobs = {j: i for i, j in enumerate(sorted(users.occupation.unique()))}
    out.mkdir()
    (out / "users.dat").write_text("".join(f"{u}::{g}::{a}::{jobs[o] % 21}::00000\n" for u, g, a, o in
                                           zip(users.user_id, users.gender, age, users.occupation)), encoding="latin-1")
    (out / "movies.dat").write_text("".join(f"{ids[m]}::{t} ({y})::{g}\n" for m, t, y, g in
                                            zip(movies.movie_id, movies.title, movies.year.fillna(1990),
                                                movies.genres)),
                                    encoding="latin-1")
    seconds = ratings.time.astype("int64") // 10**9
    (out / "ratings.dat").write_text("".join(f"{u}::{ids[str(m)]}::{r}::{s}\n" for u, m, r, s in
                                             zip(ratings.user_id, ratings.movie_id, ratings.rating, seconds)))


def test_the_audit_runs_on_movielens_data(recaudit_bin, tmp_path):
    world = tmp_path / "world"
    simulate(world, Config(users=800, movies=150, days=6, seed=5))
    write_movielens_1m(world, tmp_path / "ml-1m")
    db = str(tmp_path / "ml.db")
    done = run_cli(recaudit_bin, "ingest", "--db", db, str(tmp_path / "ml-1m"))
    assert done.returncode == 0, done.stderr
    assert run_cli(recaudit_bin, "train", "--db", db, "--until", "2024-01-04", "--factors", "8",
                   "--models", str(tmp_path / "models")).returncode == 0
    (tmp_path / "recaudit.toml").write_text("[fairness]\nmin_group_size = 20\nresamples = 50\n")
    done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(tmp_path / "recaudit.toml"),
                   "--only", "fairness", "--since", "2024-01-04",
                   "--until", "2024-01-07", "--out", str(tmp_path / "reports"), "--json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["audits"]["fairness"]["metrics"]
    assert metrics["fairness.n"] > 0 and metrics["fairness.rmse.sex.M"] is not None
    assert "fairness.n.age.under_18" in metrics  # MovieLens-1M's own group, kept as such


def test_a_fairness_dimension_that_cannot_name_an_attribute_is_an_input_error(tmp_path):
    (tmp_path / "recaudit.toml").write_text('[fairness]\ndimensions = ["sex", "Income"]\n')
    with pytest.raises(formats.InputError, match="fairness.dimensions.*'Income'"):
        configuration.load(tmp_path / "recaudit.toml")


def test_exported_csv_has_one_row_per_rating_with_its_groups(model_and_data, tmp_path):
    model, data, users = model_and_data
    evaluated = fairness.evaluate(model, data.test, users, configuration.DEFAULTS)
    fairness.export(evaluated, tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data.test) and {r["sex"] for r in rows} <= {"F", "M"}


def test_dimensions_drawn_together_get_the_intervals_each_would_get_alone():
    """One bootstrap serves every dimension of a run (the draws are the costly part at many
    users); each dimension's intervals, on all, warm and cold-start ratings, are those it draws
    alone."""
    rng = np.random.default_rng(5)
    user = rng.integers(0, 400, 5000)
    error = rng.normal(0, 1, 5000) + rng.normal(0, 0.3, 400)[user]
    cold = rng.random(5000) < 0.4
    dims = {"sex": np.array(["F", "M"])[user % 2], "age": np.array(["a", "b", "c"])[user % 3]}

    def frames():
        return {d: fairness.GroupMetrics(error, user, g, min_group_size=10, min_group_users=5, resamples=300,
                                         cold=cold) for d, g in dims.items()}

    alone, together = frames(), frames()
    fairness.draw_together(together.values())
    assert all("draws" in frame._boot for frame in together.values())  # drawn once, by draw_together
    for d in dims:
        for part in fairness.PARTS:
            pd.testing.assert_frame_equal(together[d].intervals(part), alone[d].intervals(part), rtol=1e-12)

"""Drift: each signal flags a known shift and not an identical distribution; the noise floor
permutes whole users, so values that share a user's bias do not pass for drift; the builders
read the right aggregates; and over many seeds the drift fault is found while an unchanged
service stays quiet."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from recaudit.audits import config as configuration
from recaudit.audits import drift
from recaudit.audits import run as runs
from recaudit.audits.drift_sources import FrameSource, StoreSource, sample_users, user_key_sql, user_keys
from recaudit.audits.ingest import ingest
from recaudit.recsys import formats, recommender
from recaudit.recsys.events import parse_file
from recaudit.recsys.simulate import Config, simulate
from support import run_cli

SEEDS = range(10)


def cfg(**drift_settings):
    c = configuration.load()
    c["drift"].update(drift_settings)
    return c


def categorical(shares: dict, n: int) -> np.ndarray:
    return np.repeat(list(shares), [round(v * n) for v in shares.values()])


def raw(name: str, values) -> pd.DataFrame:
    """Values as a builder returns them: for a signal by user, each value a user of its own; for
    one by request, counts by value."""
    values = np.asarray(values)
    if drift.SIGNALS[name].unit == drift.USER:
        return pd.DataFrame({"user_id": np.arange(len(values)), "value": values, "n": 1})
    counts = pd.Series(values).value_counts()
    return pd.DataFrame({"value": counts.index.to_numpy(), "n": counts.to_numpy()})


HAND_MADE = {  # signal: (reference, shifted current) values
    "rating": (categorical({"1": .05, "2": .1, "3": .25, "4": .35, "5": .25}, 5000),
               categorical({"1": .02, "2": .05, "3": .13, "4": .35, "5": .45}, 5000)),
    "ratings_per_user": (np.random.default_rng(1).poisson(2, 5000) + 1.0,
                         np.random.default_rng(2).poisson(3, 5000) + 1.0),
    "minutes_per_session": (np.random.default_rng(3).gamma(2, 25, 5000), np.random.default_rng(4).gamma(2, 35, 5000)),
    "watched_popularity": (categorical({"head": .5, "middle": .3, "tail": .2}, 5000),
                           categorical({"head": .35, "middle": .3, "tail": .3, "new": .05}, 5000)),
    "recommended_popularity": (categorical({"head": .6, "middle": .3, "tail": .1}, 5000),
                               categorical({"head": .85, "middle": .12, "tail": .03}, 5000)),
    "genre": (categorical({"Drama": .3, "Comedy": .3, "Horror": .1, "Action": .3}, 5000),
              categorical({"Drama": .2, "Comedy": .2, "Horror": .35, "Action": .25}, 5000)),
    "age_group": (categorical({"teen": .09, "young_adult": .45, "middle_aged": .34, "senior": .12}, 5000),
                  categorical({"teen": .21, "young_adult": .45, "middle_aged": .25, "senior": .09}, 5000)),
    "sex": (categorical({"M": .65, "F": .35}, 5000), categorical({"M": .45, "F": .55}, 5000)),
    "occupation": (categorical({"programmer": .3, "writer": .3, "retired": .4}, 5000),
                   categorical({"programmer": .5, "writer": .3, "retired": .2}, 5000)),
    "latency": (np.repeat([100.0, 120, 140], [2000, 2000, 1000]), np.repeat([160.0, 190, 220], [2000, 2000, 1000])),
    "status": (categorical({"200": .98, "0": .01, "500": .01}, 5000),
               categorical({"200": .8, "0": .15, "500": .05}, 5000)),
    "predicted_score": (np.random.default_rng(5).normal(3.6, .5, 5000), np.random.default_rng(6).normal(4.1, .5, 5000)),
}


def columns(name, reference_raw, current_raw, config=None):
    config = config or cfg()
    signal = drift.SIGNALS[name]
    return drift.column(signal, reference_raw, config, 0), drift.column(signal, current_raw, config, 1)


def verdict(name, reference, current, config=None, seed=0):
    """The verdict on two windows of values (as `raw` makes them counts)."""
    config = config or cfg()
    ref, cur = columns(name, raw(name, reference), raw(name, current), config)
    return drift.compare(drift.SIGNALS[name], ref, cur, config["drift"]["signals"][name], seed)


def test_every_signal_has_a_hand_made_case():
    assert set(HAND_MADE) == set(drift.SIGNALS) == set(configuration.load()["drift"]["signals"])


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_a_known_shift_is_flagged(name):
    reference, current = HAND_MADE[name]
    v = verdict(name, reference, current)
    assert v["drifted"], v
    assert v["score"] >= v["threshold"] > 0 and v["score"] > v["noise_floor"]


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_an_identical_distribution_is_not_flagged(name):
    reference, _ = HAND_MADE[name]
    v = verdict(name, reference, reference.copy())
    assert not v["drifted"] and v["score"] < v["threshold"], v


def test_a_small_sample_does_not_pass_for_drift():
    """500 values drawn from one distribution differ by about the default effect size."""
    rng = np.random.default_rng(0)
    flagged = sum(verdict("minutes_per_session", rng.gamma(2, 25, 300), rng.gamma(2, 25, 300))["drifted"]
                  for _ in range(20))
    assert flagged <= 1


# -- the noise floor permutes users ------------------------------------------------------------

USERS, SLOTS = 40, 20  # a window of 800 values from 40 users: a small service's day


def clustered(kind: str, rng, shift: float = 0.0) -> pd.DataFrame:
    """One window of a service whose values share a strong per-user bias, as a builder returns
    them: numbers with a user offset of SD 0.5 against a spread of 0.2 within a user (as a
    user's predicted scores), or categories of which each user takes mostly one (as a user's
    tiers or genres). `shift` moves the numbers, or the shares of the users' categories."""
    user = np.repeat(np.arange(USERS), SLOTS)
    if kind == drift.NUMERICAL:
        value = 3.5 + shift + rng.normal(0, 0.5, USERS)[user] + rng.normal(0, 0.2, USERS * SLOTS)
    else:
        shares = np.array([.6, .3, .1]) + shift * np.array([-.4, 0, .4])
        own = rng.choice(3, USERS, p=shares)[user]
        mostly = np.where(rng.random(USERS * SLOTS) < .95, own, rng.choice(3, USERS * SLOTS, p=shares))
        value = np.array(["a", "b", "c"])[mostly]
    return pd.DataFrame({"user_id": user, "value": value, "n": 1})


def by_value(column: drift.Column) -> drift.Column:
    """The same values, each taken as a unit of its own: the noise floor before units."""
    return drift.Column(column.values, np.arange(len(column.values)), column.population)


BY_USER = sorted(name for name, signal in drift.SIGNALS.items() if signal.unit == drift.USER)


@pytest.mark.parametrize("name", BY_USER)
def test_an_unchanged_service_with_strong_per_user_bias_is_not_flagged_where_a_value_level_floor_would_be(name):
    """Both windows come from one distribution, in each of 20 seeds. The user-level floor keeps
    every signal by user quiet; the same values taken one by one (the floor before units) alarm
    in a quarter of the seeds or more, under a floor less than half as high."""
    signal, config = drift.SIGNALS[name], cfg()
    settings = config["drift"]["signals"][name]
    flagged, flagged_by_value, ratios = 0, 0, []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ref, cur = columns(name, clustered(signal.kind, rng), clustered(signal.kind, rng), config)
        assert ref.unit_count == cur.unit_count == USERS
        v = drift.compare(signal, ref, cur, settings, seed)
        old = drift.compare(signal, by_value(ref), by_value(cur), settings, seed)
        assert v["score"] == old["score"] and v["unit"] == drift.USER
        flagged += v["drifted"]
        flagged_by_value += old["drifted"]
        ratios.append(v["noise_floor"] / old["noise_floor"])
    assert flagged <= 1
    assert flagged_by_value >= 5
    assert np.median(ratios) > 2


@pytest.mark.parametrize("name", BY_USER)
def test_a_real_shift_of_a_signal_by_user_is_still_flagged(name):
    """Numbers up by 0.5 (the SD of a user's offset), or two fifths of the first category's
    share gone to the last: flagged in 18 seeds of 20 or more, over the user-level floor."""
    signal, config = drift.SIGNALS[name], cfg()
    flagged = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ref, cur = columns(name, clustered(signal.kind, rng), clustered(signal.kind, rng, shift=1.0), config)
        flagged += drift.compare(signal, ref, cur, config["drift"]["signals"][name], seed)["drifted"]
    assert flagged >= 18


@pytest.mark.parametrize("name, method", [("occupation", "jensenshannon"), ("latency", "wasserstein")])
def test_the_vectorised_noise_floor_scores_exactly_as_evidently_does(name, method):
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Categorical if drift.SIGNALS[name].kind == "categorical" else ColumnType.Numerical
    rng = np.random.default_rng(7)
    pooled = (pd.Series(rng.choice(["a", "b", "c", "d"], 3000, p=[.4, .3, .2, .1]), dtype=object)
              if method == "jensenshannon" else pd.Series(np.round(rng.gamma(2, 30, 3000), 1)))  # with ties
    units = pd.factorize(np.sort(rng.integers(0, 400, 3000)))[0]  # about 400 units of uneven sizes
    labels = np.r_[np.ones(150, bool), np.zeros(units.max() + 1 - 150, bool)]
    splits = rng.permuted(np.tile(labels, (5, 1)), axis=1)
    test = get_stattest(pooled, pooled, kind, method)
    fast = drift.split_scores(test, kind, pooled, units, splits, 0.1)
    one_by_one = [test(pooled[row[units]].reset_index(drop=True), pooled[~row[units]].reset_index(drop=True),
                       kind, 0.1).drift_score for row in splits]
    assert np.allclose(fast, one_by_one, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, method", [("sex", "jensenshannon"), ("ratings_per_user", "wasserstein")])
def test_units_drawn_by_kind_give_the_scores_of_permuted_units(name, method):
    """600 users with one or two values of three: a dozen kinds of unit. The floor draws how
    many of each kind go to the reference; explicit permutations of the users give the same
    distribution of scores (1,960 of each, Kolmogorov-Smirnov)."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType
    from scipy import stats

    kind = ColumnType.Categorical if drift.SIGNALS[name].kind == "categorical" else ColumnType.Numerical
    rng = np.random.default_rng(3)
    units = np.repeat(np.arange(600), rng.integers(1, 3, 600))
    values = rng.choice([1.0, 2.0, 3.0], len(units), p=[.5, .3, .2])
    pooled = pd.Series(values.astype(str), dtype=object) if method == "jensenshannon" else pd.Series(values)
    test = get_stattest(pooled, pooled, kind, method)
    assert drift._alike(drift._unit_histograms(test, kind, pooled, units, 600)[0]) is not None  # drawn by kind
    by_kind = np.concatenate([drift.floor_scores(test, kind, pooled, units, 250, np.random.default_rng(seed), 0.1)
                              for seed in range(40)])
    labels = np.r_[np.ones(250, bool), np.zeros(350, bool)]
    permuted = drift.split_scores(test, kind, pooled, units, rng.permuted(np.tile(labels, (len(by_kind), 1)), axis=1),
                                  0.1)
    assert stats.ks_2samp(by_kind, permuted).pvalue > 0.01
    assert by_kind.mean() == pytest.approx(permuted.mean(), rel=0.05)


def test_a_window_beyond_max_sample_is_sampled_by_whole_users_with_a_seed():
    config = cfg(max_sample=1000)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 30, 300)  # 300 users, 1 to 29 values each
    counts = pd.DataFrame({"user_id": np.repeat(np.arange(300), sizes),
                           "value": rng.choice(["a", "b"], sizes.sum()), "n": 1})
    col = drift.column(drift.SIGNALS["genre"], counts, config, 0)
    assert col.population == sizes.sum() and col.sampled and 1000 - 29 < len(col.values) <= 1000
    kept = np.sort(sample_users(counts, 1000, 0)["user_id"].unique())
    assert np.bincount(col.units).tolist() == sizes[kept].tolist()  # every value of each sampled user
    again = drift.column(drift.SIGNALS["genre"], counts.sample(frac=1, random_state=1), config, 0)
    assert again.values.equals(col.values) and (again.units == col.units).all()  # in any order, the same
    other = sample_users(counts, 1000, 1)["user_id"].unique()
    assert len(set(kept) & set(other)) < len(kept) / 2  # another seed, other users
    status = drift.column(drift.SIGNALS["status"], raw("status", np.repeat(["200", "0"], [9000, 1000])), config, 0)
    assert len(status.values) == 1000 and status.unit_count == 1000 and 50 < (status.values == "0").sum() < 150


def test_user_keys_are_computed_alike_by_numpy_and_by_the_database(store):
    from sqlalchemy import BigInteger, literal, select

    ids = [0, 1, 2, 3, 12_345, -7, 2**31 - 2, 2**31 - 1, 2**31, 2**40 + 3, 2**62, -(2**62)]
    for seed in (0, 3):
        query = select(*(user_key_sql(literal(i, BigInteger), seed).label(f"k{n}") for n, i in enumerate(ids)))
        assert store.frame(query, fixed=True).iloc[0].tolist() == user_keys(np.array(ids), seed).tolist()
    keys = user_keys(np.arange(1, 10_001), 0)
    assert len(np.unique(keys)) > 9_900 and abs(np.corrcoef(np.arange(10_000), keys)[0, 1]) < 0.05  # mixed


def test_a_changed_threshold_or_method_in_the_config_is_used(tmp_path):
    path = tmp_path / "recaudit.toml"
    path.write_text('[drift.signals.sex]\nthreshold = 0.5\n[drift.signals.latency]\nmethod = "ks"\nthreshold = 0.05\n')
    config = configuration.load(path)
    reference, current = HAND_MADE["sex"]
    assert not verdict("sex", reference, current, config)["drifted"]  # 0.2 < 0.5
    latency = verdict("latency", *HAND_MADE["latency"], config)
    assert latency["method"] == "K-S p_value" and latency["threshold"] == 0.05


# -- the audit on stored data -------------------------------------------------------------------

WINDOWS = dict(since=pd.Timestamp("2024-01-05"), until=pd.Timestamp("2024-01-06"),
               reference=(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-04")))


def audit(store, tmp_path, config=None, **windows):
    w = {**WINDOWS, **windows}
    return runs.run(store, w["since"], w["until"], config or cfg(report=False), ["drift"], tmp_path,
                    w["reference"]).results["drift"]


HAND_LOG = """2024-01-01T10:00:00,1,GET /data/m/a+2001/0.mpg
2024-01-01T10:01:00,1,GET /data/m/a+2001/1.mpg
2024-01-01T10:02:00,1,GET /data/m/a+2001/2.mpg
2024-01-02T10:00:00,1,GET /data/m/a+2001/3.mpg
2024-01-01T11:00:00,2,GET /data/m/b+2002/0.mpg
2024-01-01T11:05:00,2,GET /rate/b+2002=4
2024-01-01T11:06:00,2,GET /rate/a+2001=5
2024-01-02T11:06:00,2,GET /rate/c+2003=3
2024-01-01T12:00:00.5,3,recommendation request s:1, status 200, result: a+2001, c+2003, 120 ms
2024-01-01T12:01:00.5,3,recommendation request s:1, status 0, result: timeout, 800 ms
"""


def sources(store, since, until):
    """The window of stored data as each source reads it: aggregated in the database, and as
    the frames the store gives back (shaped like the parser's)."""
    a, b = pd.Timestamp(since), pd.Timestamp(until)
    frames = {name: store.read(name, a, b) for name in ("watches", "ratings", "recommendations", "items")}
    return {"store": StoreSource(store, a, b),
            "frames": FrameSource(frames, store.read("users"), store.read("movies"))}


def test_builders_count_per_user_day_so_window_length_does_not_matter(store, tmp_path):
    (tmp_path / "users.csv").write_text("user_id,age,gender,occupation\n"
                                        "1,15,F,student\n2,70,M,retired\n3,30,F,writer\n")
    (tmp_path / "movies.csv").write_text("movie_id,title,year,genres\n"
                                         "a+2001,A,2001,Drama|Horror\nb+2002,B,2002,Comedy\n")
    (tmp_path / "e.log").write_text(HAND_LOG)
    ingest(store, [str(tmp_path / f) for f in ("users.csv", "movies.csv", "e.log")])
    for name, src in sources(store, "2024-01-01", "2024-01-03").items():
        basis = drift.Basis(cfg(), src)

        def build(signal):
            return drift.SIGNALS[signal].build(src, basis)

        def totals(signal):
            counts = build(signal)
            return {str(value): n for value, n in counts.groupby("value")["n"].sum().items()}

        def users(signal):
            return sorted(build(signal)["user_id"].unique().tolist())

        assert sorted(build("minutes_per_session")["value"].tolist()) == [1.0, 1.0, 3.0], name  # user 1: a on 2 days
        assert sorted(build("ratings_per_user")["value"].tolist()) == [1.0, 2.0], name  # user 2: 2 on day 1, 1 on day 2
        assert totals("rating") == {"3": 1, "4": 1, "5": 1} and users("rating") == [2], name
        assert totals("status") == {"0": 1, "200": 1} and "user_id" not in build("status"), name  # by request
        assert totals("genre") == {"Comedy": 1, "Drama": 2, "Horror": 2}, name
        assert users("genre") == users("minutes_per_session") == [1, 2], name
        assert totals("age_group") == {"teen": 2, "senior": 2, "young_adult": 1}, name  # user-days
        teen = build("age_group").query("value == 'teen'")
        assert teen[["user_id", "n"]].values.tolist() == [[1, 2]], name  # user 1's two days: one unit, one row
        assert build("latency")[["value", "n"]].values.tolist() == [[120.0, 1.0]], name
        basis.tiers = drift.popularity_tiers(pd.Series({"a+2001": 5, "b+2002": 3, "x+1999": 2}))
        assert basis.tiers.to_dict() == {"a+2001": "head", "b+2002": "middle", "x+1999": "tail"}
        assert totals("recommended_popularity") == {"head": 1, "new": 1} and users("recommended_popularity") == [3]


def test_popularity_tiers_of_movies_watched_equally_often_do_not_depend_on_their_order():
    watchers = pd.Series({"c": 4, "a": 4, "b": 4, "d": 1})
    assert drift.popularity_tiers(watchers).equals(drift.popularity_tiers(watchers.iloc[::-1]))


@pytest.mark.parametrize("since, until", [("2024-01-02", "2024-01-04"),  # whole hours: the rollup
                                          ("2024-01-02T05:30", "2024-01-03T17:45")])  # the watches themselves
def test_sessions_and_active_users_from_the_database_match_those_of_the_frames_rollup_or_not(store, small_world,
                                                                                               since, until):
    ingest(store, [str(small_world)])
    got = sources(store, since, until)
    key = ["user_id", "day", "movie_id"]
    s, f = (got[name].sessions.astype({"movie_id": str}).sort_values(key, ignore_index=True)
            for name in ("store", "frames"))
    assert len(s) > 50
    pd.testing.assert_frame_equal(s, f, check_dtype=False)
    a, f = (got[name].active.sort_values("user_id", ignore_index=True) for name in ("store", "frames"))
    assert len(a) > 30
    assert a["user_id"].is_unique and a["days"].max() > 1, "one row per user, however many days they were active"
    pd.testing.assert_frame_equal(a, f, check_dtype=False)


def test_an_empty_or_tiny_window_gives_insufficient_data_not_a_crash_or_an_alarm(store, tmp_path):
    (tmp_path / "e.log").write_text(HAND_LOG)
    ingest(store, [str(tmp_path / "e.log")])
    tiny = audit(store, tmp_path, since=pd.Timestamp("2024-01-02"), until=pd.Timestamp("2024-01-03"),
                 reference=(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02")))
    empty = audit(store, tmp_path, since=pd.Timestamp("2025-01-01"), until=pd.Timestamp("2025-01-02"))
    for result in (tiny, empty):
        assert result.status == "insufficient_data" and not result.findings
        assert {s["status"] for s in result.details["signals"]} <= {"insufficient_data", "skipped"}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The same service, unchanged and with the drift fault from day 3, for each seed."""
    from recaudit.audits.store import Store

    out = {}
    for seed in SEEDS:
        for fault in ("clean", "drift"):
            path = tmp_path_factory.mktemp(f"{fault}{seed}")
            simulate(path / "data", Config(users=3000, movies=300, days=7, seed=seed,
                                           inject=() if fault == "clean" else ("drift",)))
            store = Store(f"sqlite:///{path / 'x.db'}")
            ingest(store, [str(path / "data")])
            out[fault, seed] = (store, path)
    return out


def test_drift_is_found_in_every_seed_and_an_unchanged_service_rarely_alarms(simulated, capsys):
    detected = sum(audit(*simulated["drift", s]).metrics["drift.dataset_drift"] == 1 for s in SEEDS)
    false_alarms = sum(audit(*simulated["clean", s]).metrics["drift.dataset_drift"] == 1 for s in SEEDS)
    with capsys.disabled():
        print(f"\ndrift detected in {detected}/{len(SEEDS)} seeds; clean data alarmed in {false_alarms}/{len(SEEDS)}")
    assert detected == len(SEEDS)
    assert false_alarms <= 1


def test_findings_say_what_changed_in_plain_words(simulated):
    result = audit(*simulated["drift", 0])
    messages = " | ".join(f.message for f in result.findings)
    assert "the share of age group of daily active users" in messages and "went from" in messages
    assert "; noise floor 0." in messages and "users permuted)" in messages
    assert "dataset drift:" in messages and result.critical


def test_the_evidently_report_is_saved_beside_the_run_and_framed_in_its_page(simulated, recaudit_bin):
    store, path = simulated["drift", 1]
    out = path / "out"
    done = run_cli(recaudit_bin, "audit", "--db", store.url, "--only", "drift", "--since", "2024-01-05",
                   "--until", "2024-01-06", "--reference-since", "2024-01-01", "--reference-until", "2024-01-04",
                   "--out", str(out), "--json")
    assert done.returncode == 1  # dataset drift is critical by default
    run = json.loads(done.stdout)
    folder = out / "runs" / str(run["run_id"])
    assert run["audits"]["drift"]["details"]["artifacts"] == {"html": "drift.html", "json": "drift.json"}
    assert (folder / "drift.html").stat().st_size > 100_000
    assert json.loads((folder / "drift.json").read_text())["metrics"]
    page = (folder / "index.html").read_text()
    assert '<iframe class="report" sandbox="allow-scripts" src="drift.html"' in page  # shown, sandboxed
    assert "units permuted (reference / current)" in page and " users</td>" in page and " requests</td>" in page
    assert 'href="drift.json"' in page
    metrics = run["audits"]["drift"]["metrics"]
    assert {"drift.share_drifted", "drift.dataset_drift", "drift.age_group.score",
            "drift.age_group.drifted"} <= set(metrics)


@pytest.fixture(scope="module")
def served(tmp_path_factory, recaudit_bin):
    """An unchanged service as `recaudit simulate --users 2000 --days 14` makes it, ingested, with
    a model trained on its first week (whose predictions are then a signal), as the demo has."""
    path = tmp_path_factory.mktemp("served")
    db = f"sqlite:///{path / 'x.db'}"
    (path / "recaudit.toml").write_text("[drift]\nreport = false\n")
    for args in (("simulate", "--out", str(path / "data"), "--users", "2000", "--days", "14"),
                 ("ingest", "--db", db, str(path / "data")),
                 ("train", "--db", db, "--models", str(path / "models"), "--until", "2024-01-08")):
        assert run_cli(recaudit_bin, *args).returncode == 0, args
    return db, path


def test_an_unchanged_simulated_service_with_a_model_raises_no_drift_finding_on_any_day(served, recaudit_bin):
    """Each day of the second week against the 7 days before it. The model's predicted scores
    score at least evidently's threshold on some days (their values share each user's bias): a
    floor of permuted values flagged them (day 8: 0.109 over a floor of 0.04); whole users'
    floor is above them."""
    db, path = served
    predicted = []
    for day in range(8, 15):
        done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(path / "recaudit.toml"), "--only", "drift",
                       "--since", f"2024-01-{day:02d}", "--until", f"2024-01-{day + 1:02d}", "--out",
                       str(path / "out"), "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)["audits"]["drift"]
        assert result["findings"] == [], (day, [f["message"] for f in result["findings"]])
        assert {s["status"] for s in result["details"]["signals"]} <= {"stable", "insufficient_data"}
        predicted += [s for s in result["details"]["signals"] if s["signal"] == "predicted_score"]
    assert [(s["status"], s["unit"]) for s in predicted] == [("stable", "user")] * 7
    above = [s for s in predicted if s["score"] >= s["threshold"]]
    assert above and all(s["noise_floor"] > s["score"] for s in above)


# -- drift on frames: the same computation as the stored audit ----------------------------------

@pytest.fixture(scope="module")
def parsed_world(tmp_path_factory):
    """Four simulated days with the drift fault from day 3, parsed, with its users and movies,
    and a model trained on the first two days (for the predicted-score signal)."""
    path = tmp_path_factory.mktemp("frames")
    simulate(path, Config(users=1500, movies=150, days=4, seed=3, inject=("drift",)))
    parsed = parse_file(path / "events.log")
    model = recommender.train(recommender.split(parsed.ratings, "2024-01-03"), factors=8, epochs=5)
    return {"path": path, "events": parsed, "users": formats.read_users_csv(path / "users.csv")[0],
            "movies": formats.read_movies_csv(path / "movies.csv")[0], "model": model}


def window_of(events, since, until) -> dict:
    """The events of [since, until) as frames; items stay whole (they count with their request)."""
    def within(f):
        return f[(f["time"] >= pd.Timestamp(since)) & (f["time"] < pd.Timestamp(until))]

    return {"watches": within(events.watches), "ratings": within(events.ratings),
            "recommendations": within(events.recommendations), "items": events.items}


@pytest.mark.parametrize("reference, current, settings", [
    (("2024-01-01", "2024-01-03"), ("2024-01-03", "2024-01-04"), {}),  # whole hours: the rollups
    (("2024-01-01T05:30", "2024-01-02T20:15:30"), ("2024-01-03T02:10", "2024-01-04T17:45"),
     {"max_sample": 300, "seed": 4}),  # the events themselves, sampled
], ids=["whole-hours", "not-whole-hours-sampled"])
def test_drift_on_frames_gives_the_stored_audits_metrics_and_findings(store, parsed_world, tmp_path,
                                                                       reference, current, settings):
    from recaudit.scheduler.jobs import save_model

    ingest(store, [str(parsed_world["path"])])
    save_model(store, parsed_world["model"], tmp_path / "models")
    config = {"drift": {"report": False, "min_sample": 50, **settings}}  # small windows, every signal judged
    stored = audit(store, tmp_path, configuration.resolve(config), since=pd.Timestamp(current[0]),
                   until=pd.Timestamp(current[1]), reference=tuple(map(pd.Timestamp, reference)))
    events = parsed_world["events"]
    framed = drift.drift(window_of(events, *reference), window_of(events, *current), parsed_world["users"],
                         parsed_world["movies"], config, model=parsed_world["model"])
    assert stored.status == framed.status == "findings"
    assert set(framed.metrics) == set(stored.metrics)
    assert {f"drift.{name}.score" for name in drift.SIGNALS} <= set(stored.metrics)  # every signal judged
    assert stored.metrics["drift.dataset_drift"] == 1
    for key, value in stored.metrics.items():
        assert framed.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert [(f.key, f.severity, f.message) for f in framed.findings] == \
        [(f.key, f.severity, f.message) for f in stored.findings]
    assert [s["status"] for s in framed.details["signals"]] == [s["status"] for s in stored.details["signals"]]
    floors = [{k: s.get(k) for k in ("signal", "unit", "noise_floor", "reference_units", "current_units",
                                     "reference_n", "current_n", "reference_sample", "current_sample")}
              for s in stored.details["signals"]]
    assert floors == [{k: s.get(k) for k in floors[0]} for s in framed.details["signals"]]
    assert {s["unit"] for s in floors} == {"user", "request"}
    if settings:  # sampled: whole users, the same from the database's aggregates as from the frames
        for s in (s for s in floors if s["signal"] in ("recommended_popularity", "predicted_score")):
            slots = len(window_of(events, *current)["recommendations"].merge(events.items, on="line"))
            assert s["current_n"] == slots > s["current_sample"]  # what the sample was drawn from, every slot


def test_a_partial_configuration_is_merged_over_the_defaults_and_an_unknown_key_is_refused():
    merged = configuration.resolve({"drift": {"seed": 1, "signals": {"sex": {"threshold": 0.5}}},
                                  "groups": {"age": {"all": [0, 200]}}})
    defaults = configuration.load()
    assert merged["drift"]["seed"] == 1 and merged["drift"]["max_sample"] == defaults["drift"]["max_sample"]
    assert merged["drift"]["signals"]["sex"] == {**defaults["drift"]["signals"]["sex"], "threshold": 0.5}
    assert merged["groups"]["age"] == {"all": [0, 200]}  # an open table is replaced whole
    with pytest.raises(formats.InputError, match="drift.sead"):
        configuration.resolve({"drift": {"sead": 1}})


def test_drift_on_frames_writes_evidently_s_report_only_into_an_out_dir(parsed_world, tmp_path):
    events = parsed_world["events"]
    reference, current = window_of(events, "2024-01-01", "2024-01-03"), window_of(events, "2024-01-03", "2024-01-04")
    assert "artifacts" not in drift.drift(reference, current).details
    result = drift.drift(reference, current, out_dir=tmp_path)
    assert result.details["artifacts"] == {"html": "drift.html", "json": "drift.json"}
    assert json.loads((tmp_path / "drift.json").read_text())["metrics"]


def test_a_change_of_spread_with_the_same_mean_is_told_with_the_digits_that_differ():
    """Scores whose means agree to three digits while their spread doubles: the words give the
    digits that tell the means apart and the standard deviations, never "from 3.89 to 3.89"."""
    signal, config = drift.SIGNALS["predicted_score"], cfg()
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 0.3, 2000)
    cur = rng.normal(0, 0.6, 2000)
    ref, cur = 3.89 + ref - ref.mean(), 3.8912 + cur - cur.mean()
    column = lambda v: drift.Column(pd.Series(v), np.arange(len(v)), len(v))  # noqa: E731
    words = drift.describe_change(signal, column(ref), column(cur), config)
    assert words.startswith("the mean predicted rating of recommended movies went from 3.89 to 3.891 (")
    assert re.search(r"standard deviation 0\.3\d* to 0\.(59|6)\d*", words), words

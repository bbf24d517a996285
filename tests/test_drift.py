"""Drift: each signal flags a known shift and not an identical distribution; the builders read
the right aggregates; and over many seeds the drift fault is found while an unchanged service
stays quiet."""

import json

import numpy as np
import pandas as pd
import pytest

from recaudit.audits import config as configuration
from recaudit.audits import drift
from recaudit.audits import run as runs
from recaudit.audits.drift_sources import FrameSource, StoreSource
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


def categorical(shares: dict, n: int) -> pd.Series:
    return pd.Series({k: round(v * n) for k, v in shares.items()})


HAND_MADE = {  # signal: (reference, shifted current), as builders return them
    "rating": (categorical({"1": .05, "2": .1, "3": .25, "4": .35, "5": .25}, 5000),
               categorical({"1": .02, "2": .05, "3": .13, "4": .35, "5": .45}, 5000)),
    "ratings_per_user": (pd.Series(np.random.default_rng(1).poisson(2, 5000) + 1.0),
                         pd.Series(np.random.default_rng(2).poisson(3, 5000) + 1.0)),
    "minutes_per_session": (pd.Series(np.random.default_rng(3).gamma(2, 25, 5000)),
                            pd.Series(np.random.default_rng(4).gamma(2, 35, 5000))),
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
    "latency": (pd.DataFrame({"value": [100.0, 120, 140], "weight": [2000, 2000, 1000]}),
                pd.DataFrame({"value": [160.0, 190, 220], "weight": [2000, 2000, 1000]})),
    "status": (categorical({"200": .98, "0": .01, "500": .01}, 5000),
               categorical({"200": .8, "0": .15, "500": .05}, 5000)),
    "predicted_score": (pd.Series(np.random.default_rng(5).normal(3.6, .5, 5000)),
                        pd.Series(np.random.default_rng(6).normal(4.1, .5, 5000))),
}


def verdict(name, reference_raw, current_raw, config=None):
    config = config or cfg()
    signal = drift.SIGNALS[name]
    ref = drift.column(signal, reference_raw, config, 0)
    cur = drift.column(signal, current_raw, config, 1)
    return drift.compare(signal, ref, cur, config["drift"]["signals"][name])


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
    flagged = sum(verdict("minutes_per_session", pd.Series(rng.gamma(2, 25, 300)),
                          pd.Series(rng.gamma(2, 25, 300)))["drifted"] for _ in range(20))
    assert flagged <= 1


@pytest.mark.parametrize("name, method", [("occupation", "jensenshannon"), ("latency", "wasserstein")])
def test_the_vectorised_noise_floor_scores_exactly_as_evidently_does(name, method):
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Categorical if drift.SIGNALS[name].kind == "categorical" else ColumnType.Numerical
    rng = np.random.default_rng(7)
    pooled = (pd.Series(rng.choice(["a", "b", "c", "d"], 3000, p=[.4, .3, .2, .1]), dtype=object)
              if method == "jensenshannon" else pd.Series(rng.gamma(2, 30, 3000)))
    splits = rng.permuted(np.tile(np.r_[np.ones(1200, bool), np.zeros(1800, bool)], (5, 1)), axis=1)
    test = get_stattest(pooled, pooled, kind, method)
    fast = drift.split_scores(test, kind, pooled, splits, 0.1)
    one_by_one = [test(pooled[row].reset_index(drop=True), pooled[~row].reset_index(drop=True), kind, 0.1).drift_score
                  for row in splits]
    assert np.allclose(fast, one_by_one, rtol=1e-9, atol=1e-12)


def test_categorical_signals_keep_exact_frequencies_and_numbers_are_sampled_with_a_seed():
    config = cfg(max_sample=1000)
    counts = pd.Series({"a": 2000, "b": 1000, "c": 7})
    col = drift.column(drift.SIGNALS["genre"], counts, config, 0)
    assert col.population == 3007 and len(col.values) == 1000 and col.sampled
    assert col.values.value_counts().to_dict() == {"a": 665, "b": 333, "c": 2}
    numbers = pd.Series(np.arange(5000.0))
    a = drift.column(drift.SIGNALS["latency"], numbers, config, 3).values
    b = drift.column(drift.SIGNALS["latency"], numbers, config, 3).values
    assert len(a) == 1000 and a.equals(b)


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

        assert sorted(build("minutes_per_session").tolist()) == [1.0, 1.0, 3.0], name  # user 1 watched a on two days
        assert sorted(build("ratings_per_user").tolist()) == [1.0, 2.0], name  # user 2: two on day 1, one on day 2
        assert build("rating").to_dict() == {"3": 1, "4": 1, "5": 1}, name
        assert build("status").to_dict() == {"0": 1, "200": 1}, name
        assert build("genre").to_dict() == {"Comedy": 1, "Drama": 2, "Horror": 2}, name
        assert build("age_group").to_dict() == {"teen": 2, "senior": 2, "young_adult": 1}, name  # user-days
        assert build("latency").values.tolist() == [[120.0, 1.0]], name
        basis.tiers = drift.popularity_tiers(pd.Series({"a+2001": 5, "b+2002": 3, "x+1999": 2}))
        assert basis.tiers.to_dict() == {"a+2001": "head", "b+2002": "middle", "x+1999": "tail"}
        assert build("recommended_popularity").to_dict() == {"head": 1, "new": 1}, name


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
    a, f = (got[name].active.sort_values(["user_id", "day"], ignore_index=True) for name in ("store", "frames"))
    assert len(a) > 50
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
    assert 'href="drift.json"' in page
    metrics = run["audits"]["drift"]["metrics"]
    assert {"drift.share_drifted", "drift.dataset_drift", "drift.age_group.score",
            "drift.age_group.drifted"} <= set(metrics)


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

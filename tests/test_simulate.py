"""The simulator: deterministic by seed, clean when asked to be, and each injected fault
changes what it names (measured against the same seed without it)."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from recaudit.recsys import events as ev
from recaudit.recsys.simulate import FAULTS, Config, simulate
from support import run_cli

SIZE = dict(users=1500, movies=300, days=6, seed=11)


def digest(path) -> str:
    data = b"".join((path / f).read_bytes() for f in ("users.csv", "movies.csv", "events.log"))
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The same service clean and with each fault, as parsed frames."""
    out = {}
    for fault in ("clean", "drift", "fairness", "feedback", "corrupt"):
        path = tmp_path_factory.mktemp(fault)
        summary = simulate(path, Config(**SIZE, inject=() if fault == "clean" else (fault,)))
        out[fault] = {
            "path": path, "summary": summary, "log": ev.parse_file(path / "events.log"),
            "users": pd.read_csv(path / "users.csv"), "movies": pd.read_csv(path / "movies.csv", keep_default_na=False),
            "start": pd.Timestamp(summary.injection_start or "2024-01-04"),
        }
    return out


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    small = dict(users=200, movies=60, days=2)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        simulate(tmp_path / name, Config(**small, seed=seed, inject=("corrupt", "feedback")))
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_a_clean_log_is_time_ordered_parses_whole_and_lists_twenty_distinct_known_movies(worlds):
    w = worlds["clean"]
    log = w["log"]
    assert log.lines == w["summary"].lines and log.rejects.empty
    times = pd.concat([log.watches[["line", "time"]], log.ratings[["line", "time"]],
                       log.recommendations[["line", "time"]]]).sort_values("line").time
    assert times.is_monotonic_increasing
    ok = log.recommendations[log.recommendations.status == 200]
    assert (ok.n_items == 20).all()
    assert (log.items.groupby("line").movie_id.nunique() == 20).all()
    known = set(w["movies"].movie_id)
    for frame in (log.watches, log.ratings, log.items):
        assert set(frame.movie_id) <= known
    assert set(log.watches.user_id) <= set(w["users"].user_id)
    assert w["movies"].movie_id.is_unique and w["users"].user_id.is_unique


def test_a_clean_log_has_every_line_kind_failed_requests_and_two_servers(worlds):
    log = worlds["clean"]["log"]
    assert min(log.counts[k] for k in ("watch", "rate", "recommend")) > 0
    assert (log.recommendations.status != 200).any()
    assert log.recommendations.server.nunique() == 2


def exposure_top10(w) -> pd.Series:
    log = w["log"]
    items = log.items.merge(log.recommendations[["line", "time"]], on="line")
    by_day = items.groupby(items.time.dt.floor("D")).movie_id
    return by_day.apply(lambda m: m.value_counts().head(10).sum() / len(m))


def test_feedback_concentrates_exposure_day_after_day(worlds):
    clean, loop = exposure_top10(worlds["clean"]), exposure_top10(worlds["feedback"])
    start = worlds["feedback"]["start"]
    before, after = loop[loop.index < start], loop[loop.index >= start]
    assert after.is_monotonic_increasing
    assert after.iloc[-1] > before.mean() + 0.1  # ten points of the top-10 share in three days
    assert clean.max() - clean.min() < 0.03  # without the loop, concentration stays put


def test_feedback_makes_ratings_follow_recommendations(worlds):
    def corr(w):
        log, start = w["log"], w["start"]
        items = log.items.merge(log.recommendations[["line", "time"]], on="line")
        recs = items[items.time >= start].movie_id.value_counts()
        rated = log.ratings[log.ratings.time >= start].movie_id.value_counts()
        both = pd.concat([recs, rated], axis=1).fillna(0)
        return both.corr().iloc[0, 1]

    assert corr(worlds["feedback"]) > corr(worlds["clean"]) + 0.1


def active_share_young(w, after: bool) -> float:
    watches = w["log"].watches
    part = watches[(watches.time >= w["start"]) == after]
    users = w["users"].set_index("user_id").loc[part.user_id.unique()]
    return ((users.age >= 13) & (users.age <= 24)).mean()


def test_drift_brings_young_users_a_new_genre_mix_and_higher_ratings(worlds):
    drift, clean = worlds["drift"], worlds["clean"]
    assert active_share_young(drift, True) > active_share_young(drift, False) + 0.08
    assert abs(active_share_young(clean, True) - active_share_young(clean, False)) < 0.04

    def genre_share(w, after):
        watches = w["log"].watches
        part = watches[(watches.time >= w["start"]) == after]
        genres = w["movies"].set_index("movie_id").genres
        return genres.loc[part.movie_id.astype(str)].str.contains("Horror|Animation|Sci-Fi").mean()

    assert genre_share(drift, True) > genre_share(drift, False) + 0.05

    def mean_rating(w, after):
        r = w["log"].ratings
        return r[(r.time >= w["start"]) == after].rating.mean()

    assert mean_rating(drift, True) > mean_rating(drift, False) + 0.3
    assert abs(mean_rating(clean, True) - mean_rating(clean, False)) < 0.15


def test_fairness_makes_ratings_of_women_and_seniors_noisier_and_nobody_elses(worlds):
    def spread(w):
        r = w["log"].ratings.merge(w["users"], on="user_id")
        r = r[r.time >= w["start"]]
        injected = (r.gender == "F") | (r.age >= 55)
        return r[injected].rating.std(), r[~injected].rating.std()

    fair_in, fair_out = spread(worlds["fairness"])
    clean_in, clean_out = spread(worlds["clean"])
    assert fair_in > clean_in + 0.2
    assert abs(fair_out - clean_out) < 0.1


def test_corrupt_brings_every_malformed_shape_wrong_lists_and_unknown_movies(worlds):
    w = worlds["corrupt"]
    log, start = w["log"], w["start"]
    rejected = log.rejects.merge(pd.DataFrame({"line": np.arange(1, log.lines + 100)}), on="line")
    assert {"too few fields", "missing rating", "bad timestamp", "not UTF-8", "bad user id",
            "rating not an integer 1-5"} <= set(rejected.reason)
    assert len(log.rejects) / log.lines > 0.01
    ok = log.recommendations[log.recommendations.status == 200]
    assert {2, 19} <= set(ok.n_items)
    dup_lists = log.items.groupby("line").movie_id.apply(lambda m: m.duplicated().any())
    assert dup_lists.any()
    known = set(w["movies"].movie_id)
    assert any(not set(f.movie_id.astype(str)) <= known for f in (log.watches, log.ratings, log.items))
    first_bad = log.rejects.line.min()
    first_bad_time = log.watches[log.watches.line < first_bad].time.max()
    assert first_bad_time < start + pd.Timedelta(hours=1)  # nothing is corrupt before the fault starts
    assert log.lines == sum(log.counts.values())


def test_cli_simulate_writes_the_files_and_rejects_an_unknown_fault(recaudit_bin, tmp_path):
    done = run_cli(recaudit_bin, "simulate", "--out", str(tmp_path / "s"), "--users", "100", "--movies", "40",
                   "--days", "2", "--inject", "drift", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["injection_start"] == "2024-01-02T00:00:00"
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"users.csv", "movies.csv", "events.log", "simulation.json"}
    bad = run_cli(recaudit_bin, "simulate", "--out", str(tmp_path / "t"), "--inject", "drift,meteor")
    assert bad.returncode == 2 and "unknown fault 'meteor'" in bad.stderr.decode()


# -- strengths --------------------------------------------------------------------------------

TINY = dict(users=300, movies=80, days=4, seed=3)
# What each fault wrote before faults took a strength (commit 72f3f52): the default strength is
# that fault, so every seeded test and figure made with it stands.
BEFORE_STRENGTHS = {
    "corrupt": "13cdfd58ec489c6a393369ae180fd8f0b6e43aaa3fb2e7633686316a200c301b",
    "drift": "34f5a4d821b38f5965cbc20731b596a289e66d1af1ed475f6c665d4f81656ede",
    "fairness": "1afe2e019e67d0bd5ab0c24c8ff3ee97a96ad08a58970c7060337f67cec2ace1",
    "feedback": "aaa2cc251709b5b58359d237a265b084693d83b0b6d1c09bb314015a30f95b47",
    "starve": "84df002771b4f94fa43cd134879b90db31b85e87a9a0ac38fcfb4af35d2f502a",
}


def test_a_fault_without_a_strength_is_its_default_strength_and_writes_what_it_always_wrote(recaudit_bin, tmp_path):
    for fault, before in BEFORE_STRENGTHS.items():
        default = FAULTS[fault].default
        runs = {"name": ["--inject", fault], "default": ["--inject", f"{fault}:{default}"]}
        for name, inject in runs.items():
            done = run_cli(recaudit_bin, "simulate", "--out", str(tmp_path / fault / name),
                           *[f"--{k}={v}" for k, v in TINY.items()], *inject, "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["config"]["inject"] == {fault: default}
        assert digest(tmp_path / fault / "name") == digest(tmp_path / fault / "default") == before, fault


def test_each_fault_at_its_neutral_strength_writes_the_log_of_the_service_without_it(tmp_path):
    simulate(tmp_path / "clean", Config(**TINY))
    assert FAULTS["fairness"].neutral == 0.5 and all(FAULTS[f].neutral == 0 for f in FAULTS if f != "fairness")
    for fault, spec in FAULTS.items():
        simulate(tmp_path / fault, Config(**TINY, inject={fault: spec.neutral}))
        assert digest(tmp_path / fault) == digest(tmp_path / "clean"), fault
    simulate(tmp_path / "weak", Config(**TINY, inject={"corrupt": 0.001}))
    assert digest(tmp_path / "weak") != digest(tmp_path / "clean")  # the comparison can fail


def test_cli_simulate_reads_strengths_and_refuses_a_bad_one_in_one_line(recaudit_bin, tmp_path):
    done = run_cli(recaudit_bin, "simulate", "--out", str(tmp_path / "s"), "--users", "100", "--movies", "40",
                   "--days", "2", "--inject", "fairness:1.1, drift", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"]["inject"] == {"fairness": 1.1, "drift": 1.0}
    assert json.loads((tmp_path / "s" / "simulation.json").read_text())["config"]["inject"] == {"fairness": 1.1,
                                                                                               "drift": 1.0}
    refused = {
        "corrupt:1.5": "--inject: the strength of corrupt is the share of log lines corrupted: at least 0 and at "
                       "most 1 (got 1.5)",
        "starve:-0.1": "--inject: the strength of starve is the share of Romance movies starved: at least 0 and at "
                       "most 1 (got -0.1)",
        "fairness:-1": "--inject: the strength of fairness is the rating noise of women and seniors (sd, in stars): "
                       "at least 0 (got -1)",
        "fairness:loud": "--inject: the strength of fairness must be a number (got 'loud')",
        "drift:inf": "--inject: the strength of drift must be a finite number (got inf)",
        "feedback:nan": "--inject: the strength of feedback must be a finite number (got nan)",
        "drift,drift:2": "--inject: drift is named twice",
        "meteor:1": "--inject: unknown fault 'meteor' (choose from corrupt, drift, fairness, feedback, starve)",
    }
    for inject, message in refused.items():
        bad = run_cli(recaudit_bin, "simulate", "--out", str(tmp_path / "t"), "--inject", inject)
        assert bad.returncode == 2 and bad.stderr.decode() == f"error: {message}\n", inject
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="the strength of corrupt is the share of log lines corrupted"):
        Config(inject={"corrupt": 2})
    assert Config(inject=[("drift", 0.5), "starve"]).inject == {"drift": 0.5, "starve": 1.0}


def test_a_stronger_fairness_fault_makes_the_ratings_of_women_and_seniors_noisier_and_leaves_others_alone(tmp_path):
    spread, others = [], []
    for sd in (0.5, 0.9, 1.4, 2.0, 3.0):
        path = tmp_path / str(sd)
        summary = simulate(path, Config(users=800, movies=150, days=4, seed=2, inject={"fairness": sd}))
        r = ev.parse_file(path / "events.log").ratings.merge(pd.read_csv(path / "users.csv"), on="user_id")
        r = r[r.time >= pd.Timestamp(summary.injection_start)]
        injected = (r.gender == "F") | (r.age >= 55)
        spread.append(r[injected].rating.std())
        others.append(r[~injected].reset_index(drop=True))
    print("rating sd of women and seniors by strength:", [round(float(s), 3) for s in spread])
    assert all(a < b for a, b in zip(spread, spread[1:]))
    assert spread[-1] > spread[0] + 0.4
    for frame in others[1:]:  # the same draws: everyone else's ratings are the very same
        pd.testing.assert_frame_equal(frame, others[0])


def test_a_stronger_starve_fault_takes_more_of_the_genre_out_of_the_lists(tmp_path):
    shares = []
    for strength in (0.0, 0.5, 1.0):
        path = tmp_path / str(strength)
        summary = simulate(path, Config(users=600, movies=150, days=4, seed=1, inject={"starve": strength}))
        log = ev.parse_file(path / "events.log")
        movies = pd.read_csv(path / "movies.csv", keep_default_na=False).set_index("movie_id")
        items = log.items.merge(log.recommendations[["line", "time"]], on="line")
        after = items[items.time >= pd.Timestamp(summary.injection_start)]
        shares.append(movies.genres.loc[after.movie_id.astype(str)].str.contains("Romance").mean())
    print("Romance share of the listed movies by strength:", [round(float(s), 3) for s in shares])
    assert shares[0] > 0.05 and shares[2] < 0.005
    assert 0.25 * shares[0] < shares[1] < 0.75 * shares[0]  # half the genre's movies, about half its slots

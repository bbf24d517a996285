"""The simulator: deterministic by seed, clean when asked to be, and each injected fault
changes what it names (measured against the same seed without it)."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from recaudit.recsys import events as ev
from recaudit.recsys.simulate import Config, simulate
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

"""Exposure fairness from the logs alone: the arithmetic of a hand-made store against numbers
worked out by hand and an independent bootstrap; the same numbers from the store (SQLite and
PostgreSQL) and from frames; the starved genre of the simulator found on every seed and no
under-exposed group on the clean service of the same seeds; a group of users served worse found
with intervals that hold the truth; too little data said; the settings checked; the audit run by
the feedback job; and the section on the run page, with markup from the data shown as text."""

import json

import numpy as np
import pandas as pd
import pytest

import recaudit
from recaudit.audits import config as configuration
from recaudit.audits import run as runs
from recaudit.audits.ingest import ingest
from recaudit.recsys import events, formats
from recaudit.recsys.formats import InputError
from recaudit.recsys.simulate import STARVED_GENRE, Config, simulate
from support import open_page, run_cli, seeded_services

SEEDS = range(10)
EVERY_GROUP = {"min_group_requests": 1, "min_group_users": 1, "min_group_viewings": 1, "min_group_viewers": 1}
USERS = "user_id,age,gender,occupation\n1,25,F,writer\n2,25,F,writer\n3,25,F,writer\n4,40,M,lawyer\n" \
        "5,40,M,lawyer\n6,40,M,lawyer\n"
MOVIES = "movie_id,title,year,genres\na+2001,A,2001,Comedy|Drama\nb+1995,B,1995,Drama\nc+1985,C,1985,Horror\n" \
         "d+2010,D,2010,Comedy\n"


def rec(time, user, movies, status=200, server="a"):
    result = ", ".join(movies) if status == 200 else "java.util.concurrent.TimeoutException: timeout after 800 ms"
    return f"{time}.000000,{user},recommendation request {server}, status {status}, result: {result}, 90 ms"


def watch(time, user, movie, minute=0):
    return f"{time},{user},GET /data/m/{movie}/{minute}.mpg"


# Day 1 only draws the popularity tiers: a watched twice (head), b once (middle); c and d are new.
# Day 2 is the window audited; the comments give each request's outcome.
LOG = [
    watch("2024-01-01T10:00:00", 1, "a+2001"), watch("2024-01-01T11:00:00", 2, "a+2001"),
    watch("2024-01-01T12:00:00", 3, "b+1995"),
    rec("2024-01-02T10:00:00", 1, ["a+2001", "b+1995", "c+1985"]),
    watch("2024-01-02T10:05:00", 1, "b+1995"),  # success at rank 2
    rec("2024-01-02T12:00:00", 1, ["c+1985", "d+2010"]),  # nothing watched: a failure
    rec("2024-01-02T10:00:00", 2, ["b+1995", "a+2001"]),
    watch("2024-01-02T10:20:00", 2, "b+1995"),  # 20 minutes later: a failure, but a viewing
    rec("2024-01-02T11:00:00", 3, ["d+2010", "c+1985", "b+1995"]),
    watch("2024-01-02T11:01:00", 3, "d+2010"),  # success at rank 1
    rec("2024-01-02T09:00:00", 4, ["a+2001", "b+1995"]),
    watch("2024-01-02T09:10:00", 4, "a+2001"),  # success at rank 1
    watch("2024-01-02T15:00:00", 4, "c+1985"), watch("2024-01-02T15:01:00", 4, "c+1985", 1),  # one viewing
    rec("2024-01-02T10:00:00", 5, [], status=0),  # failed: no list, not judged
    watch("2024-01-02T13:00:00", 5, "d+2010"),
    rec("2024-01-02T10:00:00", 6, ["b+1995", "c+1985", "d+2010"], server="b"),  # servers do not matter here
    watch("2024-01-02T10:03:00", 6, "c+1985"),  # success at rank 2
    watch("2024-01-02T23:59:00", 99, "e+2000"),  # neither user 99 nor e is known: unknown groups
]


@pytest.fixture
def hand_made(tmp_path):
    (tmp_path / "users.csv").write_text(USERS)
    (tmp_path / "movies.csv").write_text(MOVIES)
    (tmp_path / "events.log").write_text("\n".join(sorted(LOG)) + "\n")
    return tmp_path


def read(directory):
    """The log, users and movies of a directory, as a notebook reads them."""
    return (events.read_log(directory / "events.log"), formats.read_users_csv(directory / "users.csv")[0],
            formats.read_movies_csv(directory / "movies.csv")[0])


def config(**exposure):
    return configuration.resolve({"exposure": {**EVERY_GROUP, "resamples": 400, **exposure}})


def by_group(rows, key, name, group):
    return next(r for r in rows if r[key] == name and r["group"] == group)


def test_the_hand_made_store_gives_the_numbers_worked_out_by_hand_and_the_frames_give_the_same(store, hand_made):
    ingest(store, [str(hand_made / name) for name in ("users.csv", "movies.csv", "events.log")])
    result = runs.run(store, "2024-01-02", "2024-01-03", config(), ["exposure"], hand_made / "out").results["exposure"]
    m = result.metrics
    # Six lists judged (user 5's failed): four successes, reciprocal ranks 1/2, 0, 0, 1, 1, 1/2.
    assert (m["exposure.requests"], m["exposure.success_rate"], m["exposure.mrr"]) == (6, pytest.approx(4 / 6), 0.5)
    assert m["exposure.success_rate.sex.F"] == pytest.approx(2 / 4) and m["exposure.mrr.sex.F"] == 1.5 / 4
    assert m["exposure.success_rate.sex.M"] == 1.0 and m["exposure.mrr.sex.M"] == 0.75
    assert m["exposure.success_rate_gap.sex"] == 0.5 and m["exposure.mrr_gap.sex"] == 0.375
    assert m["exposure.requests.age.young_adult"] == 4 and m["exposure.requests.age.middle_aged"] == 2
    # 15 slots (a 3, b 5, c 4, d 3) and 8 viewings (a 1, b 2, c 2, d 2, e 1), user 4's two minutes of c one.
    assert (m["exposure.slots"], m["exposure.viewings"]) == (15, 8)
    expected = {("genre", "Comedy"): (6 / 15, 3 / 8), ("genre", "Drama"): (8 / 15, 3 / 8),
                ("genre", "Horror"): (4 / 15, 2 / 8), ("genre", "unknown"): (0, 1 / 8),
                ("decade", "2000s"): (3 / 15, 1 / 8), ("decade", "1990s"): (5 / 15, 2 / 8),
                ("decade", "1980s"): (4 / 15, 2 / 8), ("decade", "2010s"): (3 / 15, 2 / 8),
                ("decade", "unknown"): (0, 1 / 8), ("popularity", "head"): (3 / 15, 1 / 8),
                ("popularity", "middle"): (5 / 15, 2 / 8), ("popularity", "new"): (7 / 15, 5 / 8)}
    for (grouping, group), (shown, watched) in expected.items():
        assert m[f"exposure.exposure_share.{grouping}.{group}"] == pytest.approx(shown), (grouping, group)
        assert m[f"exposure.watch_share.{grouping}.{group}"] == pytest.approx(watched), (grouping, group)
        assert m[f"exposure.ratio.{grouping}.{group}"] == pytest.approx(shown / watched), (grouping, group)
    assert result.details["tiers_from"] == "previous window"
    log, users, movies = read(hand_made)
    framed = recaudit.exposure(log, users=users, movies=movies, since="2024-01-02", until="2024-01-03", config=config())
    assert framed.metrics == pytest.approx(m, nan_ok=True)


def test_intervals_are_those_of_an_independent_bootstrap_over_users(hand_made):
    log, users, movies = read(hand_made)
    cfg = config(seed=5)
    result = recaudit.exposure(log, users=users, movies=movies, since="2024-01-02", until="2024-01-03", config=cfg)
    # The users behind the window, in id order, each with (sex, requests, successes, slots of Drama,
    # viewings of Drama, slots, viewings); every resample draws as many as there are.
    table = pd.DataFrame([(1, "F", 2, 1, 2, 1, 5, 1), (2, "F", 1, 0, 2, 1, 2, 1), (3, "F", 1, 1, 1, 0, 3, 1),
                          (4, "M", 1, 1, 2, 1, 2, 2), (5, "M", 0, 0, 0, 0, 0, 1), (6, "M", 1, 1, 1, 0, 3, 1),
                          (99, "unknown", 0, 0, 0, 0, 0, 1)],
                         columns=["user", "sex", "requests", "successes", "drama_slots", "drama_viewings", "slots",
                                  "viewings"])
    rng = np.random.default_rng(5)
    women, ratio = [], []
    for _ in range(cfg["exposure"]["resamples"]):
        drawn = table.iloc[rng.integers(0, len(table), len(table))]
        f = drawn[drawn["sex"] == "F"]
        women.append(f["successes"].sum() / f["requests"].sum() if f["requests"].sum() else np.nan)
        shown, watched = drawn[["drama_slots", "slots"]].sum(), drawn[["drama_viewings", "viewings"]].sum()
        shares = (shown.iloc[0] / shown.iloc[1] if shown.iloc[1] else np.nan, watched.iloc[0] / watched.iloc[1])
        ratio.append(shares[0] / shares[1] if shares[1] else np.nan)
    row = by_group(result.details["users"], "dimension", "sex", "F")
    assert (row["success_rate_low"], row["success_rate_high"]) == \
        pytest.approx(tuple(np.nanpercentile(women, [2.5, 97.5])))
    drama = by_group(result.details["movies"], "grouping", "genre", "Drama")
    assert (drama["ratio_low"], drama["ratio_high"]) == pytest.approx(tuple(np.nanpercentile(ratio, [2.5, 97.5])))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Per seed, the clean service and the one whose recommender starves a genre from day 3 on,
    audited over days 3 and 4 from their frames."""
    results = {}
    for faulty, seed, _cfg, out in seeded_services(tmp_path_factory, "starve", SEEDS, users=3000, movies=200, days=4):
        log, users, movies = read(out)
        results[faulty, seed] = recaudit.exposure(log, users=users, movies=movies, since="2024-01-03",
                                                  until="2024-01-05")
    return results


def test_the_starved_genre_is_found_on_every_seed_and_no_other_group_is(seeded):
    for seed in SEEDS:
        found = [f for f in seeded[True, seed].findings if f.kind == "underexposed"]
        assert [f.key for f in found] == [f"exposure.ratio.genre.{STARVED_GENRE}"], seed
        assert found[0].value < 0.05 and found[0].severity == "warning"
        assert f"movies of genre {STARVED_GENRE} fill" in found[0].message


def test_a_clean_service_has_no_under_exposed_group_and_few_gap_alarms_over_ten_seeds(seeded):
    for seed in SEEDS:
        result = seeded[False, seed]
        assert not [f.key for f in result.findings if f.kind == "underexposed"], seed
        assert result.metrics[f"exposure.ratio.genre.{STARVED_GENRE}"] > 0.5
    # Each run holds its gaps to a 5% family-wise error: more than 2 alarms in 10 runs has a
    # chance of 1% (binomial), so would mean the intervals are too narrow.
    alarms = [seed for seed in SEEDS if any(f.kind == "exposure_gap" for f in seeded[False, seed].findings)]
    assert len(alarms) <= 2, alarms


def test_the_starved_genre_is_found_in_the_store_as_in_the_frames(db_url, tmp_path, recaudit_bin):
    data = tmp_path / "data"
    simulate(data, Config(users=3000, movies=200, days=4, seed=1, inject=("starve",)))
    files = [str(data / name) for name in ("users.csv", "movies.csv", "events.log")]
    assert run_cli(recaudit_bin, "ingest", "--db", db_url, *files).returncode == 0
    audited = {}
    for since in ("2024-01-01", "2024-01-03"):  # before the injection day, and from it on
        done = run_cli(recaudit_bin, "audit", "--db", db_url, "--only", "exposure", "--since", since, "--until",
                       str(pd.Timestamp(since) + pd.Timedelta("2d"))[:10], "--out", str(tmp_path / "out"), "--json")
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
        audited[since] = json.loads(done.stdout)["audits"]["exposure"]
    assert not [f for f in audited["2024-01-01"]["findings"] if f["kind"] == "underexposed"]
    assert [f["key"] for f in audited["2024-01-03"]["findings"] if f["kind"] == "underexposed"] == \
        [f"exposure.ratio.genre.{STARVED_GENRE}"]
    log, users, movies = read(data)
    framed = recaudit.exposure(log, users=users, movies=movies, since="2024-01-03", until="2024-01-05")
    assert framed.to_dict()["metrics"] == pytest.approx(audited["2024-01-03"]["metrics"], nan_ok=True)


def served(women_success: float, users: int = 60, lists: int = 6, seed: int = 0) -> bytes:
    """A log in which each user gets `lists` lists of 20 movies a day apart; men watch the first
    movie of 80% of theirs, women that of `women_success` of theirs."""
    rng = np.random.default_rng(seed)
    movies = [f"m{i}+2001" for i in range(20)]
    lines = []
    for user in range(1, 2 * users + 1):
        share = women_success if user <= users else 0.8
        for day in range(lists):
            t = pd.Timestamp("2024-01-01T10:00") + pd.Timedelta(days=day, minutes=user)
            lines.append(rec(t.isoformat(), user, movies))
            if rng.random() < share:
                lines.append(watch((t + pd.Timedelta("2min")).isoformat(), user, movies[0]))
    lines.append(watch("2024-01-08T00:00:00", 1, movies[0]))  # the log goes on: every list had its horizon
    return ("\n".join(sorted(lines)) + "\n").encode()


def people(users: int = 60) -> pd.DataFrame:
    ids = np.arange(1, 2 * users + 1)
    return pd.DataFrame({"user_id": ids, "age": 30, "age_group": None, "gender": np.where(ids <= users, "F", "M"),
                         "occupation": "writer"})


def test_a_group_of_users_served_worse_is_a_gap_beyond_chance():
    log = events.parse_bytes(served(0.3))
    result = recaudit.exposure(log, users=people(), since="2024-01-01", until="2024-01-07")
    gaps = {f.key: f for f in result.findings if f.kind == "exposure_gap"}
    assert set(gaps) == {"exposure.success_rate_gap.sex", "exposure.mrr_gap.sex"}
    message = gaps["exposure.success_rate_gap.sex"].message
    assert message.startswith("online success rate is ") and "for women against" in message
    assert "permutation test p = " in message and "below 0.025 for the 2 gaps tested" in message  # two metrics
    women = by_group(result.details["users"], "dimension", "sex", "F")
    assert women["mrr"] == women["success_rate"]  # the first movie, rank 1, whenever one is watched
    assert result.metrics["exposure.success_rate_gap_low.sex"] > 0


def test_the_intervals_of_a_group_and_of_the_gap_hold_the_truth_at_about_their_confidence():
    held = {"women": 0, "gap": 0}
    seeds = range(20)
    for seed in seeds:
        result = recaudit.exposure(events.parse_bytes(served(0.3, seed=seed)), users=people(), since="2024-01-01",
                                   until="2024-01-07", config={"exposure": {"resamples": 300}})
        women = by_group(result.details["users"], "dimension", "sex", "F")
        held["women"] += women["success_rate_low"] < 0.3 < women["success_rate_high"]
        m = result.metrics
        held["gap"] += m["exposure.success_rate_gap_low.sex"] < 0.5 < m["exposure.success_rate_gap_high.sex"]
    # Intervals of 95%: fewer than 16 in 20 holding the truth has a
    # chance below 2% (binomial), so would mean they are too narrow.
    assert held["women"] >= 16 and held["gap"] >= 16, held


def test_equal_service_of_both_groups_is_no_finding():
    result = recaudit.exposure(events.parse_bytes(served(0.8)), users=people(), since="2024-01-01",
                               until="2024-01-07")
    assert not [f for f in result.findings if f.kind == "exposure_gap"]
    m = result.metrics
    assert m["exposure.success_rate_gap_low.sex"] < 0 < m["exposure.success_rate_gap_high.sex"]


def test_groups_too_small_for_a_verdict_say_so_and_get_no_number():
    log = events.parse_bytes(served(0.0, users=10))  # 60 lists by 10 women: fewer than 100 or 20
    result = recaudit.exposure(log, users=people(10), since="2024-01-01", until="2024-01-07",
                               config={"exposure": {"min_group_viewers": 20}})
    assert not [f for f in result.findings if f.kind == "exposure_gap"]
    small = [f for f in result.findings if f.kind == "insufficient_group"]
    assert any(f.key == "exposure.insufficient.sex" and "women (60 requests by 10 users)" in f.message for f in small)
    assert result.metrics["exposure.success_rate.sex.F"] is None
    assert result.metrics["exposure.success_rate_gap.sex"] is None
    assert any(f.key == "exposure.insufficient.genre" for f in small)  # by 20 users at most
    nothing = recaudit.exposure(events.parse_bytes(b""))
    assert nothing.status == "insufficient_data" and nothing.details["reason"] == "no events in the frames"


def test_a_movie_attribute_named_but_not_stored_is_a_warning_and_bad_names_are_refused(hand_made):
    log = events.read_log(hand_made / "events.log")
    result = recaudit.exposure(log, since="2024-01-02", until="2024-01-03",
                               config=config(movie_groups=["genre", "language"]))
    assert [f.key for f in result.findings if f.kind == "unknown_grouping"] == ["exposure.movie_groups.language"]
    assert {r["grouping"] for r in result.details["movies"]} == {"genre"}
    for groups, reason in ((["genre", "genre"], "names 'genre' twice"), (["Title"], "lower-case letters"),
                           (["title"], "'title' is a typed column of movies")):
        with pytest.raises(InputError, match=f"exposure.movie_groups: .*{reason}"):
            configuration.resolve({"exposure": {"movie_groups": groups}})
    with pytest.raises(InputError, match="exposure.min_ratio: must be positive"):
        configuration.resolve({"exposure": {"min_ratio": 0}})


def test_the_feedback_job_runs_the_exposure_audit_beside_feedback_and_online(store, hand_made):
    from recaudit.scheduler import service

    ingest(store, [str(hand_made / name) for name in ("users.csv", "movies.csv", "events.log")])
    cfg = configuration.resolve({"audit": {"out": str(hand_made / "site")}})
    done = service.WORK["feedback"](store, cfg)
    document = next(r["document"] for r in store.runs() if r["id"] == done["run_id"])
    assert list(document["audits"]) == ["feedback", "online", "exposure"]
    assert document["audits"]["exposure"]["status"] in ("ok", "findings")


def test_the_run_page_shows_the_section_with_markup_from_the_data_as_text(tmp_path, recaudit_bin, chromium):
    hostile, attribute = "</script><script>alert(1)</script>", '<img src=x onerror="alert(2)">'
    data = tmp_path / "data"
    simulate(data, Config(users=3000, movies=200, days=4, seed=2, inject=("starve",)))
    movies = pd.read_csv(data / "movies.csv", dtype=str, keep_default_na=False)
    movies["genres"] = movies["genres"].str.replace("Drama", hostile, regex=False)
    movies["language"] = np.where(np.arange(len(movies)) % 2, attribute, "en")  # a movie attribute, as a grouping
    movies.to_csv(data / "movies.csv", index=False)
    (tmp_path / "recaudit.toml").write_text('[exposure]\nmovie_groups = ["genre", "popularity", "language"]\n')
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert run_cli(recaudit_bin, "ingest", "--db", db, *(str(data / n) for n in ("users.csv", "movies.csv",
                                                                                  "events.log"))).returncode == 0
    done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(tmp_path / "recaudit.toml"), "--only",
                   "exposure", "--since", "2024-01-03", "--until", "2024-01-05", "--out", str(tmp_path / "site"))
    assert done.returncode == 0, done.stderr
    page = next((tmp_path / "site" / "runs").iterdir()) / "index.html"
    html = page.read_text()
    start = html.index('<section id="exposure">')
    section = html[start:html.index("</section>", start)]
    for table in ("Users by sex", "Movies by genre", "Movies by popularity", "Movies by language"):
        assert table in section, table
    assert f"movies of genre {STARVED_GENRE} fill" in section  # the finding, in words, first
    assert section.index("movies of genre") < section.index("Users by sex")
    assert hostile not in html and attribute not in html and "&lt;/script&gt;&lt;script&gt;" in section
    assert 'class="chart"' in section  # the ratios with their intervals
    seen = open_page(chromium, page, "exposure-section")
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert hostile in seen["text"] and attribute in seen["text"]  # shown as text

"""Any user or movie attribute: extra columns of users.csv and movies.csv (and MovieLens' zip code)
are stored as text and read back beside the typed columns; each can be a fairness dimension, as
categories or in bins; drift watches an attribute's share of daily active users."""

import json

import numpy as np
import pandas as pd
import pytest

import recaudit
from recaudit.audits import config as configuration
from recaudit.audits import drift, groups
from recaudit.audits import run as runs
from recaudit.audits.drift_sources import FrameSource
from recaudit.audits.ingest import ingest
from recaudit.audits.store import Store
from recaudit.recsys import formats
from recaudit.recsys.events import parse_file
from recaudit.recsys.simulate import Config, simulate
from support import open_page, run_cli

PAYLOAD = "</script><script>alert(1)</script>"


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def attribute_rows(store) -> int:
    return store.count("user_attributes") + store.count("movie_attributes")


# -- ingest ------------------------------------------------------------------------------------

def test_extra_columns_of_users_and_movies_are_stored_as_text_and_read_beside_the_typed_ones(store, tmp_path):
    users = write(tmp_path / "users.csv", "user_id,age,gender,occupation, Region ,PLAN\n"
                                          f"1,30,F,writer,south,{PAYLOAD}\n"
                                          "2,40,M,lawyer,,basic\n"
                                          "3,50,M,artist,north\n"  # a field short
                                          "4,20,F,x,north,pro,extra\n"  # one too many
                                          "5,61,M,retired, st. louis ,007\n"
                                          '6,33,F,doctor,"north, upper\nvalley","say ""hi"""\n')
    # Named like columns of other tables (read as integers and times there): text here.
    movies = write(tmp_path / "movies.csv", "movie_id,title,year,genres,language,status,time\n"
                                            "a+2001,A,2001,Drama,en,released,soon\nb+2002,B,2002,Comedy,,,\n")
    summary = ingest(store, [str(users), str(movies)]).to_dict()
    assert summary["lines"] == 8 == summary["stored"]["users"] + summary["stored"]["movies"] + summary["quarantined"]
    assert store.read("quarantine")[["line", "reason"]].values.tolist() == [
        [4, "expected 6 fields, got 5"], [5, "expected 6 fields, got 7"]]
    read = store.read("users")
    assert list(read.columns) == ["user_id", "age", "age_group", "gender", "occupation", "plan", "region"]
    assert read[["user_id", "region", "plan"]].values.tolist() == [
        [1, "south", PAYLOAD], [2, None, "basic"], [5, "st. louis", "007"],  # stripped text, as given
        [6, "north, upper\nvalley", 'say "hi"']]
    read_movies = store.read("movies")
    assert list(read_movies.columns) == ["movie_id", "title", "year", "genres", "language", "status", "time"]
    assert read_movies[["language", "status", "time"]].values.tolist() == [["en", "released", "soon"],
                                                                           [None, None, None]]
    assert store.attribute_names("users") == ["plan", "region"]
    stored = attribute_rows(store)
    again = ingest(store, [str(users), str(movies)]).to_dict()
    assert again["skipped_sources"] == 2 and attribute_rows(store) == stored == 4 * 2 + 2 * 3
    assert store.read("users").equals(read)


def test_a_later_users_file_replaces_the_attributes_it_has_and_keeps_the_others(store, tmp_path):
    ingest(store, [str(write(tmp_path / "a.csv", "user_id,age,gender,occupation,region,plan\n"
                                                 "1,30,F,writer,south,pro\n2,40,M,lawyer,north,basic\n"))])
    ingest(store, [str(write(tmp_path / "b.csv", "user_id,age,gender,occupation,region\n"
                                                 "1,31,F,writer,east\n2,40,M,lawyer,\n3,22,M,artist,west\n"))])
    read = store.read("users").set_index("user_id")
    assert read["region"].to_dict() == {1: "east", 2: None, 3: "west"}  # an empty value clears it
    assert read["plan"].to_dict() == {1: "pro", 2: "basic", 3: None}  # a file without the column keeps it
    assert read.loc[1, "age"] == 31


@pytest.mark.parametrize("kind, extra, reason", [
    ("users", "Zip Code", "column 5 ('Zip Code'): an attribute's name is lower-case letters, digits and _"),
    ("users", "region,1st", "column 6 ('1st'): an attribute's name is lower-case"),
    ("users", "age_group", "column 5 ('age_group'): 'age_group' is a typed column of users"),
    ("users", "sex", "column 5 ('sex'): 'sex' is a typed column of users"),
    ("users", "region,REGION", "column 6 ('REGION'): named twice"),
    ("users", "", "column 5 (''): an attribute's name"),
    ("movies", "title", "column 5 ('title'): 'title' is a typed column of movies"),
    ("movies", "movie_key", "column 5 ('movie_key'): 'movie_key' is a name the audits give"),
    ("movies", "popularity", "column 5 ('popularity'): 'popularity' is a name the audits give"),
    ("users", "rating", "column 5 ('rating'): 'rating' is a name the audits give"),
])
def test_an_extra_column_that_cannot_name_an_attribute_is_refused_in_one_line(recaudit_bin, tmp_path, kind, extra,
                                                                              reason):
    header = ",".join(formats.USERS_HEADER if kind == "users" else formats.MOVIES_HEADER)
    row = "1,30,F,writer" if kind == "users" else "a+2001,A,2001,Drama"
    path = write(tmp_path / f"{kind}.csv", f"{header},{extra}\n{row}{',x' * (extra.count(',') + 1)}\n")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    done = run_cli(recaudit_bin, "ingest", "--db", db, str(path))
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"{path}:1: {reason}" in lines[0], lines
    store = Store(db)
    try:
        assert store.count(kind) == 0 and attribute_rows(store) == 0
    finally:
        store.close()


def test_movielens_zip_codes_are_stored_as_the_zip_code_attribute(store, tmp_path):
    ml100k, ml1m = tmp_path / "ml-100k", tmp_path / "ml-1m"
    ml100k.mkdir()
    ml1m.mkdir()
    (ml100k / "u.user").write_bytes(b"1|24|M|technician|85711\n2|53|F|other|\n")
    (ml100k / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||x|" + b"|".join([b"0"] * 18) + b"|1\n")
    (ml100k / "u.data").write_bytes(b"1\t1\t5\t874965758\n")
    (ml1m / "users.dat").write_bytes(b"7::F::1::10::48067\n8::M::56::16::55117-1234\n")
    (ml1m / "movies.dat").write_bytes(b"1::Jumanji (1995)::Adventure\n")
    (ml1m / "ratings.dat").write_bytes(b"7::1::5::978300760\n")
    ingest(store, [str(ml100k), str(ml1m)])
    read = store.read("users").set_index("user_id")
    assert read["zip_code"].to_dict() == {1: "85711", 2: None, 7: "48067", 8: "55117-1234"}


# -- groups ------------------------------------------------------------------------------------

def test_a_numeric_attribute_is_binned_and_a_value_with_a_dot_keeps_a_group_of_its_own():
    users = pd.DataFrame({"user_id": np.arange(1, 9), "age": pd.array([30] * 8, dtype="Int64"), "age_group": None,
                          "gender": "F", "occupation": "x",
                          "income": ["0", "29999", "30000", "99999.5", "n/a", None, "-1", "1e400"],
                          "city": ["st. louis", "st. louis", "paris", " ", None, "a.b.c", "paris", "7.0"]})
    config = configuration.resolve({"groups": {"bins": {"income": {"low": [0, 29999], "high": [30000, 1e6]}}}})
    out = groups.user_groups(users, ["income", "city", "sex"], config)
    assert list(out.columns) == ["user_id", "income", "city", "sex"]
    assert out["income"].tolist() == ["low", "low", "high", "high", "unknown", "unknown", "unknown", "unknown"]
    assert out["city"].tolist() == ["st_ louis", "st_ louis", "paris", "unknown", "unknown", "a_b_c", "paris", "7_0"]
    with pytest.raises(formats.InputError, match=r"fairness.dimensions: no stored user has the attribute 'region' "
                                                 r"\(stored attributes: income, city\)"):
        groups.user_groups(users, ["sex", "region"], config)


@pytest.mark.parametrize("settings, message", [
    ({"fairness": {"dimensions": ["sex", "Region"]}}, "fairness.dimensions: 'Region' is neither"),
    ({"fairness": {"dimensions": ["rating"]}}, "fairness.dimensions: 'rating' is neither .* the audits give"),
    ({"fairness": {"dimensions": ["region", "region"]}}, "fairness.dimensions: names 'region' twice"),
    ({"groups": {"bins": {"income": {"a": [0, 10], "b": [10, 20]}}}}, "groups.bins.income: bins 'a' and 'b' overlap"),
    ({"groups": {"bins": {"income": {"a.b": [0, 10]}}}}, "groups.bins.income: bin 'a.b'"),
    ({"groups": {"bins": {"income": {"a": [10, 0]}}}}, r"groups.bins.income.a: must be \[lowest, highest\]"),
    ({"groups": {"bins": {"age": {"a": [0, 10]}}}}, "groups.bins.age: .* binned by groups.age"),
    ({"drift": {"attributes": {"genre": {}}}}, r"drift.attributes.genre: names a built-in signal \(drift.signals"),
    ({"drift": {"attributes": {"region": {"thresold": 1}}}}, "drift.attributes.region.thresold: unknown setting"),
])
def test_attribute_settings_of_the_wrong_form_are_refused_at_load(settings, message):
    with pytest.raises(formats.InputError, match=message):
        configuration.resolve(settings)


# -- fairness by any attribute -----------------------------------------------------------------

@pytest.fixture
def attributed_world(tmp_path):
    """A simulated service whose users.csv also carries a numeric income and a plan whose values
    are markup or hold a '.'; its region comes from the simulator."""
    data = tmp_path / "data"
    simulate(data, Config(users=800, movies=150, days=6, seed=4))
    users = pd.read_csv(data / "users.csv", dtype=str, keep_default_na=False)
    assert set(users["region"]) == {"north", "south", "east", "west"}
    rng = np.random.default_rng(0)
    users["income"] = rng.integers(0, 100_000, len(users)).astype(str)
    users.loc[::10, "income"] = "n/a"
    users["plan"] = np.array(["basic", PAYLOAD, "pro.plus"], dtype=object)[np.arange(len(users)) % 3]
    users.to_csv(data / "users.csv", index=False)
    return data


def test_each_extra_column_is_a_fairness_dimension_keyed_by_its_name(recaudit_bin, db_url, attributed_world, tmp_path,
                                                                    chromium):
    assert run_cli(recaudit_bin, "ingest", "--db", db_url, str(attributed_world)).returncode == 0
    assert run_cli(recaudit_bin, "train", "--db", db_url, "--until", "2024-01-04", "--factors", "8",
                   "--models", str(tmp_path / "models")).returncode == 0
    toml = write(tmp_path / "recaudit.toml", '[fairness]\ndimensions = ["sex", "region", "income", "plan"]\n'
                                             "min_group_size = 5\nmin_group_users = 2\nresamples = 50\n"
                                             "[groups.bins.income]\nlow = [0, 49999]\nhigh = [50000, 100000]\n")
    exported = tmp_path / "evaluated.csv"
    done = run_cli(recaudit_bin, "audit", "--db", db_url, "--config", str(toml), "--only", "fairness",
                   "--out", str(tmp_path / "reports"), "--export-predictions", str(exported), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    metrics = document["audits"]["fairness"]["metrics"]
    rows = pd.read_csv(exported, dtype={"plan": str, "income": str})
    assert list(rows.columns[-4:]) == ["sex", "region", "income", "plan"]
    assert set(rows["income"]) == {"low", "high", "unknown"} and set(rows["plan"]) == {"basic", PAYLOAD, "pro_plus"}
    for dim in ("region", "income", "plan"):
        assert metrics[f"fairness.rmse_gap.{dim}"] is not None
        for group, part in rows.groupby(dim):
            assert metrics[f"fairness.n.{dim}.{group}"] == len(part)
            rmse = float(np.sqrt(np.mean((part.prediction - part.rating) ** 2)))
            assert metrics[f"fairness.rmse.{dim}.{group}"] == pytest.approx(rmse, abs=1e-9), (dim, group)
    assert "fairness.rmse.age.senior" not in metrics  # only the dimensions configured
    page = tmp_path / "reports" / "runs" / str(document["run_id"]) / "index.html"
    seen = open_page(chromium, page, "attributes-fairness")
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert f"plan {PAYLOAD}" in seen["text"] and "region north" in seen["text"] and "By income" in seen["text"]


def test_a_dimension_no_stored_user_has_is_an_error_naming_the_setting(recaudit_bin, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=100, movies=40, days=2, seed=1))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert run_cli(recaudit_bin, "ingest", "--db", db, str(data)).returncode == 0
    assert run_cli(recaudit_bin, "train", "--db", db, "--until", "2024-01-02", "--factors", "4",
                   "--models", str(tmp_path / "models")).returncode == 0
    message = "fairness.dimensions: no stored user has the attribute 'plan' (stored attributes: region)"
    store = Store(db)
    try:  # a scheduled run records it
        config = configuration.resolve({"fairness": {"dimensions": ["sex", "plan"]}})
        result = runs.run(store, "2024-01-01", "2024-01-03", config, ["fairness"], tmp_path / "out").results
        assert result["fairness"].status == "errored" and message in result["fairness"].error
    finally:
        store.close()
    toml = write(tmp_path / "recaudit.toml", '[fairness]\ndimensions = ["sex", "plan"]\n')
    done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(toml), "--only", "fairness",
                   "--out", str(tmp_path / "reports"))
    assert done.returncode == 2 and done.stderr.decode().strip().splitlines() == [f"error: {message}"], done.stderr


# -- drift of an attribute's share -------------------------------------------------------------

ONLY_ATTRIBUTES = {"report": False, "signals": {name: {"enabled": False} for name in configuration.DRIFT_SIGNALS},
                   "attributes": {"region": {}}}


def windows(events, users, fewer_of: str | None = None, seed: int = 0) -> tuple[dict, dict]:
    """Days 1-2 and days 3-4 of a log; with `fewer_of`, two thirds of that region's users are
    gone from the second window."""
    gone = set()
    if fewer_of is not None:
        members = users.loc[users["region"] == fewer_of, "user_id"].to_numpy()
        gone = set(np.random.default_rng(seed).choice(members, size=2 * len(members) // 3, replace=False).tolist())

    def within(f, since, until, drop=False):
        keep = (f["time"] >= pd.Timestamp(since)) & (f["time"] < pd.Timestamp(until))
        return f[keep & ~f["user_id"].isin(gone)] if drop else f[keep]

    def window(since, until, drop=False):
        return {name: within(getattr(events, name), since, until, drop)
                for name in ("watches", "ratings", "recommendations")} | {"items": events.items}

    return window("2024-01-01", "2024-01-03"), window("2024-01-03", "2024-01-05", drop=True)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    out = {}
    for seed in range(10):
        path = tmp_path_factory.mktemp(f"drift{seed}")
        simulate(path, Config(users=2000, movies=100, days=4, seed=seed))
        out[seed] = path, parse_file(path / "events.log"), formats.read_users_csv(path / "users.csv")[0]
    return out


def test_drift_of_an_attributes_share_fires_when_the_share_shifts_and_not_when_it_does_not(services):
    fired, quiet = [], []
    for seed, (_path, events, users) in services.items():
        clean = recaudit.drift(*windows(events, users), users, config={"drift": ONLY_ATTRIBUTES})
        shifted = recaudit.drift(*windows(events, users, "north", seed), users, config={"drift": ONLY_ATTRIBUTES})
        quiet.append(clean.metrics["drift.region.drifted"] == 0 and not clean.findings)
        fired.append(shifted.metrics["drift.region.drifted"] == 1
                     and "region of daily active users = north" in shifted.findings[0].message)
    print(f"region share drift found in {sum(fired)}/{len(fired)} seeds; clean windows alarmed in "
          f"{len(quiet) - sum(quiet)}/{len(quiet)}")
    assert all(fired) and all(quiet)


def test_drift_of_an_attribute_from_the_store_equals_drift_from_frames_and_needs_the_attribute(store, services,
                                                                                              tmp_path):
    path, events, users = services[0]
    ingest(store, [str(path)])
    config = configuration.resolve({"drift": ONLY_ATTRIBUTES})
    stored = runs.run(store, "2024-01-03", "2024-01-05", config, ["drift"], tmp_path,
                      reference=(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-03"))).results["drift"]
    framed = recaudit.drift(*windows(events, users), store.read("users"), config={"drift": ONLY_ATTRIBUTES})
    assert stored.metrics == pytest.approx(framed.metrics) and "drift.region.score" in stored.metrics
    missing = {"drift": {**ONLY_ATTRIBUTES, "attributes": {"plan": {}}}}
    result = runs.run(store, "2024-01-03", "2024-01-05", configuration.resolve(missing), ["drift"],
                      tmp_path).results["drift"]
    assert result.status == "errored" and \
        "drift.attributes: no stored user has the attribute 'plan' (stored attributes: region)" in result.error
    with pytest.raises(formats.InputError, match="drift.attributes: no stored user has the attribute 'plan'"):
        recaudit.drift(*windows(events, users), users, config=missing)


def test_drift_counts_a_binned_attribute_in_its_bins(services):
    _path, events, users = services[0]
    users = users.assign(income=np.where(users["user_id"] % 3 == 0, "n/a", (users["user_id"] * 37 % 1000).astype(str)))
    config = configuration.resolve({"drift": {**ONLY_ATTRIBUTES, "attributes": {"income": {}}},
                                    "groups": {"bins": {"income": {"low": [0, 499], "high": [500, 999]}}}})
    source = FrameSource(windows(events, users)[0], users)
    signal = [s for s, _per in drift.signals(config) if s.name == "income"][0]
    counts = signal.build(source, drift.Basis(config, source)).groupby("value")["n"].sum()
    assert set(counts.index) == {"low", "high", "unknown"} and counts.sum() == source.active["days"].sum()
    by_user = source.active.merge(users, on="user_id", suffixes=("", "_"))
    assert counts["unknown"] == by_user.loc[by_user.income == "n/a", "days"].sum()


def test_users_with_more_attributes_than_sqlite_joins_at_once_read_back_whole(store, tmp_path):
    names = [f"a{i}" for i in range(70)]  # SQLite joins at most 64 tables in one statement
    write(tmp_path / "users.csv", "user_id,age,gender,occupation," + ",".join(names) + "\n"
          + "".join(f"{u},30,M,writer," + ",".join(f"{u}-{i}" for i in range(70)) + "\n" for u in range(3)))
    ingest(store, [str(tmp_path / "users.csv")])
    users = store.read("users")
    assert list(users.columns[-70:]) == sorted(names) and users["user_id"].tolist() == [0, 1, 2]
    assert users.loc[users.user_id == 2, "a69"].item() == "2-69" and users.loc[users.user_id == 0, "a7"].item() == "0-7"


def test_a_field_beyond_csv_s_limit_is_quarantined_and_the_rest_of_the_file_stored(store, tmp_path):
    write(tmp_path / "users.csv", "user_id,age,gender,occupation,bio\n1,30,M,writer,short\n"
          f"2,30,M,writer,{'x' * 200_000}\n3,40,F,doctor,ok\n")
    [result] = ingest(store, [str(tmp_path / "users.csv")]).sources
    assert (result.lines, result.stored["users"], result.quarantined) == (3, 2, 1)
    [reason] = store.read("quarantine")["reason"].tolist()
    assert reason.startswith("not a CSV row (field larger than field limit")
    assert store.read("users")["bio"].tolist() == ["short", "ok"]

"""Validation pushed down to the store: Great Expectations sees the suspect rows only, and every
outcome (counts, shares, success, examples, messages) is the one it gives on the whole frames,
on SQLite, PostgreSQL, and a lake read by DuckDB and by Spark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recaudit.audits import config as configuration
from recaudit.audits import registry, validation
from recaudit.audits.ingest import ingest
from recaudit.audits.run import AuditContext
from recaudit.audits.store import Store

DAY, NEXT = pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "lake-duckdb",
            pytest.param("lake-spark", marks=pytest.mark.spark)]

# What a stored log can hold that fails the shipped suites (the parser takes it): a minute past
# the longest film, a time in the future, a watch and a rating repeated on another line, movies
# not in the catalogue, an unknown status, lists too short, with a movie twice or an unknown one.
FAULTY_LOG = b"""2024-01-02T10:00:00,1,GET /data/m/a+2001/99999.mpg
2024-01-02T10:00:01,1,GET /data/m/a+2001/4.mpg
2024-01-02T10:00:01,1,GET /data/m/a+2001/4.mpg
2024-01-02T10:00:02,2,GET /data/m/zz+1999/1.mpg
2024-01-02T10:00:03,2,GET /rate/a+2001=4
2024-01-02T10:00:03,2,GET /rate/a+2001=4
2024-01-02T10:00:04,3,GET /rate/zz+1999=2
2024-01-02T10:00:05,3,recommendation request s:8082, status 299, result: a+2001, b+2002, 5 ms
2024-01-02T10:00:06,3,recommendation request s:8082, status 200, result: a+2001, a+2001, 7 ms
2024-01-02T10:00:07,4,recommendation request s:8082, status 200, result: a+2001, zz+1999, 9 ms
2024-01-02T10:00:08,4,recommendation request s:8082, status 200, result: b+2002, c+2003, 9 ms
not an event at all
2099-01-02T10:00:00,1,GET /data/m/a+2001/3.mpg
"""
# Users out of range, of an unknown gender, with no age or group; movies of an odd year, untitled.
FAULTY_USERS = "user_id,age,gender,occupation\n1,34,F,writer\n2,150,X,other\n3,,,\n4,22,M,student\n"
FAULTY_MOVIES = "movie_id,title,year,genres\na+2001,A,2001,Drama\nb+2002,,1700,Drama\nc+2003,C,,Comedy\n"


@pytest.fixture(scope="module")
def sources(small_world, tmp_path_factory) -> list[str]:
    """The small simulated world (every kind of fault, several sources), and a crafted day with
    every fault the shipped suites can find in stored rows, its log in two files whose line
    numbers repeat."""
    where = tmp_path_factory.mktemp("faulty")
    (where / "users.csv").write_text(FAULTY_USERS)
    (where / "movies.csv").write_text(FAULTY_MOVIES)
    lines = FAULTY_LOG.splitlines(keepends=True)
    (where / "first.log").write_bytes(b"".join(lines[:7]))
    (where / "second.log").write_bytes(b"".join(lines[7:]))
    return [str(small_world), str(where / "users.csv"), str(where / "movies.csv"), str(where / "first.log"),
            str(where / "second.log")]


def _open(request, tmp_path) -> Store:
    backend = request.param
    if backend == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'recaudit.db'}")
    if backend == "postgres":
        return Store(request.getfixturevalue("postgres_schema_url"))
    engine = backend.split("-")[1]
    if engine == "spark":
        request.getfixturevalue("spark")
    return Store(f"sqlite:///{tmp_path / 'manifest.db'}", lake=str(tmp_path / "lake"), engine=engine)


@pytest.fixture
def stored(request, sources, tmp_path):
    store = _open(request, tmp_path)
    ingest(store, sources)
    yield store
    store.close()


def both_ways(store, since, until, config=None) -> tuple[list[dict], list[dict], dict]:
    config = config or configuration.load(None)
    pushed, read = validation.stored_outcomes(store, since, until, config)
    whole, _ = validation.stored_outcomes(store, since, until, config, push_down=False)
    return [o.to_dict() for o in pushed], [o.to_dict() for o in whole], read


def failed(outcomes: list[dict]) -> set[str]:
    return {f"{o['dataset']}.{o['name']}" for o in outcomes if o["success"] is False}


@pytest.mark.parametrize("stored", BACKENDS, indirect=True)
def test_pushed_down_outcomes_are_great_expectations_on_the_whole_frames(stored):
    for since, until in [(None, None), (DAY, NEXT), (pd.Timestamp("2024-01-03"), pd.Timestamp("2024-01-04"))]:
        pushed, whole, read = both_ways(stored, since, until)
        assert pushed == whole, (since, until)
        assert all("whole" not in r for r in read.values()), read
    pushed, _, read = both_ways(stored, DAY, NEXT)
    # Not vacuous: the crafted day fails every row check a stored row can fail.
    assert failed(pushed) >= {
        "log.lines_parse", "watches.minute_between_0_and_max_minute", "watches.no_duplicate_watch_events",
        "watches.watched_movie_known", "ratings.no_duplicate_ratings", "ratings.rated_movie_known",
        "recommendations.status_known", "recommendations.list_has_list_length_movies",
        "recommendations.list_without_duplicates", "recommendations.recommended_movies_known",
        "users.age_between_0_and_120", "users.gender_in_M_F",
        "movies.year_plausible"}, failed(pushed)
    assert read["watches"]["suspects"] < read["watches"]["rows"]


def test_great_expectations_sees_only_the_suspect_rows(store, small_world):
    """On a day with no fault the suspects are none, however many rows there are; on the
    corrupt days they are the failing rows and those sharing a key with them."""
    ingest(store, [str(small_world)])
    start = pd.Timestamp(json.loads((Path(small_world) / "simulation.json").read_text())["config"]["start"])
    _, _, clean = both_ways(store, start, start + pd.Timedelta(days=1))
    assert clean["watches"] == {"rows": clean["watches"]["rows"], "suspects": 0}
    assert clean["watches"]["rows"] > 1000
    pushed, _, corrupt = both_ways(store, start + pd.Timedelta(days=1), start + pd.Timedelta(days=4))
    failing = sum(o["unexpected_count"] or 0 for o in pushed if o["dataset"] == "watches")
    assert 0 < corrupt["watches"]["suspects"] <= failing < corrupt["watches"]["rows"] / 10


def _with_extra(tmp_path, extra: dict[str, list[dict]]) -> dict:
    """The settings with a suite directory of the shipped suites plus `extra` expectations."""
    suites = tmp_path / "suites"
    shutil.copytree(validation.suite_dir(), suites, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for dataset, expectations in extra.items():
        path = suites / f"{dataset}.json"
        suite = json.loads(path.read_text())
        suite["expectations"] += expectations
        path.write_text(json.dumps(suite))
    config = configuration.load(None)
    config["validation"]["suite_dir"] = str(suites)
    return config


def _e(kind: str, name: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs, "meta": {"name": name, "severity": "warning"}}


def test_a_teams_suite_of_mostly_row_conditions_and_repeated_keys_is_answered_as_on_the_whole_frames(
        store, sources, tmp_path):
    ingest(store, sources)
    config = _with_extra(tmp_path, {
        "watches": [_e("expect_column_values_to_be_unique", "one_watch_per_user", column="user_id"),
                    _e("expect_column_values_to_be_between", "minute_under_five_mostly", column="minute",
                       max_value=5, strict_max=True, mostly=0.6),
                    _e("expect_compound_columns_to_be_unique", "one_watch_per_user_and_movie",
                       column_list=["user_id", "movie_id"])],
        "ratings": [_e("expect_column_values_to_be_in_set", "middling", column="rating", value_set=[2, 3, 4],
                       mostly=0.5)],
        "recommendations": [
            _e("expect_column_values_to_be_between", "fast_when_failed", column="latency_ms", max_value=6,
               row_condition={"type": "comparison", "column": {"name": "status"}, "operator": "!=",
                              "parameter": 200}),
            _e("expect_column_values_to_be_null", "no_error_mostly", column="error", mostly=0.9),
            _e("expect_column_values_to_be_between", "fast_unless_timed_out", column="latency_ms", max_value=8,
               row_condition={"type": "comparison", "column": {"name": "error"}, "operator": "!=",
                              "parameter": "timeout"}),
            _e("expect_column_values_to_be_unique", "one_list_per_line", column="line", row_condition=None),
            _e("expect_column_pair_values_to_be_equal", "user_is_list_length", column_A="user_id",
               column_B="n_items", row_condition={"type": "comparison", "column": {"name": "latency_ms"},
                                                  "operator": ">=", "parameter": 7})],
        "users": [_e("expect_column_values_to_not_be_null", "occupation_mostly_known", column="occupation",
                     mostly=0.8),
                  _e("expect_column_values_to_be_between", "adult", column="age", min_value=18, strict_min=True)],
    })
    for since, until in [(None, None), (DAY, NEXT)]:
        pushed, whole, read = both_ways(store, since, until, config)
        assert pushed == whole
        assert all("whole" not in r for r in read.values()), read
    assert {"watches.one_watch_per_user", "watches.one_watch_per_user_and_movie", "users.adult"} <= failed(pushed)
    mostly = {o["name"]: o for o in pushed if o["name"] in ("minute_under_five_mostly", "middling")}
    assert all(o["unexpected_count"] for o in mostly.values()), mostly  # rows failed, yet not enough to fail


CANNOT = {  # expectation -> why its dataset is read whole
    "ratings": (_e("expect_column_mean_to_be_between", "ratings_average", column="rating", min_value=4.5),
                "expect_column_mean_to_be_between"),
    "recommendations": (_e("expect_column_values_to_be_in_type_list", "error_is_text", column="error",
                           type_list=["str"]), "expect_column_values_to_be_in_type_list looks at every value of its "
                                           "column"),
    "watches": (_e("expect_column_values_to_not_be_null", "region_known", column="region"), "no column region"),
    "users": (_e("expect_column_values_to_be_in_set", "occupation_listed", column="occupation",
                 value_set=["writer", "other", None]), "None compared with a column of text values"),
}
OTHER_KINDS = [  # SQL would compare these unlike pandas: text against integers, a column of ints and texts,
    # a fraction or a number beyond the column's type (bound with the column's type)
    ("recommendations", _e("expect_column_values_to_be_in_set", "status_as_text", column="status",
                           value_set=["200", "299"]), "'200' compared with a column of number values"),
    ("users", _e("expect_column_values_to_be_in_set", "age_or_group_listed", column="age_or_group",
                 value_set=[34, 22]), "age_or_group holds values of two types"),
    ("ratings", _e("expect_column_values_to_be_between", "above_two_and_a_half", column="rating", min_value=2.5),
     "2.5 compared with a column of number values"),  # bound as an integer, it would be rounded
    ("recommendations", _e("expect_column_values_to_be_between", "under_ten_billion_ms", column="latency_ms",
                           max_value=10 ** 10), "10000000000 compared with a column of number values"),
    ("recommendations", _e("expect_column_values_to_be_between", "fast_when_status_text", column="latency_ms",
                           max_value=6, row_condition={"type": "comparison", "column": {"name": "status"},
                                                       "operator": "==", "parameter": "200"}),
     "'200' compared with a column of number values"),
]


def test_a_suite_the_store_cannot_answer_in_sql_has_that_dataset_read_whole_and_says_why(store, sources, tmp_path):
    ingest(store, sources)
    config = _with_extra(tmp_path, {dataset: [e] for dataset, (e, _why) in CANNOT.items()})
    pushed, whole, read = both_ways(store, DAY, NEXT, config)
    assert pushed == whole
    assert {d: read[d] for d in CANNOT} == {d: {"whole": why} for d, (_e, why) in CANNOT.items()}
    assert "whole" not in read["movies"] and "whole" not in read["log"]
    assert {"ratings.ratings_average", "watches.region_known", "users.occupation_listed"} <= failed(pushed)


@pytest.mark.parametrize("dataset, expectation, why", OTHER_KINDS, ids=[e["meta"]["name"] for _d, e, _w in OTHER_KINDS])
def test_values_sql_would_compare_unlike_pandas_have_their_dataset_read_whole(store, sources, tmp_path, dataset,
                                                                              expectation, why):
    ingest(store, sources)
    pushed, whole, read = both_ways(store, DAY, NEXT, _with_extra(tmp_path, {dataset: [expectation]}))
    assert pushed == whole
    assert read[dataset] == {"whole": why}


@pytest.fixture
def without_lists(request, tmp_path):
    """A day of watches alone: the recommendations' row-conditioned checks have no rows."""
    store = _open(request, tmp_path)
    (tmp_path / "w.log").write_bytes(FAULTY_LOG.splitlines(keepends=True)[0] + FAULTY_LOG.splitlines(keepends=True)[1])
    ingest(store, [str(tmp_path / "w.log")])
    yield store
    store.close()


@pytest.mark.parametrize("without_lists", BACKENDS, indirect=True)
def test_a_dataset_with_no_rows_in_the_window_is_validated_as_empty_on_every_backend(without_lists):
    pushed, whole, read = both_ways(without_lists, DAY, NEXT)
    assert pushed == whole
    assert read["recommendations"] == {"rows": 0, "suspects": 0}
    lists = [o for o in pushed if o["name"] == "list_has_list_length_movies"]
    assert lists[0]["success"] is True and lists[0]["element_count"] == 0


def test_the_validation_audit_reports_what_it_read(store, sources, tmp_path):
    ingest(store, sources)
    result = registry.get("validation")(AuditContext(store=store, since=DAY, until=NEXT,
                                                     config=configuration.load(None), run_id=0, out_dir=tmp_path))
    assert result.details["read"]["watches"]["suspects"] > 0
    assert result.metrics["validation.failed"] > 10

"""The Python API as a notebook uses it: a fairness gap planted in one's own predictions is
found with the groups and numbers named, the numbers are those of an independent computation,
a result's page is the run page's section, offline and inert to its data, and `import recaudit`
exposes exactly its public names, loading nothing until one is used."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import recaudit
from recaudit.recsys.formats import InputError
from recaudit.reports.html import render_run
from support import HEAVY, open_page

# No "." in it: a group label with one is refused (metric keys are dot-separated), and this one
# is a group label.
PAYLOAD = "</script><script>__pwned=1;alert(1)</script>"


def planted(users_per_region: int = 40, ratings_per_user: int = 8, south_error: float = 0.6, seed: int = 0):
    """A notebook's own evaluation: north predicted with a small error, south off by
    `south_error` more; a sex column with no gap at all; movie ids and times besides."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(2 * users_per_region), ratings_per_user)
    region = np.where(user < users_per_region, "north", "south")
    rating = rng.integers(1, 6, user.size).astype(float)
    prediction = rating + rng.normal(0, 0.3, user.size) + np.where(region == "south", south_error, 0.0)
    return pd.DataFrame({"user_id": user, "movie_id": rng.integers(0, 50, user.size).astype(str),
                         "time": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(user.size), "min"),
                         "rating": rating, "prediction": prediction, "region": region,
                         "sex": np.where(user % 2 == 0, "F", "M")})


def test_a_gap_planted_between_regions_is_found_with_the_groups_and_the_gap_named():
    result = recaudit.fairness(planted(), config={"fairness": {"resamples": 200, "seed": 1}})
    gaps = {f.key: f for f in result.findings if f.kind == "fairness_gap"}
    assert result.status == "findings" and set(gaps) == {"fairness.rmse_gap.region", "fairness.mae_gap.region"}
    finding = gaps["fairness.rmse_gap.region"]
    gap = result.metrics["fairness.rmse_gap.region"]
    assert finding.severity == "warning" and finding.value == gap and finding.threshold == 0.2
    assert gap > 0.3 and result.metrics["fairness.rmse_gap_low.region"] > 0
    message = finding.message
    assert message.startswith("RMSE is ") and "for region south against" in message and "for region north:" in message
    assert f"a gap of {gap:.2f}" in message and "320 ratings by 40 users" in message
    assert result.metrics["fairness.rmse_gap.sex"] < 0.2  # no gap planted, none found


def test_per_group_numbers_equal_fairlearns_metricframe_and_numpy():
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    ratings = planted(south_error=0.4, seed=3)
    metrics = recaudit.fairness(ratings, dimensions=["region"], config={"fairness": {"resamples": 20}}).metrics
    theirs = MetricFrame(metrics={"rmse": lambda t, p: np.sqrt(mean_squared_error(t, p)), "mae": mean_absolute_error},
                         y_true=ratings["rating"], y_pred=ratings["prediction"], sensitive_features=ratings["region"])
    for region in ("north", "south"):
        error = (ratings.prediction - ratings.rating)[ratings.region == region].to_numpy()
        assert metrics[f"fairness.rmse.region.{region}"] == pytest.approx(np.sqrt(np.mean(error ** 2)))
        assert metrics[f"fairness.rmse.region.{region}"] == pytest.approx(theirs.by_group.loc[region, "rmse"])
        assert metrics[f"fairness.mae.region.{region}"] == pytest.approx(theirs.by_group.loc[region, "mae"])
        assert metrics[f"fairness.n.region.{region}"] == len(error)
    assert metrics["fairness.rmse_gap.region"] == pytest.approx(theirs.difference()["rmse"])
    assert metrics["fairness.rmse"] == pytest.approx(theirs.overall["rmse"])
    assert not any(".sex." in key for key in metrics)  # only the dimensions asked for


def test_dimensions_default_to_every_column_but_the_ratings_own():
    ratings = planted().assign(cold_start=False)
    metrics = recaudit.fairness(ratings, config={"fairness": {"resamples": 20}}).metrics
    dimensions = {key.split(".")[2] for key in metrics if key.startswith("fairness.rmse_gap.")}
    assert dimensions == {"region", "sex"}


def test_groups_too_small_for_a_verdict_are_named_not_dropped():
    ratings = planted(users_per_region=10)  # 80 ratings by 10 users per region: under both minimums
    result = recaudit.fairness(ratings, dimensions=["region"], config={"fairness": {"resamples": 20}})
    assert result.metrics["fairness.rmse_gap.region"] is None and result.metrics["fairness.n.region.south"] == 80
    [info] = result.findings
    assert info.severity == "info" and "region south (80 ratings by 10 users)" in info.message
    assert result.status == "ok"


def test_ratings_the_bootstrap_cannot_read_are_refused_with_the_reason():
    ratings = planted()
    with pytest.raises(ValueError, match="no column 'prediction'"):
        recaudit.fairness(ratings.drop(columns="prediction"))
    with pytest.raises(ValueError, match="no column 'income'"):
        recaudit.fairness(ratings, dimensions=["income"])
    moved = ratings.copy()
    moved.loc[0, "region"] = "south"  # user 0 now in both regions
    with pytest.raises(ValueError, match="user 0 is in more than one 'region' group"):
        recaudit.fairness(moved)
    with pytest.raises(InputError, match="config: fairness.resampels: unknown setting"):
        recaudit.fairness(ratings, config={"fairness": {"resampels": 10}})


def test_cold_start_as_text_is_refused_and_ones_and_zeros_or_missing_values_are_read():
    ratings = planted(users_per_region=10)
    with pytest.raises(ValueError, match=r"cold_start must be True/False \(or 1/0\).*'True', 'False'"):
        recaudit.fairness(ratings.assign(cold_start=np.where(ratings.user_id < 5, "True", "False")), "region")
    with pytest.raises(ValueError, match=r"cold_start must be True/False \(or 1/0\).*2"):
        recaudit.fairness(ratings.assign(cold_start=ratings.user_id % 3), "region")
    cold = (ratings.user_id < 5).astype(float).where(ratings.user_id != 0)  # user 0's are missing: warm
    share = recaudit.fairness(ratings.assign(cold_start=cold), "region", {"fairness": {"resamples": 5}}).metrics
    assert share["fairness.cold_start_share"] == pytest.approx(4 / 20)


def test_integral_float_groups_are_named_as_integers_and_dotted_names_are_refused():
    ratings = planted(users_per_region=10)
    tier = ratings.assign(tier=np.where(ratings.user_id < 10, 1.0, np.nan))  # integers with a gap read as floats
    metrics = recaudit.fairness(tier, ["tier"], {"fairness": {"resamples": 5}}).metrics
    assert metrics["fairness.n.tier.1"] == metrics["fairness.n.tier.unknown"] == 80
    with pytest.raises(ValueError, match=r"group '1.5' of dimension 'tier' has a '.': metric keys are dot-separated"):
        recaudit.fairness(tier.assign(tier=tier.tier.fillna(1.5)), ["tier"])
    with pytest.raises(ValueError, match=r"dimension 'region.v2' has a '.' in its name: metric keys are dot-separated"):
        recaudit.fairness(ratings.rename(columns={"region": "region.v2"}))


def test_a_bare_string_is_one_dimension_and_the_inputs_cannot_be_dimensions():
    ratings = planted(users_per_region=10)
    metrics = recaudit.fairness(ratings, "region", {"fairness": {"resamples": 5}}).metrics
    assert {key.split(".")[2] for key in metrics if key.startswith("fairness.rmse_gap.")} == {"region"}
    with pytest.raises(ValueError, match="'rating', 'cold_start' cannot be a dimension"):
        recaudit.fairness(ratings.assign(cold_start=False), ["region", "rating", "cold_start"])


LOG = (b"2024-01-01T10:00:00,1,recommendation request a, status 200, result: x+1, y+2, 80 ms\n"
       b"2024-01-01T10:05:00,1,GET /data/m/y+2/0.mpg\n"
       b"2024-01-01T10:06:00,1,GET /rate/y+2=4\n"
       b"2024-01-01T13:00:00,2,recommendation request a, status 200, result: x+1, 90 ms\n"
       b"2024-01-01T13:05:00,2,GET /data/m/x+1/0.mpg\n")


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "events.log"
    path.write_bytes(LOG)
    return recaudit.read_log(path)


def test_online_and_feedback_take_what_read_log_returns_as_well_as_its_frames(log):
    assert recaudit.online(log).metrics == recaudit.online(log.recommendations, log.items, log.watches).metrics
    assert recaudit.online(log).metrics["online.requests"] == 2
    framed = recaudit.feedback(log.recommendations, log.items, log.ratings, log.watches)
    mapped = recaudit.feedback({"recommendations": log.recommendations, "items": log.items, "ratings": log.ratings,
                                "watches": log.watches})
    assert recaudit.feedback(log).metrics == framed.metrics == mapped.metrics
    with pytest.raises(ValueError, match="the events have no 'ratings' frame"):
        recaudit.feedback({"recommendations": log.recommendations, "items": log.items, "watches": log.watches})
    with pytest.raises(ValueError, match="online\\(\\) was given a recommendations frame without watches"):
        recaudit.online(log.recommendations, log.items)


def test_a_frame_without_a_column_an_audit_reads_is_refused_by_frame_and_column(log):
    frames = {"recommendations": log.recommendations, "items": log.items, "ratings": log.ratings,
              "watches": log.watches}
    with pytest.raises(ValueError, match="recommendations has no column 'server', 'latency_ms'"):
        recaudit.online({**frames, "recommendations": log.recommendations.drop(columns=["server", "latency_ms"])})
    with pytest.raises(ValueError, match="items has no column 'movie_id'"):
        recaudit.feedback({**frames, "items": log.items.drop(columns="movie_id")})
    with pytest.raises(ValueError, match="ratings has no column 'rating'"):
        recaudit.drift(log, {**frames, "ratings": log.ratings.drop(columns="rating")})


@pytest.mark.parametrize("audit", ["online", "feedback"])
def test_a_window_given_at_one_end_keeps_that_end_and_takes_the_other_from_the_frames(log, audit):
    run = getattr(recaudit, audit)
    counted = "online.requests" if audit == "online" else "feedback.recommendations"
    assert run(log).metrics[counted] == (2 if audit == "online" else 3)
    assert run(log, since="2024-01-01T12:00").metrics[counted] == 1  # the second request only
    assert run(log, until="2024-01-01T12:00").metrics[counted] == (1 if audit == "online" else 2)


@pytest.mark.parametrize("audit", ["online", "feedback"])
def test_a_window_end_that_is_not_a_timestamp_or_comes_too_late_is_refused(log, audit):
    run = getattr(recaudit, audit)
    with pytest.raises(ValueError, match="since must be a timestamp: 'garbage'"):
        run(log, since="garbage")
    with pytest.raises(ValueError, match="until must be a timestamp: 'soon'"):
        run(log, until="soon")
    with pytest.raises(ValueError, match="since .* must be before until"):
        run(log, since="2024-01-02", until="2024-01-01")
    with pytest.raises(ValueError, match=r"since \(2024-01-02 00:00:00\) must be before until .*until from the frames"):
        run(log, since="2024-01-02")


@pytest.mark.parametrize("audit", ["online", "feedback"])
def test_frames_without_events_are_insufficient_data_not_an_error(tmp_path, audit):
    (tmp_path / "empty.log").write_text("")
    result = getattr(recaudit, audit)(recaudit.read_log(tmp_path / "empty.log"))
    assert (result.audit, result.status, result.details) == (audit, "insufficient_data",
                                                             {"reason": "no events in the frames"})


# -- pages ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_result():
    """A result whose group names and finding messages carry markup."""
    ratings = planted()
    ratings["region"] = ratings["region"].map({"north": "north", "south": "south" + PAYLOAD})
    return recaudit.fairness(ratings, dimensions=["region"], config={"fairness": {"resamples": 50}})


def test_save_html_writes_a_self_contained_page_where_markup_in_the_data_stays_text(hostile_result, tmp_path):
    assert any(PAYLOAD in f.message for f in hostile_result.findings)
    page = hostile_result.save_html(tmp_path / "new" / "fairness.html")
    html = page.read_text()
    assert "<script" not in html.lower() and "&lt;/script&gt;&lt;script&gt;" in html
    assert 'http-equiv="Content-Security-Policy" content="default-src \'none\';' in html
    # Nothing is fetched: no address but SVG's namespace name, no external reference at all.
    assert re.findall(r"https?://[^\s\"'<>]+", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg")
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?#)""", html) and "url(" not in html and "@import" not in html
    assert "By region" in html and "<svg" in html and "region north" in html


def test_the_saved_page_opens_offline_without_running_the_datas_script(chromium, hostile_result, tmp_path):
    seen = open_page(chromium, hostile_result.save_html(tmp_path / "fairness.html"), "api-fairness")
    assert all(url.startswith("file://") for url in seen["requests"]), seen["requests"]
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert PAYLOAD in seen["text"] and seen["charts"] == 1


def test_the_saved_page_shows_the_section_a_run_page_shows_for_the_same_result(hostile_result, tmp_path):
    document = {"run_id": 1, "status": hostile_result.status, "window": {"since": "a", "until": "b"},
                "audits": {"fairness": hostile_result.to_dict()}}
    run_page = render_run(document, tmp_path).read_text()
    saved = hostile_result.save_html(tmp_path / "fairness.html").read_text()

    def section(html):
        start = html.index('<section id="fairness">')
        return html[start:html.index("</section>", start)]

    assert section(saved) == section(run_page) and len(section(saved)) > 1000


def test_a_notebook_shows_the_result_inline_without_restyling_itself(hostile_result):
    fragment = hostile_result._repr_html_()
    assert '<section id="fairness">' in fragment and '<ul class="findings">' in fragment
    assert "<style" not in fragment and "<html" not in fragment and "<script" not in fragment.lower()


# -- the package -------------------------------------------------------------------------------

def test_import_recaudit_exposes_exactly_its_public_names_and_loads_each_on_first_use():
    code = f"""if True:
        import json, sys, recaudit
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        public = sorted(n for n in dir(recaudit) if not n.startswith("_"))
        homes = {{n: getattr(recaudit, n).__module__ for n in recaudit.__all__}}
        try:
            recaudit.no_such_name
            missing = None
        except AttributeError as exc:
            missing = str(exc)
        print(json.dumps({{"heavy": heavy, "public": public, "homes": homes, "missing": missing,
                           "version": recaudit.__version__}}))"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout)
    assert seen["heavy"] == [] and seen["public"] == sorted(recaudit.__all__)
    assert seen["homes"] == {"read_log": "recaudit.recsys.events", "fairness": "recaudit.audits.fairness",
                             "drift": "recaudit.audits.drift", "feedback": "recaudit.audits.feedback",
                             "online": "recaudit.audits.online", "validate": "recaudit.audits.validation",
                             "exposure": "recaudit.audits.exposure",
                             "AuditResult": "recaudit.audits.result", "Finding": "recaudit.audits.result"}
    assert seen["missing"] == "module 'recaudit' has no attribute 'no_such_name'"
    from importlib.metadata import version

    assert seen["version"] == version("recaudit")

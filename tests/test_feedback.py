"""Feedback loops: concentration and correlation equal hand computation and independent
formulas, the trend reads the stored history, and over ten seeds the simulator's loop is found
every time while a service without one stays quiet."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recaudit.audits import config as configuration
from recaudit.audits import feedback
from recaudit.audits import run as runs
from recaudit.audits.ingest import ingest
from recaudit.recsys.simulate import Config, simulate
from support import run_cli, seeded_services

SEEDS = range(10)


@pytest.mark.parametrize("exposure, expected", [
    ([0, 0, 0, 10], {"gini": 0.75, "coverage": 0.25, "entropy": 0.0, "hhi": 1.0, "top10_share": 1.0,
                     "top1pct_share": 1.0}),
    ([5, 5, 5, 5], {"gini": 0.0, "coverage": 1.0, "entropy": 1.0, "hhi": 0.25, "top1pct_share": 0.25}),
    ([1, 2, 3, 4], {"gini": 0.25, "coverage": 1.0, "hhi": 0.3, "top1pct_share": 0.4}),
])
def test_concentration_of_hand_computed_cases(exposure, expected):
    values = feedback.concentration(np.array(exposure))
    for key, value in expected.items():
        assert values[key] == pytest.approx(value), key


def test_concentration_equals_independent_formulas():
    rng = np.random.default_rng(0)
    x = np.where(rng.random(500) < 0.3, 0, rng.zipf(1.6, 500).clip(max=10**6)).astype(float)
    values = feedback.concentration(x)
    mean_difference = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    p = x / x.sum()
    assert values["gini"] == pytest.approx(mean_difference)
    assert values["entropy"] == pytest.approx(stats.entropy(p) / np.log(len(x)))
    assert values["coverage"] == pytest.approx(np.mean(x > 0))
    assert values["hhi"] == pytest.approx(np.sum(p ** 2))
    assert values["top10_share"] == pytest.approx(np.sort(x)[::-1][:10].sum() / x.sum())
    assert values["top1pct_share"] == pytest.approx(np.sort(x)[::-1][:5].sum() / x.sum())


def test_lorenz_curve_runs_from_corner_to_corner_and_gives_the_gini():
    x = np.random.default_rng(1).integers(0, 50, 100)
    curve = np.array(feedback.lorenz(x))
    assert curve[0].tolist() == [0, 0] and curve[-1].tolist() == [1, 1] and (np.diff(curve[:, 1]) >= 0).all()
    area = np.trapezoid(curve[:, 1], curve[:, 0])
    assert 1 - 2 * area == pytest.approx(feedback.concentration(x)["gini"], abs=1e-3)


def test_correlation_zero_fills_movies_rated_or_recommended_and_equals_scipy():
    rated = pd.Series({"a": 10, "b": 4, "c": 1, "e": 3})
    recommended = pd.Series({"a": 100, "b": 30, "d": 7, "e": 2})
    out = feedback.rating_recommendation(rated, recommended)
    r = np.array([10, 4, 1, 0, 3])
    s = np.array([100, 30, 0, 7, 2])
    assert out["n"] == 5
    assert out["pearson"] == pytest.approx(stats.pearsonr(r, s).statistic)
    assert out["pearson_p"] == pytest.approx(stats.pearsonr(r, s).pvalue)
    assert out["spearman"] == pytest.approx(stats.spearmanr(r, s).statistic)
    assert out["spearman_p"] == pytest.approx(stats.spearmanr(r, s).pvalue)


def test_correlation_of_constant_counts_is_none_not_nan():
    assert feedback.correlation(np.ones(5), np.arange(5))["pearson"] is None


def test_popularity_bias_of_a_hand_made_window():
    # Viewers: u1 watched a and b, u2 watched a: popularity a = 1, b = 0.5, c = 0.
    sessions = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": ["a", "b", "a"]})
    exposure = pd.Series({"a": 1, "b": 1, "c": 2})
    out = feedback.popularity_bias(exposure, sessions, head_share=0.6)
    assert out["arp"] == pytest.approx((1 + 0.5 + 0) / 4)
    assert out["arp_watched"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["long_tail_share"] == pytest.approx(3 / 4)  # head = {a} (2 of 3 sessions)
    assert out["long_tail_share_watched"] == pytest.approx(1 / 3)


def history(ginis, corrs):
    return pd.DataFrame({"gini": ginis, "top10_share": np.linspace(0.2, 0.4, len(ginis)), "correlation": corrs})


def test_loop_finding_needs_a_rising_gini_and_a_lasting_correlation():
    settings = configuration.load()["feedback"]
    fired = feedback.loop_finding(history([0.6, 0.65, 0.7, 0.75, 0.8], [0.9] * 5), settings)
    assert fired is not None and fired.kind == "feedback_loop"
    assert "rose from 0.600 to 0.800 over the last 5 runs (+0.050 per run" in fired.message
    assert "went from 20% to 40%" in fired.message
    assert feedback.loop_finding(history([0.6, 0.65, 0.7, 0.75, 0.8], [0.9, 0.9, 0.1, 0.9, 0.9]), settings) is None
    assert feedback.loop_finding(history([0.6, 0.6, 0.61, 0.6, 0.6], [0.9] * 5), settings) is None
    assert feedback.loop_finding(history([0.6, 0.8], [0.9] * 2), settings) is None  # too few runs to call a trend


def daily_runs(store, days, out, config=None):
    config = config or configuration.load()
    results = []
    for day in days:
        since = pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)
        outcome = runs.run(store, since, since + pd.Timedelta(days=1), config, ["feedback"], out)
        results.append(outcome.results["feedback"])
    return results


def test_trend_reads_the_latest_run_of_each_earlier_window_only(tmp_path):
    from recaudit.audits.store import Store

    data = tmp_path / "data"
    simulate(data, Config(users=600, movies=150, days=5, seed=3))
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    ingest(store, [str(data)])
    first = daily_runs(store, [1, 2, 2, 3], tmp_path)  # day 2 audited twice
    later = daily_runs(store, [4], tmp_path)[0]
    assert len(later.details["trend"]) == 4  # days 1, 2 (once), 3, and this run
    assert [t["gini"] for t in later.details["trend"][:3]] == pytest.approx(
        [first[0].metrics["feedback.gini"], first[2].metrics["feedback.gini"], first[3].metrics["feedback.gini"]])
    again = daily_runs(store, [2], tmp_path)[0]  # an earlier window audited again sees only what came before it
    assert len(again.details["trend"]) == 2


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    """For each seed, the last of four daily feedback audits from the middle day on."""
    from recaudit.audits.store import Store

    found = {}
    for faulty, seed, cfg, out in seeded_services(tmp_path_factory, "feedback", SEEDS, users=1000, movies=300, days=8):
        store = Store(f"sqlite:///{out / 'x.db'}")
        ingest(store, [str(out)])
        found[faulty, seed] = daily_runs(store, range(cfg.injection_day, cfg.days), out / "reports")[-1]
        store.close()
    return found


def test_the_feedback_fault_is_found_in_every_seed_and_a_service_without_it_stays_quiet(detection):
    injected = [r for (faulty, _), r in detection.items() if faulty]
    clean = [r for (faulty, _), r in detection.items() if not faulty]
    fired = [any(f.kind == "feedback_loop" for f in r.findings) for r in injected]
    rising = [r.metrics["feedback.gini_slope"] > 0 for r in injected]
    alarms = [any(f.kind == "feedback_loop" for f in r.findings) for r in clean]
    print(f"feedback loop found in {sum(fired)}/{len(fired)} seeds (Gini rising in {sum(rising)}); "
          f"without the fault it fired in {sum(alarms)}/{len(alarms)}")
    assert all(fired) and all(rising) and sum(alarms) <= 1
    assert all(r.metrics["feedback.gini_slope"] > 0.03 for r in injected)
    assert max(abs(r.metrics["feedback.gini_slope"]) for r in clean) < 0.01


def test_cli_feedback_audit_reports_groups_lagged_correlation_and_the_lorenz_curve(recaudit_bin, db_url, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=600, movies=150, days=3, seed=1))
    assert run_cli(recaudit_bin, "ingest", "--db", db_url, str(data)).returncode == 0
    (tmp_path / "recaudit.toml").write_text('[feedback]\ncorrelation_window = "1d"\n')
    done = run_cli(recaudit_bin, "audit", "--db", db_url, "--config", str(tmp_path / "recaudit.toml"),
                   "--only", "feedback", "--since", "2024-01-02", "--out", str(tmp_path / "r"), "--json")
    assert done.returncode == 0, done.stderr
    audit = json.loads(done.stdout)["audits"]["feedback"]
    m = audit["metrics"]
    assert 0 < m["feedback.gini"] < 1 and m["feedback.catalogue"] == 150
    assert m["feedback.gini.sex.F"] is not None and m["feedback.top10_share.age.young_adult"] is not None
    assert m["feedback.rating_rec_corr_lagged.pearson"] is not None  # day 1 before day 2
    assert m["feedback.rating_rec_corr.n"] > 0 and m["feedback.arp"] > 0
    assert len(audit["details"]["lorenz"]) == feedback.LORENZ_POINTS


def test_a_window_without_recommendations_is_insufficient_data(store, tmp_path):
    (tmp_path / "e.log").write_text("2024-01-01T00:00:00,1,GET /rate/a+2001=4\n")
    ingest(store, [str(tmp_path / "e.log")])
    result = runs.run(store, "2024-01-01", "2024-01-02", configuration.load(), ["feedback"], tmp_path)
    assert result.results["feedback"].status == "insufficient_data"


# -- over frames ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three simulated days, and the frames a notebook would read from the same files."""
    from recaudit.recsys import events, formats

    out = tmp_path_factory.mktemp("frames")
    simulate(out, Config(users=300, movies=100, days=3, seed=4))
    log = events.parse_file(out / "events.log")
    return out, {"recommendations": log.recommendations, "items": log.items, "ratings": log.ratings,
                 "watches": log.watches, "users": formats.read_users_csv(out / "users.csv")[0],
                 "movies": formats.read_movies_csv(out / "movies.csv")[0]}


@pytest.mark.parametrize("since, until", [("2024-01-02", "2024-01-03"), ("2024-01-01 07:30", "2024-01-02 19:10")])
def test_feedback_over_frames_equals_the_audit_over_the_same_data_in_the_store(store, world, tmp_path, since, until):
    out, frames = world
    ingest(store, [str(out)])
    config = configuration.load()
    config["feedback"]["correlation_window"] = "1d"  # the lagged correlation reads the day before
    stored = runs.run(store, since, until, config, ["feedback"], tmp_path).results["feedback"]
    framed = feedback.feedback(**frames, since=since, until=until, config={"feedback": {"correlation_window": "1d"}})
    assert stored.status == framed.status == "ok"
    assert framed.metrics.keys() == stored.metrics.keys()
    for key, value in stored.metrics.items():
        assert framed.metrics[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert [f.to_dict() for f in framed.findings] == [f.to_dict() for f in stored.findings]


def test_feedback_over_frames_fits_the_trend_over_the_history_it_is_given(world):
    _, frames = world
    days = [pd.Timestamp("2024-01-01") + pd.Timedelta(days=d) for d in range(3)]
    config = {"feedback": {"min_runs": 2}}
    earlier = feedback.feedback(**frames, since=days[0], until=days[1], config=config)
    alone = feedback.feedback(**frames, since=days[1], until=days[2], config=config)
    assert alone.metrics["feedback.trend_runs"] == 1 and alone.metrics["feedback.gini_slope"] is None
    assert alone.details["trend_note"].startswith("too few runs") and not alone.findings
    later = feedback.feedback(**frames, since=days[1], until=days[2], history=[earlier.metrics], config=config)
    assert later.metrics["feedback.trend_runs"] == 2 and "trend_note" not in later.details
    assert later.metrics["feedback.gini_slope"] == pytest.approx(
        later.metrics["feedback.gini"] - earlier.metrics["feedback.gini"])

"""Online quality: success rate and MRR on hand-written logs with known answers, availability
and latency against numpy, the server comparison against scipy, and no alarm from a handful of
unlucky requests."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recaudit.audits import config as configuration
from recaudit.audits import online
from recaudit.audits import run as runs
from recaudit.audits.ingest import ingest
from recaudit.recsys.simulate import Config, simulate
from recaudit.reports import html
from support import run_cli

MOVIES = [f"m{i}+2001" for i in range(20)]


def rec(time, user, server="a", status=200, latency=100, movies=MOVIES):
    result = ", ".join(movies) if status == 200 else "java.util.concurrent.TimeoutException: timeout after 800 ms"
    return f"{time},{user},recommendation request {server}, status {status}, result: {result}, {latency} ms"


def watch(time, user, movie, minute=0):
    return f"{time},{user},GET /data/m/{movie}/{minute}.mpg"


LATER = watch("2024-01-01T23:59:00", 99999, "later+2001")  # the log goes on: every request had its 15 minutes


def audit(store, tmp_path, lines, config=None):
    (tmp_path / "e.log").write_text("\n".join(sorted([*lines, LATER])) + "\n")
    ingest(store, [str(tmp_path / "e.log")])
    return runs.run(store, "2024-01-01", "2024-01-02", config or configuration.load(), ["online"], tmp_path
                    ).results["online"]


def test_success_and_mrr_of_hand_written_logs_with_the_edge_cases(store, tmp_path):
    lines = [
        rec("2024-01-01T10:00:00.000000", 1),
        watch("2024-01-01T10:15:00", 1, MOVIES[4]),  # exactly 15 minutes later: a success at rank 5
        rec("2024-01-01T11:00:00.000000", 2),
        watch("2024-01-01T10:59:00", 2, MOVIES[0]),  # before the recommendation: not a success
        watch("2024-01-01T11:15:01", 2, MOVIES[0]),  # 15 minutes and a second: too late
        rec("2024-01-01T12:00:00.000000", 3),  # two recommendations to one user, one watch after both
        rec("2024-01-01T12:05:00.000000", 3),
        watch("2024-01-01T12:10:00", 3, MOVIES[1]),  # rank 2 of both
        rec("2024-01-01T13:00:00.000000", 4),
        watch("2024-01-01T13:01:00", 4, "elsewhere+1999"),  # watched, but nothing recommended
        rec("2024-01-01T14:00:00.000000", 5, status=0, latency=815),  # failed: counts for availability only
    ]
    result = audit(store, tmp_path, lines)
    m = result.metrics
    assert m["online.requests"] == 6 and m["online.availability"] == pytest.approx(5 / 6)
    assert m["online.pending"] == 0 and result.details["judged"]["requests"] == 5
    assert m["online.success_rate"] == pytest.approx(3 / 5)
    assert m["online.mrr"] == pytest.approx((1 / 5 + 0 + 1 / 2 + 1 / 2 + 0) / 5)


def test_requests_whose_15_minutes_have_not_passed_yet_are_not_judged(store, tmp_path):
    lines = [rec("2024-01-01T10:00:00.000000", 1), rec("2024-01-01T10:50:00.000000", 2),
             watch("2024-01-01T10:55:00", 2, MOVIES[3]),  # request 2 is followed, but its span is not over
             watch("2024-01-01T11:00:00", 3, "elsewhere+1999")]  # the latest event: 10 minutes after request 2
    (tmp_path / "e.log").write_text("\n".join(lines) + "\n")
    ingest(store, [str(tmp_path / "e.log")])
    result = runs.run(store, "2024-01-01", "2024-01-02", configuration.load(), ["online"], tmp_path).results["online"]
    assert result.metrics["online.requests"] == 2 and result.metrics["online.pending"] == 1
    # not in the window's last 15 minutes: pending because the data stop before its horizon ends
    assert result.details["pending"] == {"requests": 1, "since": "2024-01-01T10:45:00", "until": "2024-01-02T00:00:00",
                                         "next_run": 0, "beyond_data": 1}
    assert result.metrics["online.success_rate"] == 0.0  # judged on request 1 alone


def test_the_first_watched_movie_gives_the_reciprocal_rank():
    t = pd.Timestamp("2024-01-01 10:00")
    recs = pd.DataFrame({"source_id": 1, "line": [1], "time": [t], "user_id": [1], "server": "a", "status": 200,
                         "n_items": 3})
    items = pd.DataFrame({"source_id": 1, "line": 1, "rank": [1, 2, 3], "movie_id": ["a", "b", "c"]})
    watches = pd.DataFrame({"user_id": [1, 1], "movie_id": ["c", "a"],
                            "time": [t + pd.Timedelta("2min"), t + pd.Timedelta("9min")]})
    assert online.follow_ups(recs, items, watches)["first_rank"].tolist() == [3]


def test_availability_and_latency_percentiles_equal_numpy(store, tmp_path):
    rng = np.random.default_rng(0)
    latency = rng.integers(20, 900, 300)
    lines = [rec(f"2024-01-01T10:{i // 60:02d}:{i % 60:02d}.000000", i, latency=int(v)) for i, v in enumerate(latency)]
    m = audit(store, tmp_path, lines).metrics
    for q in (50, 95, 99):
        assert m[f"online.latency_p{q}"] == pytest.approx(np.percentile(latency, q))
    assert m["online.availability"] == 1.0 and m["online.success_rate"] == 0.0 and m["online.mrr"] == 0.0


def test_two_proportion_test_equals_scipys_chi_square():
    table = np.array([[120, 880], [90, 910]])
    expected = stats.chi2_contingency(table, correction=False).pvalue
    assert online.two_proportions(120, 1000, 90, 1000) == pytest.approx(expected)


def ab_log(success_a, success_b, n=400):
    lines = []
    for server, successes, base in (("a", success_a, 0), ("b", success_b, n)):
        for i in range(n):
            user, minute = base + i + 1, i % 600
            time = f"2024-01-01T{minute // 60:02d}:{minute % 60:02d}"
            lines.append(rec(time + ":00.000000", user, server=server))
            if i < successes:
                lines.append(watch(time + ":30", user, MOVIES[0]))
    return sorted(lines)


def test_a_server_that_succeeds_less_often_beyond_chance_is_a_finding(store, tmp_path):
    result = audit(store, tmp_path, ab_log(240, 160))
    m = result.metrics
    assert m["online.success_rate.server.a"] == pytest.approx(0.6) and m["online.success_rate.server.b"] == 0.4
    assert m["online.success_rate_p.server"] == pytest.approx(online.two_proportions(240, 400, 160, 400))
    [finding] = [f for f in result.findings if f.kind == "server_difference"]
    assert "server b succeeds less often than server a: 40.0% of 400" in finding.message


def test_servers_that_differ_by_chance_raise_nothing(store, tmp_path):
    result = audit(store, tmp_path, ab_log(200, 190))
    assert not [f for f in result.findings if f.kind == "server_difference"]


def test_availability_alarm_needs_more_than_a_few_unlucky_requests():
    settings = configuration.load()["online"]
    few = {"online.availability": 213 / 220, "online.requests": 220, "online.latency_p99": 200.0}
    many = {"online.availability": 0.9, "online.requests": 5000, "online.latency_p99": 200.0}
    assert online._findings(few, [], settings) == []
    [finding] = online._findings(many, [], settings)
    assert finding.kind == "availability" and "only 90.0% of 5,000" in finding.message
    assert online.wilson_upper(213, 220, 0.01) > 0.98 > online.wilson_upper(4500, 5000, 0.01)


def test_cli_online_audit_on_the_simulator_reports_per_server(recaudit_bin, db_url, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=600, movies=150, days=2, seed=1))
    assert run_cli(recaudit_bin, "ingest", "--db", db_url, str(data)).returncode == 0
    done = run_cli(recaudit_bin, "audit", "--db", db_url, "--only", "online", "--since", "2024-01-01",
                   "--until", "2024-01-03", "--out", str(tmp_path / "r"), "--json")
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)["audits"]["online"]["metrics"]
    assert 0.3 < m["online.success_rate"] < 0.9 and 0.95 < m["online.availability"] < 1
    assert {"online.success_rate.server.recs-a.example.org:8082", "online.success_rate.server.recs-b.example.org:8082",
            "online.success_rate_diff.server", "online.success_rate_p.server"} <= set(m)


@pytest.mark.parametrize("horizon", ["15min", "40min"])
def test_watch_spans_give_the_same_follow_ups_as_every_watch(store, tmp_path, horizon):
    data = tmp_path / "data"
    simulate(data, Config(users=400, movies=100, days=2, seed=2))
    ingest(store, [str(data)])
    since, until = pd.Timestamp("2024-01-01 05:00"), pd.Timestamp("2024-01-02 03:00")
    recs, items = store.read("recommendations", since, until), store.read("items", since, until)
    every = store.read("watches", since, until + pd.Timedelta(horizon))
    followed = online.followed_items(store, since, until, pd.Timedelta(horizon))
    assert len(followed) < len(items) / 2  # only movies the user watched come back
    exact = online.follow_ups(recs, items, every, horizon)
    pd.testing.assert_frame_equal(exact, online.follow_ups_from_spans(recs, followed, horizon))
    # The window ending at `until` + horizon judges exactly the requests of [since, until).
    later = pd.Timedelta(horizon)
    pd.testing.assert_frame_equal(exact, online.followed_requests(store, since + later, until + later, horizon))
    assert 0.3 < exact.success.mean() < 0.9


def test_a_horizon_shorter_than_a_span_reads_every_watch(store, tmp_path):
    lines = [rec("2024-01-01T10:00:00.000000", 1), watch("2024-01-01T10:04:00", 1, MOVIES[2]),
             rec("2024-01-01T11:00:00.000000", 2), watch("2024-01-01T11:06:00", 2, MOVIES[2])]
    (tmp_path / "e.log").write_text("\n".join(lines) + "\n")
    ingest(store, [str(tmp_path / "e.log")])
    out = online.followed_requests(store, pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02"), "5min")
    assert out.success.tolist() == [True, False]


# -- over frames ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two simulated days with two servers, and the frames a notebook would parse from its log."""
    from recaudit.recsys import events

    out = tmp_path_factory.mktemp("frames")
    simulate(out, Config(users=300, movies=100, days=2, seed=6))
    log = events.parse_file(out / "events.log")
    return out, {"recommendations": log.recommendations, "items": log.items, "watches": log.watches}


@pytest.mark.parametrize("since, until, horizon", [("2024-01-01", "2024-01-02", "15min"),
                                                   ("2024-01-01 03:20", "2024-01-01 21:50", "40min"),
                                                   ("2024-01-01", "2024-01-02", "5min")])
def test_online_over_frames_equals_the_audit_over_the_same_data_in_the_store(store, world, tmp_path, since, until,
                                                                            horizon):
    out, frames = world
    ingest(store, [str(out)])
    config = configuration.load()
    config["online"]["success_horizon"] = horizon
    stored = runs.run(store, since, until, config, ["online"], tmp_path).results["online"]
    framed = online.online(**frames, since=since, until=until, config={"online": {"success_horizon": horizon}})
    assert stored.status == framed.status and stored.status in ("ok", "findings")
    assert framed.metrics.keys() == stored.metrics.keys()
    for key, value in stored.metrics.items():
        assert framed.metrics[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert [f.to_dict() for f in framed.findings] == [f.to_dict() for f in stored.findings]
    assert framed.details == stored.details


def test_online_over_frames_waits_for_the_horizon_of_the_requests_the_frames_end_within(world):
    _, frames = world
    recs = frames["recommendations"]
    latest = recs["time"].max()  # the log ends with a request: the last quarter hour's are not judged yet
    watches = frames["watches"][frames["watches"]["time"] <= latest]
    result = online.online(recs, frames["items"], watches)
    answered = (recs["status"] == 200) & (recs["n_items"] > 0)
    waiting = (recs["time"] + pd.Timedelta("15min") >= latest) & answered
    assert result.metrics["online.pending"] == result.details["pending"]["requests"] == int(waiting.sum()) > 0
    assert result.details["judged"]["requests"] == int((answered & ~waiting).sum())


# -- which window judges a request ------------------------------------------------------------
# Window 1 is 10:00-11:00 and window 2 11:00-12:00. The first batch of events ends with the first
# event of 11:00, as the scheduler audits an hour once the next has begun; the second brings the
# rest. Each comment gives the request's outcome and the window that judges it.

FIRST = [
    rec("2024-01-01T10:10:00.000000", 1), watch("2024-01-01T10:12:00", 1, MOVIES[0]),  # success, rank 1: window 1
    rec("2024-01-01T10:20:00.000000", 2),  # failure: window 1
    rec("2024-01-01T10:40:00.000000", 3), watch("2024-01-01T10:50:00", 3, MOVIES[2]),  # success, rank 3: window 1
    rec("2024-01-01T10:50:00.000000", 4),  # success, rank 2, by a watch of the second batch: window 2
    rec("2024-01-01T10:55:00.000000", 5),  # failure: window 2
    rec("2024-01-01T10:58:00.000000", 6, status=0, latency=815),  # failed: window 1's availability only
    watch("2024-01-01T11:00:00", 99, "elsewhere+1999"),
]
SECOND = [
    watch("2024-01-01T11:03:00", 4, MOVIES[1]),
    rec("2024-01-01T11:10:00.000000", 7), watch("2024-01-01T11:11:00", 7, MOVIES[0]),  # success, rank 1: window 2
    rec("2024-01-01T11:50:00.000000", 8),  # failure: window 3, which has no request of its own
    watch("2024-01-01T12:30:00", 98, "elsewhere+1999"),
]
HOURS = ("2024-01-01T10:00", "2024-01-01T11:00", "2024-01-01T12:00", "2024-01-01T13:00")


def add(store, tmp_path, name, lines):
    (tmp_path / name).write_text("\n".join(sorted(lines)) + "\n")
    ingest(store, [str(tmp_path / name)])


def audit_window(store, tmp_path, since, until):
    return runs.run(store, since, until, configuration.load(), ["online"], tmp_path / "out").results["online"]


def successes(result):
    return sum(s["successes"] for s in result.details["servers"])


def test_the_requests_of_a_windows_last_15_minutes_are_pending_and_not_judged(store, tmp_path):
    add(store, tmp_path, "first.log", FIRST)
    result = audit_window(store, tmp_path, *HOURS[:2])
    m = result.metrics
    assert m["online.requests"] == 6 and m["online.availability"] == pytest.approx(5 / 6)
    assert result.details["judged"] == {"requests": 3, "since": "2024-01-01T09:45:00", "until": "2024-01-01T10:45:00"}
    assert m["online.success_rate"] == pytest.approx(2 / 3) and m["online.mrr"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert m["online.pending"] == 2
    assert result.details["pending"] == {"requests": 2, "since": "2024-01-01T10:45:00", "until": "2024-01-01T11:00:00",
                                         "next_run": 2, "beyond_data": 0}
    assert ("Success judged for the 3 requests made from 2024-01-01 09:45:00 to 2024-01-01 10:45:00, whose 15min "
            "horizon ended in this window; 2 requests made in its last 15min are pending, for the next run.</p>"
            ) in html.render_audit("online", result.to_dict())


def test_the_next_window_judges_the_requests_left_pending_by_the_one_before(store, tmp_path):
    add(store, tmp_path, "first.log", FIRST)
    add(store, tmp_path, "second.log", SECOND)
    result = audit_window(store, tmp_path, *HOURS[1:3])
    m = result.metrics
    assert m["online.requests"] == 2 and m["online.availability"] == 1.0  # its own requests: 11:10 and 11:50
    # judged: 10:50 and 10:55 of window 1, and 11:10
    assert result.details["judged"] == {"requests": 3, "since": "2024-01-01T10:45:00", "until": "2024-01-01T11:45:00"}
    assert m["online.success_rate"] == pytest.approx(2 / 3) and m["online.mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert m["online.pending"] == 1 and result.details["pending"]["next_run"] == 1  # 11:50
    assert result.details["servers"][0]["answered"] == 3


def test_a_window_audited_again_after_the_next_windows_data_arrived_gives_the_same_figures(store, tmp_path):
    add(store, tmp_path, "first.log", FIRST)
    before = audit_window(store, tmp_path, *HOURS[:2])
    add(store, tmp_path, "second.log", SECOND)  # request 4's follow-up among them, and 12:30 as the latest event
    after = audit_window(store, tmp_path, *HOURS[:2])
    assert after.metrics == before.metrics and after.details == before.details
    assert after.metrics["online.success_rate"] == pytest.approx(2 / 3)


def test_consecutive_windows_judge_every_request_exactly_once(store, tmp_path):
    add(store, tmp_path, "first.log", FIRST)
    add(store, tmp_path, "second.log", SECOND)
    results = [audit_window(store, tmp_path, since, until) for since, until in zip(HOURS, HOURS[1:])]
    # seven answered requests, every horizon passed by 12:30; four succeeded
    assert [r.details["judged"]["requests"] for r in results] == [3, 3, 1]
    assert [successes(r) for r in results] == [2, 2, 0]
    last = results[-1]
    assert last.metrics["online.requests"] == 0 and last.metrics["online.availability"] is None
    assert last.metrics["online.pending"] == 0


def test_over_a_simulated_service_windows_in_a_row_judge_each_request_once_as_one_audit_of_all(world):
    _, frames = world
    recs, items, watches = frames["recommendations"], frames["items"], frames["watches"]
    ends = pd.date_range("2024-01-01", "2024-01-03", freq="h")
    audited = {since: online.online(**frames, since=since, until=until) for since, until in zip(ends, ends[1:])}
    audited = {since: r for since, r in audited.items() if r.status != "insufficient_data"}  # a quiet night hour
    results = list(audited.values())
    latest = max(recs["time"].max(), watches["time"].max())
    due = recs[recs["time"] + pd.Timedelta("15min") < min(latest, ends[-1])]
    every = online.follow_ups(due, items, watches)
    judged = [r.details["judged"]["requests"] for r in results]
    assert sum(judged) == len(every) > 50
    assert sum(r.details["pending"]["next_run"] for r in results) > 5  # carried over to the next hour
    assert sum(successes(r) for r in results) == int(every["success"].sum())
    for since, r in audited.items():
        assert r.details["judged"]["since"] == (since - pd.Timedelta("15min")).isoformat()


def test_a_window_whose_data_stopped_early_judges_the_rest_when_audited_again_with_more(store, tmp_path):
    """The one case a window's figures change when it is audited again: its events had stopped
    before its end, so the requests whose horizon ended after them had not been judged."""
    add(store, tmp_path, "early.log", [rec("2024-01-01T10:05:00.000000", 1), rec("2024-01-01T10:20:00.000000", 2),
                                       watch("2024-01-01T10:30:00", 99, "elsewhere+1999")])
    early = audit_window(store, tmp_path, *HOURS[:2])
    assert early.details["judged"] == {"requests": 1, "since": "2024-01-01T09:45:00", "until": "2024-01-01T10:15:00"}
    assert early.metrics["online.success_rate"] == 0.0  # 10:05, unwatched
    assert early.details["pending"] == {"requests": 1, "since": "2024-01-01T10:15:00", "until": "2024-01-01T11:00:00",
                                        "next_run": 0, "beyond_data": 1}  # 10:20, whose horizon ends at 10:35
    assert ("0 requests made in its last 15min are pending, for the next run. 1 request made from 2024-01-01 10:15:00 "
            "on is pending too, as the events stop before its horizon ended: an audit of this window with more events "
            "will judge it.</p>") in html.render_audit("online", early.to_dict())
    add(store, tmp_path, "rest.log", [watch("2024-01-01T10:33:00", 2, MOVIES[0]), rec("2024-01-01T10:50:00.000000", 3),
                                      watch("2024-01-01T11:30:00", 98, "elsewhere+1999")])
    complete = audit_window(store, tmp_path, *HOURS[:2])
    assert complete.details["judged"]["requests"] == 2 and complete.metrics["online.success_rate"] == 0.5
    assert complete.details["pending"] == {"requests": 1, "since": "2024-01-01T10:45:00",
                                           "until": "2024-01-01T11:00:00", "next_run": 1, "beyond_data": 0}
    assert audit_window(store, tmp_path, *HOURS[:2]).metrics == complete.metrics  # complete now: it stays

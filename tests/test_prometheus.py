"""/metrics by Prometheus's conventions: each metric key lands in the family of its measure with
its labels, whatever its groups hold; the job counters only grow; and every query of the shipped
Grafana dashboard names a metric the demo's service exposes."""

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from recaudit.audits.config import JOBS
from recaudit.scheduler import prometheus, web
from support import free_port, run_cli

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "recaudit.json"
HOSTILE = 'F "quoted" \\ back\nslash</script><b>é 女性 \U0001f600'


def families(body: bytes) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def record(store, metrics: dict, until="2024-01-02") -> int:
    """An audit run that recorded `metrics`, as the audits' run does."""
    run_id = store.start_run("2024-01-01", until, ["fairness"])
    doc = {"run_id": run_id, "status": "ok", "window": {"since": "2024-01-01", "until": until},
           "audits": {"fairness": {"status": "ok", "metrics": metrics, "findings": [], "details": {}, "error": None,
                                   "seconds": 0.1}}}
    store.finish_run(run_id, doc, "x")
    return run_id


@pytest.mark.parametrize("key, family, labels, scale", [
    ("fairness.rmse.sex.F", "recaudit_fairness_rmse", {"dimension": "sex", "group": "F"}, 1),
    ("fairness.rmse", "recaudit_fairness_rmse", {}, 1),
    ("fairness.rmse_gap.sex", "recaudit_fairness_rmse_gap", {"dimension": "sex"}, 1),
    ("exposure.ratio.genre.Film-Noir", "recaudit_exposure_ratio", {"dimension": "genre", "group": "Film-Noir"}, 1),
    ("drift.rating.score", "recaudit_drift_score", {"signal": "rating"}, 1),
    ("drift.share_drifted", "recaudit_drift_share_drifted", {}, 1),
    ("feedback.gini", "recaudit_feedback_gini", {}, 1),
    ("feedback.rating_rec_corr.pearson", "recaudit_feedback_rating_rec_corr_pearson", {}, 1),
    ("online.latency_p95", "recaudit_online_latency_p95_seconds", {}, 1e-3),
    ("online.latency_p95.server.recs-a.example.org:8082", "recaudit_online_latency_p95_seconds",
     {"dimension": "server", "group": "recs-a.example.org:8082"}, 1e-3),
    ("online.requests", "recaudit_online_requests", {}, 1),
    ("validation.unexpected_count.ratings.time_in_window", "recaudit_validation_unexpected_rows",
     {"dataset": "ratings", "expectation": "time_in_window"}, 1),
    ("validation.unexpected_percent.ratings.time_in_window", "recaudit_validation_unexpected_ratio",
     {"dataset": "ratings", "expectation": "time_in_window"}, 1e-2),
    ("validation.quarantined.watches", "recaudit_validation_quarantined", {"dataset": "watches"}, 1),
    ("future.wait_ms", "recaudit_future_wait_seconds", {}, 1e-3),
    ("future.rows_total", "recaudit_future_rows_total_value", {}, 1),
    ("nodots", "recaudit_metric", {"key": "nodots"}, 1),
])
def test_a_metric_key_names_the_family_of_its_measure_with_its_parts_as_labels(key, family, labels, scale):
    s = prometheus.series(key)
    assert (s.family, dict(s.labels), s.scale) == (family, labels, pytest.approx(scale))


def test_every_key_is_exposed_once_whatever_its_groups_hold_and_the_exposition_still_parses(store):
    metrics = {f"fairness.rmse.sex.{HOSTILE}": 1.5, f"fairness.rmse_gap.{HOSTILE}": 0.4, "fairness.rmse.sex.F": 1.1,
               "fairness.rmse.sex.X": None, "fairness.rmse": 1.2, f"{HOSTILE}.x.y": 2.0, "nodots": 3.0,
               "database.up": 4.0,  # the name of one of the service's own families: the key names itself
               "fairness.rmse-gap.sex": 5.0, "fairness.rmse_gap.sex": 6.0}  # one series after sanitising
    record(store, metrics)
    metrics_page = web.Metrics(store)
    metrics_page.refresh(active=True)
    found = families(metrics_page.body)
    rmse = {tuple(sorted(s.labels.items())): s.value for s in found["recaudit_fairness_rmse"].samples}
    assert rmse == {(("dimension", "sex"), ("group", HOSTILE)): 1.5, (("dimension", "sex"), ("group", "F")): 1.1,
                    (): 1.2}  # the empty value is not exposed
    assert {s.labels["dimension"]: s.value for s in found["recaudit_fairness_rmse_gap"].samples} == {HOSTILE: 0.4,
                                                                                                      "sex": 6.0}
    generic = {s.labels["key"]: s.value for s in found["recaudit_metric"].samples}
    assert generic == {"nodots": 3.0, "database.up": 4.0, "fairness.rmse-gap.sex": 5.0}
    assert [s.value for s in found["recaudit_database_up"].samples] == [1.0]
    odd = [f for name, f in found.items() if name.endswith("_x")]  # the hostile audit name, sanitised
    assert len(odd) == 1 and re.fullmatch(r"recaudit_[a-zA-Z0-9_]+", odd[0].name)
    assert odd[0].samples[0].labels == {"dimension": "y"} and odd[0].samples[0].value == 2.0
    assert all(f.documentation for f in found.values())  # help text for every family
    window = {s.labels["audit"]: s.value for s in found["recaudit_audit_window_end_timestamp_seconds"].samples}
    assert window["fairness"] == pd.Timestamp("2024-01-02", tz="UTC").timestamp()


def job_samples(body: bytes) -> dict:
    found = families(body)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for name in
            ("recaudit_job_runs", "recaudit_jobs_running", "recaudit_job_duration_seconds",
             "recaudit_job_last_success_timestamp_seconds") for s in found[name].samples}


def test_job_counters_never_decrease_across_a_jobs_start_and_end(store):
    metrics = web.Metrics(store)
    start = pd.Timestamp("2024-03-01 12:00:00")
    done = store.start_job("report", start)
    store.finish_job(done, "ok", "{}", start + pd.Timedelta(seconds=3))
    store.finish_job(store.start_job("report", start), "failed", "boom", start + pd.Timedelta(seconds=0.2))
    metrics.refresh(active=True)
    before = job_samples(metrics.body)
    running = store.start_job("report")
    metrics.refresh(active=True)
    during = job_samples(metrics.body)
    store.finish_job(running, "ok", "{}")
    metrics.refresh(active=True)
    after = job_samples(metrics.body)

    counters = [k for k in before if k[0] == "recaudit_job_runs_total" or k[0].startswith(
        "recaudit_job_duration_seconds_")]
    assert counters and all(before[k] <= during[k] <= after[k] for k in counters)
    runs = ("recaudit_job_runs_total", (("job", "report"), ("outcome", "ok")))
    assert (before[runs], during[runs], after[runs]) == (1, 1, 2)
    assert ("recaudit_job_runs_total", (("job", "report"), ("outcome", "running"))) not in during
    gauge = ("recaudit_jobs_running", (("job", "report"),))
    assert (before[gauge], during[gauge], after[gauge]) == (0, 1, 0)
    bucket = "recaudit_job_duration_seconds_bucket"
    assert before[(bucket, (("job", "report"), ("le", "2.5")))] == 1  # the failed run's 0.2 s, not the 3 s one
    assert before[(bucket, (("job", "report"), ("le", "5.0")))] == 2
    assert before[("recaudit_job_duration_seconds_sum", (("job", "report"),))] == pytest.approx(3.2)
    success = ("recaudit_job_last_success_timestamp_seconds", (("job", "report"),))
    assert before[success] == (start + pd.Timedelta(seconds=3)).tz_localize("UTC").timestamp() < after[success]


# -- the Grafana dashboard against the demo's service ------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers but functions and aggregations
    (followed by a parenthesis), keywords, label names (inside {…} and the parentheses of by,
    without, on, ignoring, group_left, group_right), durations ([…]) and Grafana's variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\{[^}]*\}|\$\w+", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if not re.match(r"\s*\(", expr[m.end():]) and m.group().lower() not in PROMQL_WORDS:
            names.add(m.group())
    return names


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, its variables' label_values() included."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.fullmatch(r"label_values\((.+),\s*\w+\)", query).group(1))
    return exprs


def test_promql_names_are_told_from_functions_labels_and_variables():
    expr = ('histogram_quantile(0.95, sum by (job, le) (rate(recaudit_job_duration_seconds_bucket{job=~"a|b"}'
            '[$__rate_interval]))) / on (job) group_left (x) max without (kind) (time() - recaudit_x_seconds) or '
            'vector(1e3) > bool 2')
    assert metric_names(expr) == {"recaudit_job_duration_seconds_bucket", "recaudit_x_seconds"}


def test_every_query_of_the_grafana_dashboard_names_a_metric_the_demos_service_exposes(recaudit_bin, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and all(p["datasource"]["uid"] == "${datasource}"
                                                    for p in dashboard["panels"])
    wanted = {name for expr in dashboard_queries() for name in metric_names(expr)}
    assert {"recaudit_alerts_open", "recaudit_job_duration_seconds_bucket",
            "recaudit_last_event_timestamp_seconds"} <= wanted

    demo = tmp_path / "demo"
    done = run_cli(recaudit_bin, "demo", "--quick", "--out", str(demo))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    config = tmp_path / "recaudit.toml"  # the alerts job alone, due at once: runs to time
    config.write_text("\n".join([
        "[audit]", f'out = "{tmp_path / "site"}"', "[schedule]", "watch = []", f'models = "{tmp_path / "models"}"',
        *(line for name in JOBS for line in
          (f"[schedule.jobs.{name}]", f"enabled = {str(name == 'alerts').lower()}", 'when = "1h"'))]) + "\n")
    port, log = free_port(), tmp_path / "service.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([recaudit_bin, "schedule", "--db", str(demo / "recaudit.db"), "--config", str(config),
                                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, exposed = time.monotonic() + 60, set()
        while "recaudit_job_duration_seconds_bucket" not in exposed:  # the job's run has finished and is shown
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
            answer = get_metrics(port)
            if answer is not None:
                exposed = {s.name for f in families(answer).values() for s in f.samples}
        assert wanted - exposed == set(), f"queried but not exposed: {sorted(wanted - exposed)}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def get_metrics(port: int) -> bytes | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read()
    except OSError:
        return None

"""The service: jobs persist across restarts without running twice, --once runs only what is
due, a failing job is recorded and the rest go on, SIGTERM stops it cleanly, /metrics parses,
and the demo runs end to end with a dashboard a browser can open."""

import json
import signal
import socket
import subprocess
import time
import urllib.request

import pandas as pd
import pytest

from audits import config as configuration
from audits.ingest import ingest
from conftest import open_page, run_cli
from recsys.simulate import Config, simulate
from scheduler import service, web


def only(*names, **when):
    """A configuration whose enabled jobs are `names`, each every hour unless `when` says."""
    cfg = configuration.load()
    for name, spec in cfg["schedule"]["jobs"].items():
        spec.update(enabled=name in names, when=when.get(name, "1h"))
    return cfg


def write_config(tmp_path, *names, watch=None, **when) -> str:
    lines = ["[audit]", f'out = "{tmp_path / "site"}"', "[schedule]",
             f"watch = {json.dumps([str(w) for w in watch or []])}", f'models = "{tmp_path / "models"}"']
    for name in service.JOBS:
        lines += [f"[schedule.jobs.{name}]", f"enabled = {str(name in names).lower()}",
                  f'when = "{when.get(name, "1h")}"']
    path = tmp_path / "recaudit.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def job_runs(store) -> pd.DataFrame:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return pd.DataFrame(conn.execute(text("SELECT job, status, detail FROM job_runs ORDER BY id")).all(),
                            columns=["job", "status", "detail"])


def test_jobs_persist_across_a_restart_and_a_missed_schedule_runs_once(store, tmp_path):
    config_path = write_config(tmp_path, "report", "alerts", report="10min")
    cfg = configuration.load(config_path)
    first = service.build(store.url, config_path, cfg)
    assert sorted(j.id for j in first.get_jobs()) == ["alerts", "report"]
    missed = pd.Timestamp.now("UTC") - pd.Timedelta(minutes=35)  # three runs of "report" missed while down
    first.get_job("report").modify(next_run_time=missed.to_pydatetime())
    first.get_job("alerts").modify(next_run_time=(pd.Timestamp.now("UTC") + pd.Timedelta(hours=1)).to_pydatetime())
    service.close(first)

    again = service.build(store.url, config_path, cfg)  # the restart: jobs come back from the database
    assert again.get_job("report").next_run_time == missed.to_pydatetime()
    assert again.get_job("report").kwargs == {"name": "report", "db": store.url, "config_path": config_path}
    again.resume()
    deadline = time.time() + 30
    while len(job_runs(store)) < 1 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # time for any duplicate run to show up
    again.shutdown(wait=True)
    runs = job_runs(store)
    assert runs.job.tolist() == ["report"] and runs.status.tolist() == ["ok"]  # coalesced: once, not three times


def test_once_runs_the_jobs_that_are_due_and_nothing_else(recaudit_bin, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=200, movies=80, days=2, seed=1))
    config_path = write_config(tmp_path, "ingest", "report", "alerts", watch=[data])
    db = str(tmp_path / "s.db")
    first = run_cli(recaudit_bin, "schedule", "--once", "--db", db, "--config", config_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().split() == ["ingest:", "ok", "report:", "ok", "alerts:", "ok"]  # new jobs: all due
    second = run_cli(recaudit_bin, "schedule", "--once", "--db", db, "--config", config_path)
    assert second.returncode == 0 and b"no job was due" in second.stdout

    from audits.store import Store

    store = Store(db)
    scheduler = service.build(store.url, config_path, configuration.load(config_path))
    scheduler.get_job("alerts").modify(next_run_time=(pd.Timestamp.now("UTC") - pd.Timedelta(minutes=1)).to_pydatetime())
    service.close(scheduler)
    third = run_cli(recaudit_bin, "schedule", "--once", "--db", db, "--config", config_path)
    assert third.stdout.decode().split() == ["alerts:", "ok"]
    assert job_runs(store).job.tolist() == ["ingest", "report", "alerts", "alerts"]
    assert store.count("watches") > 0


def test_a_failing_job_is_recorded_and_the_others_still_run(recaudit_bin, tmp_path):
    config_path = write_config(tmp_path, "ingest", "report", watch=[tmp_path / "no-such-log.log"])
    db = str(tmp_path / "f.db")
    done = run_cli(recaudit_bin, "schedule", "--once", "--db", db, "--config", config_path)
    assert done.returncode == 1 and done.stdout.decode().split() == ["ingest:", "failed", "report:", "ok"]
    from audits.store import Store

    runs = job_runs(Store(db))
    assert runs.status.tolist() == ["failed", "ok"] and "no such file" in runs.detail[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_service_serves_metrics_and_stops_cleanly_on_sigterm(recaudit_bin, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from audits import run as runs
    from audits.store import Store

    data = tmp_path / "data"
    simulate(data, Config(users=300, movies=120, days=2, seed=7, inject=("corrupt",)))
    db = str(tmp_path / "m.db")
    store = Store(db)
    ingest(store, [str(data)])
    last = runs.run(store, "2024-01-02", "2024-01-03", configuration.load(), ["validation", "online"], tmp_path / "r")
    config_path = write_config(tmp_path, "report", "alerts", alerts="2s")
    port = free_port()
    proc = subprocess.Popen([recaudit_bin, "schedule", "--db", db, "--config", config_path, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert body is not None, proc.stderr.read1().decode() if proc.poll() is not None else "no answer"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert json.load(r)["status"] == "ok"
        families = {f.name: f for f in text_string_to_metric_families(body)}
        gauges = {s.labels["key"]: s.value for s in families["recaudit_metric"].samples}
        expected = {k: v for a in last.results.values() for k, v in a.to_dict()["metrics"].items() if v is not None}
        assert expected and all(gauges[k] == pytest.approx(v) for k, v in expected.items())
        time.sleep(3)  # let the 2-second alerts job run at least once more
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            counters = [s for f in text_string_to_metric_families(r.read().decode()) if f.name == "recaudit_job_runs"
                        for s in f.samples if s.name == "recaudit_job_runs_total"]
        assert any(s.labels == {"job": "alerts", "outcome": "ok"} and s.value >= 1 for s in counters)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as r:
            assert b"recaudit" in r.read()  # the reports, published by the report job
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # the bound: a service that hangs fails here
        assert b"stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_lets_the_running_job_finish_before_the_service_stops(recaudit_bin, tmp_path):
    from audits.store import Store

    data = tmp_path / "data"
    simulate(data, Config(users=4000, movies=300, days=4, seed=2))
    db = str(tmp_path / "t.db")
    store = Store(db)  # the tables exist before the service starts, so the test can watch them
    config_path = write_config(tmp_path, "ingest", watch=[data])
    proc = subprocess.Popen([recaudit_bin, "schedule", "--db", db, "--config", config_path, "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "running" not in job_runs(store).status.tolist():
            time.sleep(0.05)
        assert job_runs(store).status.tolist() == ["running"]  # caught in the middle of the ingest
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        runs = job_runs(store)
        assert runs.status.tolist() == ["ok"] and json.loads(runs.detail[0])["lines"] > 0
        assert store.count("watches") > 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_exposition_skips_empty_values_and_labels_each_key_with_its_audit(store):
    from prometheus_client.parser import text_string_to_metric_families

    doc = {"run_id": store.start_run("2024-01-01", "2024-01-02", ["fairness"]), "status": "ok",
           "window": {"since": "2024-01-01", "until": "2024-01-02"},
           "audits": {"fairness": {"status": "ok", "metrics": {"fairness.rmse.sex.F": 1.1, "fairness.rmse.sex.X": None},
                                   "findings": [], "details": {}, "error": None, "seconds": 0.1}}}
    store.finish_run(doc["run_id"], doc, "x")
    samples = [s for f in text_string_to_metric_families(web.exposition(store).decode()) for s in f.samples]
    gauges = [s for s in samples if s.name == "recaudit_metric"]
    assert [(s.labels, s.value) for s in gauges] == [({"key": "fairness.rmse.sex.F", "audit": "fairness"}, 1.1)]


def test_a_bad_schedule_is_an_input_error(tmp_path):
    from recsys.formats import InputError

    (tmp_path / "recaudit.toml").write_text('[schedule.jobs.drift]\nwhen = "every tuesday"\n')
    with pytest.raises(InputError, match="schedule.jobs.drift.when"):
        configuration.load(tmp_path / "recaudit.toml")


def test_the_quick_demo_runs_end_to_end_and_its_dashboard_opens(recaudit_bin, chromium, tmp_path):
    out = tmp_path / "demo"
    done = run_cli(recaudit_bin, "demo", "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    text = done.stdout.decode()
    assert "Dashboard:" in text and "feedback loop suspected" in text
    statuses = [(name, a["status"]) for page in (out / "reports" / "runs").glob("*/results.json")
                for name, a in json.loads(page.read_text())["audits"].items()]
    assert len(statuses) == 5 * 5 and not [s for s in statuses if s[1] == "errored"], statuses
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert alerts and all(a["schema"] == "recaudit.alert/1" for a in alerts)
    assert f"{len(alerts)} alerts delivered" in text and " 0 rejected" in text
    seen = open_page(chromium, out / "reports" / "index.html", "demo-dashboard")
    assert seen["errors"] == [] and all(u.startswith("file://") for u in seen["requests"])
    assert seen["run_links"] == 5 and seen["charts"] >= 3

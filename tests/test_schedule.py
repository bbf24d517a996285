"""The service: jobs persist across restarts without running twice, --once runs only what is
due, a failing job is recorded and the rest go on, SIGTERM stops it cleanly, /metrics parses,
one scheduler per database runs the jobs while the others stand by, a run killed mid-job is
marked interrupted and made again, a database outage is answered and survived, a scrape reads
no database, and the demo runs end to end with a dashboard a browser can open."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest

from recaudit.audits import config as configuration
from recaudit.audits import registry
from recaudit.audits.ingest import ingest
from recaudit.recsys.simulate import Config, simulate
from recaudit.scheduler import prometheus, service, web
from support import free_port, open_page, run_cli


def only(*names, **when):
    """A configuration whose enabled jobs are `names`, each every hour unless `when` says."""
    cfg = configuration.load()
    for name, spec in cfg["schedule"]["jobs"].items():
        spec.update(enabled=name in names, when=when.get(name, "1h"))
    return cfg


def write_config(tmp_path, *names, watch=None, lease_seconds=30, **when) -> str:
    lines = ["[audit]", f'out = "{tmp_path / "site"}"', "[schedule]",
             f"watch = {json.dumps([str(w) for w in watch or []])}", f'models = "{tmp_path / "models"}"',
             f"lease_seconds = {lease_seconds}"]
    for name in service.JOBS:
        lines += [f"[schedule.jobs.{name}]", f"enabled = {str(name in names).lower()}",
                  f'when = "{when.get(name, "1h")}"']
    path = tmp_path / "recaudit.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def job_runs(store) -> pd.DataFrame:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return pd.DataFrame(conn.execute(text("SELECT id, job, status, detail FROM job_runs ORDER BY id")).all(),
                            columns=["id", "job", "status", "detail"])


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

    from recaudit.audits.store import Store

    store = Store(db)
    scheduler = service.build(store.url, config_path, configuration.load(config_path))
    a_minute_ago = (pd.Timestamp.now("UTC") - pd.Timedelta(minutes=1)).to_pydatetime()
    scheduler.get_job("alerts").modify(next_run_time=a_minute_ago)
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
    from recaudit.audits.store import Store

    runs = job_runs(Store(db))
    assert runs.status.tolist() == ["failed", "ok"] and "no such file" in runs.detail[0]


def test_a_job_whose_events_cannot_be_opened_is_recorded_as_failed_with_why(tmp_path, small_world, monkeypatch):
    """The settings file lost its store.lake meanwhile: the job's store refuses a database whose
    events are in a lake, and the failure is in job_runs, not only in APScheduler's log."""
    from recaudit.audits.store import Store

    monkeypatch.delenv("RECAUDIT_LAKE", raising=False)
    db = str(tmp_path / "l.db")
    with_lake = Store(db, lake=str(tmp_path / "lake"))
    ingest(with_lake, [str(small_world / "events.log")])
    with_lake.close()
    config_path = write_config(tmp_path, "report")
    assert service.run_job("report", db, config_path) == "failed"
    runs = job_runs(Store(db, events=False))
    assert runs.job.tolist() == ["report"] and runs.status.tolist() == ["failed"]
    assert "are in a lake: open it with --lake" in runs.detail[0]


def test_an_empty_watched_directory_is_nothing_new_and_its_files_are_ingested_once_they_arrive(recaudit_bin,
                                                                                              tmp_path):
    stream = tmp_path / "stream"
    stream.mkdir()
    config_path = write_config(tmp_path, "ingest", watch=[stream])
    db = str(tmp_path / "e.db")
    done = run_cli(recaudit_bin, "schedule", "--once", "--db", db, "--config", config_path)
    assert done.returncode == 0 and done.stdout.decode().split() == ["ingest:", "ok"], done.stderr
    assert b"Traceback" not in done.stderr
    from recaudit.audits.store import Store

    store = Store(db)
    runs = job_runs(store)
    assert runs.status.tolist() == ["ok"] and "nothing new" in runs.detail[0] and str(stream) in runs.detail[0]
    simulate(stream, Config(users=100, movies=40, days=1, seed=2))
    scheduler = service.build(store.url, config_path, configuration.load(config_path))
    due = pd.Timestamp.now("UTC") - pd.Timedelta(minutes=1)
    scheduler.get_job("ingest").modify(next_run_time=due.to_pydatetime())
    service.close(scheduler)
    again = run_cli(recaudit_bin, "schedule", "--once", "--db", db, "--config", config_path)
    assert again.stdout.decode().split() == ["ingest:", "ok"] and store.count("watches") > 0


def test_a_scheduled_audit_with_nothing_new_since_its_last_run_says_so_and_audits_again_once_data_arrives(
        store, tmp_path):
    simulate(tmp_path / "a", Config(users=150, movies=60, days=2, seed=3))
    ingest(store, [str(tmp_path / "a")])
    config_path = write_config(tmp_path, "validation")
    assert [service.run_job("validation", store.url, config_path) for _ in range(2)] == ["ok", "ok"]
    first, second = (json.loads(d) for d in job_runs(store).detail)
    assert "run_id" in first and "skipped" not in first
    assert second["skipped"].startswith(f"no new data: nothing ingested since run {first['run_id']} audited the "
                                        "window ending ")
    assert [r["schedule"] for r in store.runs()] == ["validation"]  # the same window is not written again
    simulate(tmp_path / "b", Config(users=150, movies=60, days=2, seed=4))  # more data arrives
    ingest(store, [str(tmp_path / "b")])
    assert service.run_job("validation", store.url, config_path) == "ok"
    assert "run_id" in json.loads(job_runs(store).detail.iloc[-1]) and len(store.runs()) == 2


def test_the_alerts_job_opens_a_freshness_condition_when_data_stops(store, tmp_path):
    simulate(tmp_path / "a", Config(users=50, movies=20, days=1, seed=3))
    ingest(store, [str(tmp_path / "a")])
    config_path = write_config(tmp_path, "alerts")
    text = open(config_path).read().replace("[audit]\n", '[audit]\nmax_silence = "1s"\n')
    open(config_path, "w").write(text)
    time.sleep(1.5)
    assert service.run_job("alerts", store.url, config_path) == "ok"
    assert json.loads(job_runs(store).detail.iloc[-1])["freshness_alerts"] == 3
    from recaudit.reports import alerts

    assert sorted(c["condition"] for c in alerts.open_now(store)) == [
        "freshness/rate", "freshness/recommend", "freshness/watch"]


def test_the_service_serves_metrics_and_stops_cleanly_on_sigterm(recaudit_bin, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from recaudit.audits import run as runs
    from recaudit.audits.store import Store

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
        exposed = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        expected = {prometheus.series(k): v for a in last.results.values() for k, v in a.to_dict()["metrics"].items()
                    if v is not None}  # each key in the family of its measure, in its base unit
        assert expected and all(exposed[x.family, tuple(sorted(x.labels))] == pytest.approx(v * x.scale)
                                for x, v in expected.items())
        time.sleep(3)  # let the 2-second alerts job run at least once more
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            counters = [s for f in text_string_to_metric_families(r.read().decode()) if f.name == "recaudit_job_runs"
                        for s in f.samples if s.name == "recaudit_job_runs_total"]
        assert any(s.labels == {"job": "alerts", "outcome": "ok"} and s.value >= 1 for s in counters)
        assert not [s for s in counters if s.labels["outcome"] == "running"]  # a gauge: counters only grow
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as r:
            assert b"recaudit" in r.read()  # the reports, published by the report job
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # the bound: a service that hangs fails here
        assert b"stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_lets_the_running_job_finish_before_the_service_stops(recaudit_bin, tmp_path):
    from recaudit.audits.store import Store

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


def test_a_sigterm_as_the_jobs_start_still_stops_the_service(recaudit_bin, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=4000, movies=300, days=4, seed=2))  # an ingest that keeps the process busy
    config_path = write_config(tmp_path, "ingest", watch=[data])
    log = tmp_path / "service.log"
    proc = start_service(recaudit_bin, str(tmp_path / "s.db"), config_path, free_port(), log)
    try:
        deadline = time.monotonic() + 120
        while b"holds the lease" not in log.read_bytes():  # the jobs start: the HTTP server is not up yet
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0  # the bound: a signal lost before the server's own handlers fails here
    finally:
        stop_all(proc)


def test_exposition_skips_empty_values_and_puts_each_key_in_the_family_of_its_measure(store):
    from prometheus_client.parser import text_string_to_metric_families

    doc = {"run_id": store.start_run("2024-01-01", "2024-01-02", ["fairness"]), "status": "ok",
           "window": {"since": "2024-01-01", "until": "2024-01-02"},
           "audits": {"fairness": {"status": "ok", "metrics": {"fairness.rmse.sex.F": 1.1, "fairness.rmse.sex.X": None},
                                   "findings": [], "details": {}, "error": None, "seconds": 0.1}}}
    store.finish_run(doc["run_id"], doc, "x")
    body = prometheus.exposition(prometheus.read(store), database_up=True, active=True)
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    gauges = [s for s in samples if s.name.startswith("recaudit_fairness_") or s.name == "recaudit_metric"]
    assert [(s.name, s.labels, s.value) for s in gauges] == [("recaudit_fairness_rmse", {"dimension": "sex",
                                                                                          "group": "F"}, 1.1)]


def test_a_bad_schedule_is_an_input_error(tmp_path):
    from recaudit.recsys.formats import InputError

    (tmp_path / "recaudit.toml").write_text('[schedule.jobs.drift]\nwhen = "every tuesday"\n')
    with pytest.raises(InputError, match="schedule.jobs.drift.when"):
        configuration.load(tmp_path / "recaudit.toml")
    (tmp_path / "recaudit.toml").write_text("[schedule]\nlease_seconds = 0\n")
    with pytest.raises(InputError, match="schedule.lease_seconds: must be positive"):
        configuration.load(tmp_path / "recaudit.toml")


# -- one scheduler per database, interrupted runs, database outages, /metrics from memory ------

def wait_for(condition, seconds: float, what: str):
    """Poll until `condition()` is true and return it; fail after `seconds`, the bound that keeps
    a test from hanging (no test asserts how fast a thing happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not within {seconds} s: {what}")


def get(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) of a GET on 127.0.0.1, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None


def healthz(port: int) -> tuple[int, dict] | None:
    answer = get(port, "/healthz")
    return None if answer is None else (answer[0], json.loads(answer[1]))


def role(port: int) -> str | None:
    answer = healthz(port)
    return None if answer is None else answer[1]["role"]


def gauges(port: int) -> dict[str, float]:
    """Every sample of /metrics by its series as PromQL selects it: name{label="value",…}, the
    labels sorted (the name alone without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(port, "/metrics")
    assert status == 200
    return {s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" if s.labels else ""):
            s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}


RMSE_F = 'recaudit_fairness_rmse{dimension="sex",group="F"}'  # the key fairness.rmse.sex.F record_audit writes


def start_service(recaudit_bin, db: str, config_path: str, port: int, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RECAUDIT_DATABASE_URL"}
    return subprocess.Popen([recaudit_bin, "schedule", "--db", db, "--config", config_path, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)


def stop_all(*procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_jobs(store, config_path: str) -> None:
    """Store the configured jobs, as a first start would: processes started together then find
    the same jobs due, as on any restart."""
    service.close(service.build(store.url, config_path, configuration.load(config_path)))


def record_audit(store, value: float) -> None:
    doc = {"run_id": store.start_run("2024-01-01", "2024-01-02", ["fairness"]), "status": "ok",
           "window": {"since": "2024-01-01", "until": "2024-01-02"},
           "audits": {"fairness": {"status": "ok", "metrics": {"fairness.rmse.sex.F": value},
                                   "findings": [], "details": {}, "error": None, "seconds": 0.1}}}
    store.finish_run(doc["run_id"], doc, "x")


def test_the_lease_has_one_holder_until_it_expires_or_is_released(store):
    racers = [f"racer-{i}" for i in range(8)]
    won, barrier = {}, threading.Barrier(len(racers))

    def race(me):
        barrier.wait()  # all at once, on a lease that has no row yet
        won[me] = store.take_lease("race", me, 60)

    threads = [threading.Thread(target=race, args=(me,)) for me in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    holders = set(won.values())
    assert len(won) == len(racers) and len(holders) == 1 and holders <= set(racers)
    holder = holders.pop()
    assert store.take_lease("race", holder, 60) == holder  # renewed by its holder
    other = next(r for r in racers if r != holder)
    assert store.take_lease("race", other, 60) == holder
    store.release_lease("race", other)  # not its lease: nothing changes
    assert store.take_lease("race", other, 60) == holder
    store.release_lease("race", holder)
    assert store.take_lease("race", other, 0.2) == other
    time.sleep(0.3)  # past the expiry of other's lease
    assert store.take_lease("race", holder, 60) == holder


def test_two_services_on_one_database_run_each_slot_once_and_one_stands_by(recaudit_bin, store, tmp_path):
    from datetime import datetime, timezone

    from apscheduler.triggers.interval import IntervalTrigger

    config_path = write_config(tmp_path, *service.JOBS, lease_seconds=3, **{name: "1s" for name in service.JOBS})
    cfg = configuration.load(config_path)
    scheduler = service.build(store.url, config_path, cfg)
    # Every job due at the same times, as daily audits at one minute are, from a time when both
    # services have started: then every slot finds both (were they up later, the slots they
    # missed would count without a run, and the bound below would only be looser).
    start = datetime.now(timezone.utc) + pd.Timedelta(seconds=12)
    for job in scheduler.get_jobs():
        job.reschedule(IntervalTrigger(seconds=1, start_date=start, timezone="UTC"))
    service.close(scheduler)
    ports = [free_port(), free_port()]
    procs = [start_service(recaudit_bin, store.url, config_path, port, tmp_path / f"service{i}.log")
             for i, port in enumerate(ports)]
    try:
        wait_for(lambda: all(role(p) for p in ports), 120, "both services answer /healthz")
        wait_for(lambda: (job_runs(store).job == "alerts").sum() >= 5, 120, "five runs of each job")
        assert sorted(role(p) for p in ports) == ["active", "standby"]
    finally:
        stop_all(*procs)
    runs = job_runs(store)
    scheduler = service.paused(store.url, cfg)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    service.close(scheduler)
    for name, job in jobs.items():
        # The slots that came are the trigger's times before the job's next one: a run per slot
        # at most (fewer when one was skipped, still running or coalesced), not one per scheduler.
        slots = round((job.next_run_time - start).total_seconds())
        assert 0 < (runs.job == name).sum() <= slots, (name, slots, runs.job.tolist())


def test_when_the_active_service_is_killed_the_standby_takes_over(recaudit_bin, store, tmp_path):
    config_path = write_config(tmp_path, "alerts", lease_seconds=2, alerts="1s")
    create_jobs(store, config_path)
    first, second = free_port(), free_port()
    active = start_service(recaudit_bin, store.url, config_path, first, tmp_path / "first.log")
    standby = None
    try:
        wait_for(lambda: role(first) == "active", 120, "the first service holds the lease")
        standby = start_service(recaudit_bin, store.url, config_path, second, tmp_path / "second.log")
        wait_for(lambda: role(second) == "standby", 120, "the second service stands by")
        active.kill()  # SIGKILL: the lease is left to expire
        active.wait(timeout=30)
        seen = len(job_runs(store))
        wait_for(lambda: role(second) == "active", 30, "the standby takes over (within 4/3 of the 2 s lease)")
        wait_for(lambda: len(job_runs(store)) > seen, 30, "the new active service runs the job")
    finally:
        stop_all(*[p for p in (active, standby) if p is not None])


def test_a_once_while_another_scheduler_holds_the_lease_runs_nothing_and_says_so(recaudit_bin, store, tmp_path):
    config_path = write_config(tmp_path, "report", "alerts")
    create_jobs(store, config_path)
    store.take_lease(service.LEASE, "elsewhere:1:abcdef", 300)  # held here, so the outcome does not hang on timing
    held = run_cli(recaudit_bin, "schedule", "--once", "--db", store.url, "--config", config_path)
    assert held.returncode == 0, held.stderr.decode()[-2000:]
    assert held.stdout.decode() == ("nothing run: another scheduler holds the lease on this database "
                                    "(elsewhere:1:abcdef)\n")
    assert job_runs(store).empty
    store.release_lease(service.LEASE, "elsewhere:1:abcdef")
    freed = run_cli(recaudit_bin, "schedule", "--once", "--db", store.url, "--config", config_path)
    assert freed.stdout.decode().split() == ["report:", "ok", "alerts:", "ok"], freed.stderr.decode()[-2000:]


def test_two_onces_started_together_run_each_due_job_exactly_once(recaudit_bin, store, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=1500, movies=150, days=2, seed=3))  # an ingest that lasts a moment
    config_path = write_config(tmp_path, "ingest", "report", "alerts", watch=[data])
    create_jobs(store, config_path)
    env = {k: v for k, v in os.environ.items() if k != "RECAUDIT_DATABASE_URL"}
    procs = [subprocess.Popen([recaudit_bin, "schedule", "--once", "--db", store.url, "--config", config_path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode()[-2000:] for _, err in outputs]
    said = sorted(out.decode() for out, _ in outputs)
    assert said[0].split() == ["ingest:", "ok", "report:", "ok", "alerts:", "ok"], said
    # Which the other says depends on whether it asked while the first held the lease (the test
    # above pins that case) or after the first had moved every job to its next time.
    assert said[1].startswith("nothing run: another scheduler holds the lease") or said[1] == "no job was due\n", said
    assert job_runs(store).job.tolist() == ["ingest", "report", "alerts"]


def test_a_run_killed_mid_job_is_marked_interrupted_and_its_slot_runs_once_more(recaudit_bin, store, tmp_path):
    data = tmp_path / "data"
    simulate(data, Config(users=4000, movies=300, days=4, seed=2))
    config_path = write_config(tmp_path, "ingest", watch=[data], lease_seconds=2)
    first = start_service(recaudit_bin, store.url, config_path, free_port(), tmp_path / "first.log")
    again = None
    try:
        wait_for(lambda: "running" in job_runs(store).status.tolist(), 120, "the ingest runs")
        first.kill()  # SIGKILL, in the middle of the ingest
        first.wait(timeout=30)
        assert job_runs(store).status.tolist() == ["running"]
        again = start_service(recaudit_bin, store.url, config_path, free_port(), tmp_path / "again.log")
        wait_for(lambda: job_runs(store).status.tolist()[-1:] == ["ok"], 180, "the ingest runs again, to the end")
    finally:
        stop_all(*[p for p in (first, again) if p is not None])
    runs = job_runs(store)
    assert runs.job.tolist() == ["ingest", "ingest"] and runs.status.tolist() == ["interrupted", "ok"]
    assert runs.detail[0].startswith("interrupted: its process stopped before it finished")
    assert store.count("watches") > 0


class Proxy:
    """A TCP forwarder on 127.0.0.1 to the database that a test can cut, closing the connections
    through it and every new one at once (the database is unreachable), and restore."""

    def __init__(self, host: str, port: int):
        self.target, self.up = (host, port), True
        self._lock, self._open = threading.Lock(), []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:  # with cut(): a connection accepted as the cut begins is closed by it too
                if not self.up:
                    client.close()
                    continue
                upstream = socket.create_connection(self.target)
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # wakes the pump of the other direction
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()  # each socket is the source of one pump, which closes it

    def cut(self) -> None:
        with self._lock:
            self.up = False
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open = []

    def restore(self) -> None:
        with self._lock:
            self.up = True

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.mark.postgres
def test_a_database_outage_is_answered_and_survived_without_a_restart(recaudit_bin, postgres_schema_url, tmp_path):
    from sqlalchemy.engine import make_url

    from recaudit.audits.store import Store

    store = Store(postgres_schema_url)  # straight to PostgreSQL: the test's view
    record_audit(store, 1.25)
    real = make_url(store.url)
    proxy = Proxy(real.host, real.port or 5432)
    data = tmp_path / "data"
    simulate(data, Config(users=4000, movies=300, days=4, seed=2))  # an ingest the outage cuts through
    config_path = write_config(tmp_path, "ingest", "alerts", watch=[data], lease_seconds=2, alerts="1s")
    port, log = free_port(), tmp_path / "service.log"
    proc = start_service(recaudit_bin, real.set(host="127.0.0.1", port=proxy.port).render_as_string(False),
                         config_path, port, log)
    try:
        wait_for(lambda: role(port) == "active", 120, "the service runs the jobs")
        assert gauges(port)[RMSE_F] == 1.25
        wait_for(lambda: "running" in job_runs(store).query("job == 'ingest'").status.tolist(), 120, "the ingest runs")
        proxy.cut()
        down = wait_for(lambda: (h := healthz(port)) and h[0] == 503 and not h[1]["running"] and h,
                        120, "/healthz answers 503 once the ingest has failed")
        assert down[1]["status"] == "unavailable" and down[1]["reason"].startswith("database unreachable: ")
        wait_for(lambda: gauges(port)["recaudit_database_up"] == 0, 30, "/metrics says the database is down")
        assert gauges(port)[RMSE_F] == 1.25  # the last value read, still served
        assert job_runs(store).query("job == 'ingest'").status.tolist() == ["running"]  # not recorded yet
        wait_for(lambda: role(port) == "standby", 30, "the lease, not renewed, runs out: the service stands by")
        proxy.restore()
        last = job_runs(store).id.max()
        wait_for(lambda: healthz(port)[0] == 200 and role(port) == "active", 60, "/healthz answers 200 again")
        wait_for(lambda: gauges(port)["recaudit_database_up"] == 1, 30, "/metrics says the database is back")
        wait_for(lambda: job_runs(store).query("job == 'ingest'").status.tolist() != ["running"], 30,
                 "the ingest's outcome is recorded once the database is back")
        ingest_runs = job_runs(store).query("job == 'ingest'")
        assert ingest_runs.status.tolist() == ["failed"] and "psycopg" in ingest_runs.detail.iloc[0]
        wait_for(lambda: (job_runs(store).query("job == 'alerts' and status == 'ok'").id > last).any(), 60,
                 "the jobs run again, without a restart")
    finally:
        stop_all(proc)
        proxy.close()
        store.close()
    stderr = log.read_text()
    assert "Traceback" not in stderr and "Exception in ASGI application" not in stderr, stderr
    assert stderr.count("recaudit.schedule: database unreachable:") == 1, stderr  # one line for the outage
    assert stderr.count("database reachable again") == 1, stderr


def test_a_scrape_reads_no_database_and_shows_the_values_of_the_last_refresh(store, tmp_path):
    import uvicorn
    from sqlalchemy import event

    record_audit(store, 1.1)
    metrics = web.Metrics(store)
    metrics.refresh(active=True)
    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(web.app(metrics, lambda: (200, {}), tmp_path / "site"), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the HTTP server listens")
        assert all(gauges(port)[RMSE_F] == 1.1 for _ in range(50))
        assert statements == []  # fifty scrapes, no query
        record_audit(store, 1.3)
        assert gauges(port)[RMSE_F] == 1.1  # as of the last refresh ...
        metrics.refresh(active=True)
        assert gauges(port)[RMSE_F] == 1.3  # ... which the service makes after every run
        assert gauges(port)["recaudit_database_up"] == 1 and gauges(port)["recaudit_scheduler_active"] == 1
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_quick_demo_runs_end_to_end_and_its_dashboard_opens(recaudit_bin, chromium, tmp_path):
    out = tmp_path / "demo"
    done = run_cli(recaudit_bin, "demo", "--quick", "--out", str(out))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    text = done.stdout.decode()
    assert "Dashboard:" in text and "feedback loop suspected" in text
    # Counts read as words: "1 finding", never "findings, 1 findings".
    found = re.search(r"Found on the last day \(run \d+\): (\d+) findings?:", text)
    assert found and int(found.group(1)) == sum(line.startswith("  - ") for line in text.splitlines())
    progress = done.stderr.decode()
    assert " 1 findings" not in progress and " 1 new alerts" not in progress and "findings, " not in progress
    statuses = [(name, a["status"]) for page in (out / "reports" / "runs").glob("*/results.json")
                for name, a in json.loads(page.read_text())["audits"].items()]
    assert len(statuses) == 5 * len(registry.AUDITS) and not [s for s in statuses if s[1] == "errored"], statuses
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert alerts and all(a["schema"] == "recaudit.alert/1" for a in alerts)
    assert f"{len(alerts)} alerts delivered" in text and " 0 rejected" in text
    seen = open_page(chromium, out / "reports" / "index.html", "demo-dashboard")
    assert seen["errors"] == [] and all(u.startswith("file://") for u in seen["requests"])
    assert seen["run_links"] == 5 and seen["charts"] >= 3


def test_the_service_serves_another_tools_page_only_with_a_sandbox_header(store, tmp_path):
    """evidently's drift.html runs its own scripts: opened straight from the service it gets an
    opaque origin; our own pages (index.html) do not need one and keep theirs."""
    import urllib.request

    import uvicorn

    site = tmp_path / "site"
    (site / "runs" / "1").mkdir(parents=True)
    (site / "runs" / "1" / "drift.html").write_text("<html><script>1</script></html>")
    (site / "runs" / "1" / "index.html").write_text("<html></html>")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(web.app(web.Metrics(store), lambda: (200, {}), site), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the HTTP server listens")

        def policy(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.headers.get("Content-Security-Policy")

        assert policy("/runs/1/drift.html") == "sandbox allow-scripts"
        assert policy("/runs/1/index.html") is None and policy("/runs/1/") is None
    finally:
        server.should_exit = True
        thread.join(timeout=30)

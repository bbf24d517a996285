"""Alerts against real HTTP servers on 127.0.0.1: payload and signature verify, a receiver that
is down gets the alert once it is back, failures and timeouts are retried, an open condition
is sent once, and its resolution once."""

import hashlib
import hmac
import json
import threading

import pandas as pd
import pytest
from sqlalchemy import update

from recaudit.audits import config as configuration
from recaudit.audits import store as st
from recaudit.audits.ingest import ingest
from recaudit.audits.store import Store
from recaudit.recsys.formats import InputError
from recaudit.recsys.simulate import Config, simulate
from recaudit.reports import alerts
from recaudit.scheduler.jobs import audit_and_publish
from support import Receiver, free_port, run_cli

SECRET_ENV = "RECAUDIT_TEST_WEBHOOK_SECRET"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def settings(url, **webhook):
    s = configuration.load()["alerts"]
    s["webhooks"] = [{"name": "oncall", "url": url, "secret_env": SECRET_ENV, "timeout": 2.0, **webhook}]
    return s


def finding(kind="fairness_gap", key="fairness.rmse_gap.sex", severity="warning", audit="fairness"):
    from recaudit.audits.result import Finding

    return Finding(audit, key, severity, f"{key} is too large", 0.4, 0.2, kind=kind).to_dict()


def run_document(run_id, day, audits):
    since = pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)
    return {"run_id": run_id, "status": "findings",
            "window": {"since": since.isoformat(), "until": (since + pd.Timedelta(days=1)).isoformat()},
            "audits": {name: {"status": "findings" if fs else "ok", "metrics": metrics, "findings": fs,
                              "details": {}, "error": None, "seconds": 0.1}
                       for name, (metrics, fs) in audits.items()}}


def stored(store, tmp_path, day, audits, schedule=None):
    """A run of `audits` recorded as the scheduled job `schedule` (None: an ad-hoc audit) makes it."""
    doc = {**run_document(None, day, audits), "schedule": schedule}
    doc["run_id"] = store.start_run(doc["window"]["since"], doc["window"]["until"], list(audits), schedule)
    store.finish_run(doc["run_id"], doc, tmp_path)
    return doc


def gini_rule(s, for_runs=2):
    s["findings"] = ""
    s["rules"] = [{"name": "gini-high", "metric": "feedback.gini", "op": ">", "threshold": 0.8, "for_runs": for_runs}]
    return s


def test_payload_follows_the_schema_and_its_signature_verifies(store, receiver, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    s = settings(receiver.url)
    [alert_id] = alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "file:///r/1")
    assert alerts.deliver(store, s)["delivered"] == 1
    [request] = receiver.requests
    body = request["body"]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"][alerts.SIGNATURE_HEADER], expected)
    assert request["headers"]["Idempotency-Key"] == alert_id
    payload = json.loads(body)
    assert payload["schema"] == "recaudit.alert/1" and payload["status"] == "firing"
    assert payload["severity"] == "warning" and payload["rule"] == "fairness.fairness_gap"
    assert payload["metrics"] == {"fairness.rmse_gap.sex": 0.4} and payload["run_id"] == 1
    assert payload["link"] == "file:///r/1" and payload["message"] == "fairness.rmse_gap.sex is too large"
    assert alerts.deliver(store, s)["delivered"] == 0  # delivered once, never again


def test_a_receiver_that_is_down_gets_the_alert_once_it_is_back(store, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "k")
    port = free_port()
    s = settings(f"http://127.0.0.1:{port}/hook")
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
    assert alerts.deliver(store, s) == {"delivered": 0, "failed": 1, "waiting": 0, "unknown_webhook": 0}
    [state] = alerts.outbox(store)[0]["deliveries"]
    assert state["status"] == "pending" and "unreachable" in state["last_error"]
    assert alerts.deliver(store, s)["waiting"] == 1  # not due yet: backing off
    up = Receiver(port)
    try:
        later = pd.Timestamp.now("UTC").tz_localize(None) + pd.Timedelta(hours=2)
        assert alerts.deliver(store, s, clock=lambda: later)["delivered"] == 1
        assert alerts.deliver(store, s, clock=lambda: later + pd.Timedelta(hours=2))["delivered"] == 0
        assert len(up.requests) == 1
    finally:
        up.close()


def test_a_500_is_retried_with_exponential_backoff_until_accepted(store, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "k")
    r = Receiver(plan=[(500, 0), (503, 0), (200, 0)])
    try:
        s = settings(r.url)
        alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
        now = pd.Timestamp.now("UTC").tz_localize(None)
        assert alerts.deliver(store, s, clock=lambda: now)["failed"] == 1
        first = pd.Timestamp(alerts.outbox(store)[0]["deliveries"][0]["next_attempt_at"])
        assert alerts.deliver(store, s, clock=lambda: first)["failed"] == 1
        second = pd.Timestamp(alerts.outbox(store)[0]["deliveries"][0]["next_attempt_at"])
        assert ((first - now).total_seconds() == pytest.approx(30)
                and (second - first).total_seconds() == pytest.approx(60))
        assert alerts.deliver(store, s, clock=lambda: second)["delivered"] == 1
        assert [q["status"] for q in r.requests] == [500, 503, 200]
        assert len({q["headers"]["Idempotency-Key"] for q in r.requests}) == 1  # the receiver can deduplicate
        assert alerts.outbox(store)[0]["deliveries"][0]["attempts"] == 3
    finally:
        r.close()


def test_a_slow_receiver_times_out_and_gets_the_alert_again_under_the_same_idempotency_key(store, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "k")
    r = Receiver(plan=[(200, 1.5)])
    try:
        s = settings(r.url, timeout=0.3)
        [alert_id] = alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
        assert alerts.deliver(store, s)["failed"] == 1
        assert "timed out" in alerts.outbox(store)[0]["deliveries"][0]["last_error"]
        later = pd.Timestamp.now("UTC").tz_localize(None) + pd.Timedelta(minutes=5)
        assert alerts.deliver(store, s, clock=lambda: later)["delivered"] == 1
        # At least once: the receiver saw the timed-out post too, and drops the repeat by its key.
        assert [q["headers"]["Idempotency-Key"] for q in r.requests] == [alert_id, alert_id]
    finally:
        r.close()


def test_an_open_condition_is_sent_once_across_runs_and_its_resolution_once(store, receiver, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "k")
    s = settings(receiver.url)
    gap = finding()
    sent = [alerts.evaluate(store, run_document(i, i, {"fairness": ({}, fs)}), s, "")
            for i, fs in enumerate([[gap], [gap], [], []], start=1)]
    assert [len(x) for x in sent] == [1, 0, 1, 0]
    alerts.deliver(store, s)
    statuses = [json.loads(q["body"])["status"] for q in receiver.requests]
    assert statuses == ["firing", "resolved"]
    assert json.loads(receiver.requests[1]["body"])["message"].startswith("resolved by run 3: ")
    assert alerts.evaluate(store, run_document(4, 4, {"fairness": ({}, [])}), s, "") == []  # same run again: nothing


def test_a_run_without_the_audit_does_not_resolve_its_condition(store, monkeypatch):
    s = settings("http://127.0.0.1:9/hook")
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
    assert alerts.evaluate(store, run_document(2, 1, {"drift": ({}, [])}), s, "") == []


def test_a_metric_rule_fires_after_its_consecutive_runs(store, receiver, tmp_path):
    s = gini_rule(settings(receiver.url, secret_env=""))
    fired = []
    for day, gini in enumerate([0.9, 0.7, 0.85, 0.9, 0.5]):
        created = alerts.evaluate(store, stored(store, tmp_path, day, {"feedback": ({"feedback.gini": gini}, [])}), s,
                                  "")
        fired.append(alerts.outbox(store)[0]["status"] if created else None)
    assert fired == [None, None, None, "firing", "resolved"]
    assert "feedback.gini = 0.9 > 0.8 for 2 runs in a row" in alerts.outbox(store)[1]["message"]


def test_an_ad_hoc_audit_of_a_later_window_neither_mutes_nor_resolves_a_scheduled_condition(store, tmp_path):
    s = gini_rule(settings("http://127.0.0.1:9/hook"))

    def gini(day, value, schedule):
        doc = stored(store, tmp_path, day, {"feedback": ({"feedback.gini": value}, [])}, schedule)
        return alerts.evaluate(store, doc, s, "")

    assert gini(0, 0.947, "feedback") == []
    assert gini(9, 0.3, None) == []  # `recaudit audit` over a window ending later than the schedule's
    assert len(gini(1, 0.947, "feedback")) == 1  # fires: the ad-hoc window judges only ad-hoc runs
    assert gini(10, 0.3, None) == [] and gini(11, 0.3, None) == []  # nor does it resolve the scheduled one
    [now] = alerts.open_now(store)
    assert now["condition"] == "schedule:feedback/rule:gini-high" and now["latest"] == {"feedback.gini": 0.947}
    assert gini(0, 0.947, "feedback") == []  # an older window of the schedule judges nothing
    [resolved] = gini(2, 0.41234, "feedback")
    message = next(a["message"] for a in alerts.outbox(store) if a["alert_id"] == resolved)
    assert message.startswith(f"resolved by run {now['run_id'] + 4}: feedback.gini = 0.4123 now, 0.947 when it "
                              f"opened (run {now['run_id']}): gini-high: ")
    assert alerts.open_now(store) == []


def test_ad_hoc_runs_judge_their_own_conditions_among_themselves(store, tmp_path):
    s = gini_rule(settings("http://127.0.0.1:9/hook"))
    for day, schedule in ((0, None), (1, "feedback")):
        alerts.evaluate(store, stored(store, tmp_path, day, {"feedback": ({"feedback.gini": 0.9}, [])}, schedule), s,
                        "")
    assert alerts.open_now(store) == []  # one run in a row in each scope, though two in the store
    alerts.evaluate(store, stored(store, tmp_path, 2, {"feedback": ({"feedback.gini": 0.9}, [])}), s, "")
    assert [c["condition"] for c in alerts.open_now(store)] == ["adhoc/rule:gini-high"]


def test_a_webhook_added_later_hears_once_of_the_conditions_open_now(store, receiver):
    before = configuration.load()["alerts"]  # no webhook configured yet
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), before, "")
    s = settings(receiver.url, secret_env="")
    assert alerts.deliver(store, s)["delivered"] == 1
    assert alerts.deliver(store, s)["delivered"] == 0
    alerts.evaluate(store, run_document(2, 1, {"fairness": ({}, [])}), s, "")
    alerts.deliver(store, s)
    assert [json.loads(q["body"])["status"] for q in receiver.requests] == ["firing", "resolved"]
    assert len({json.loads(q["body"])["condition"] for q in receiver.requests}) == 1


def test_silent_data_is_a_critical_condition_that_resolves_when_events_arrive(tmp_path, receiver):
    simulate(tmp_path / "a", Config(users=100, movies=40, days=1, seed=1))
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    ingest(store, [str(tmp_path / "a")])
    cfg = configuration.load()
    cfg["alerts"] = settings(receiver.url, secret_env="")
    now = pd.Timestamp.now("UTC").tz_localize(None)
    assert alerts.check_freshness(store, cfg, now=now) == []  # it just arrived
    later = now + pd.Timedelta(minutes=75)
    assert len(alerts.check_freshness(store, cfg, now=later)) == 3  # watch, rate and recommend
    assert alerts.check_freshness(store, cfg, now=later + pd.Timedelta(minutes=1)) == []  # open: sent once
    silent = alerts.open_now(store)
    assert {c["condition"] for c in silent} == {"freshness/watch", "freshness/rate", "freshness/recommend"}
    assert all(c["severity"] == "critical" and c["run_id"] is None for c in silent)
    watch = next(c for c in silent if c["condition"] == "freshness/watch")
    assert watch["message"].startswith("no watch events for 1 h 15 min (last stored ")
    assert watch["message"].endswith("audit.max_silence 1h)")
    simulate(tmp_path / "b", Config(users=100, movies=40, days=1, seed=2))
    ingest(store, [str(tmp_path / "b")])
    assert len(alerts.check_freshness(store, cfg)) == 3 and alerts.open_now(store) == []
    assert alerts.deliver(store, cfg["alerts"])["delivered"] == 6
    bodies = [json.loads(q["body"]) for q in receiver.requests]
    assert sorted(b["status"] for b in bodies) == ["firing"] * 3 + ["resolved"] * 3
    resolved = next(b for b in bodies if b["status"] == "resolved" and b["condition"] == "freshness/watch")
    assert "freshness.silence_seconds.watch = " in resolved["message"]
    assert ", 4500 when it opened: no watch events" in resolved["message"]
    store.close()


def test_the_freshness_check_is_off_when_max_silence_is_empty(tmp_path):
    simulate(tmp_path / "a", Config(users=50, movies=20, days=1, seed=1))
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    ingest(store, [str(tmp_path / "a")])
    cfg = configuration.load()
    cfg["audit"]["max_silence"] = ""
    assert alerts.check_freshness(store, cfg, now=pd.Timestamp("2100-01-01")) == []
    store.close()


def test_slack_webhooks_get_a_text_payload(store, receiver):
    s = settings(receiver.url, format="slack", secret_env="")
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "file:///x")
    alerts.deliver(store, s)
    text = json.loads(receiver.requests[0]["body"])["text"]
    assert text.startswith("[FIRING] warning: fairness.rmse_gap.sex is too large") and "file:///x" in text
    assert alerts.SIGNATURE_HEADER not in receiver.requests[0]["headers"]


def test_the_slack_test_message_names_no_run_it_does_not_have():
    text = json.loads(alerts.body_for(alerts.test_payload(), "slack"))["text"]
    assert text == "[TEST] info: a test alert from recaudit: this webhook is reachable and verifies the signature"


def test_a_missing_secret_keeps_the_alert_pending_with_the_reason(store, receiver, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    s = settings(receiver.url)
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
    assert alerts.deliver(store, s)["failed"] == 1 and receiver.requests == []
    assert SECRET_ENV in alerts.outbox(store)[0]["deliveries"][0]["last_error"]


@pytest.mark.parametrize("toml, message", [
    ('[[alerts.rules]]\nname = "x"\nmetric = "feedback.gini"\n', "needs op"),
    ('[[alerts.rules]]\nname = "x"\nmetric = "a"\nop = ">"\nthreshold = 1\nfinding = "b"\n', "either metric"),
    ('[[alerts.rules]]\nname = "x"\nfinding = "b"\ncolour = "red"\n', "colour: unknown setting"),
    ('[[alerts.webhooks]]\nname = "w"\nurl = "ftp://x"\n', "http:// or https://"),
])
def test_bad_alert_settings_are_input_errors(tmp_path, toml, message):
    (tmp_path / "recaudit.toml").write_text(toml)
    with pytest.raises(InputError, match=message):
        configuration.load(tmp_path / "recaudit.toml")


def test_cli_audit_sends_alerts_and_the_operator_commands_drive_them(recaudit_bin, receiver, tmp_path):
    simulate(tmp_path / "data", Config(users=300, movies=120, days=3, seed=7, inject=("corrupt",)))
    db = str(tmp_path / "a.db")
    toml = tmp_path / "recaudit.toml"
    toml.write_text(f'[[alerts.webhooks]]\nname = "oncall"\nurl = "{receiver.url}"\n')
    assert run_cli(recaudit_bin, "ingest", "--db", db, str(tmp_path / "data")).returncode == 0
    done = run_cli(recaudit_bin, "audit", "--db", db, "--config", str(toml), "--only", "validation",
                   "--since", "2024-01-02", "--out", str(tmp_path / "r"))
    assert done.returncode == 1 and b"alerts:" in done.stdout  # critical findings: malformed lines
    listed = json.loads(run_cli(recaudit_bin, "alerts", "list", "--db", db, "--json").stdout)["alerts"]
    assert listed and all(d["status"] == "delivered" for a in listed for d in a["deliveries"])
    assert len(receiver.requests) == len(listed)
    assert run_cli(recaudit_bin, "alerts", "deliver", "--db", db, "--config", str(toml)).returncode == 0
    assert len(receiver.requests) == len(listed)  # nothing is sent twice
    assert run_cli(recaudit_bin, "alerts", "test", "--config", str(toml)).returncode == 0
    assert json.loads(receiver.requests[-1]["body"])["status"] == "test"
    toml.write_text('[[alerts.webhooks]]\nname = "down"\nurl = "http://127.0.0.1:9/hook"\ntimeout = 1\n')
    assert run_cli(recaudit_bin, "alerts", "test", "--config", str(toml)).returncode == 1


def test_a_run_whose_audit_errored_or_lacked_data_resolves_nothing(store):
    s = settings("http://127.0.0.1:9/hook")
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
    for run_id, status in ((2, "errored"), (3, "insufficient_data")):
        doc = run_document(run_id, run_id, {"fairness": ({}, [])})
        doc["audits"]["fairness"]["status"] = status
        assert alerts.evaluate(store, doc, s, "") == []
    assert len(alerts.evaluate(store, run_document(4, 4, {"fairness": ({}, [])}), s, "")) == 1  # now it cleared


def test_a_metric_rule_is_judged_only_by_runs_of_its_audit(store):
    s = settings("http://127.0.0.1:9/hook")
    s["findings"] = ""
    s["rules"] = [{"name": "gap", "metric": "fairness.rmse_gap.sex", "op": ">", "threshold": 0.2}]
    assert len(alerts.evaluate(store, run_document(1, 0, {"fairness": ({"fairness.rmse_gap.sex": 0.4}, [])}),
                               s, "")) == 1
    assert alerts.evaluate(store, run_document(2, 1, {"validation": ({"validation.failed": 0}, [])}), s, "") == []
    assert alerts.evaluate(store, run_document(3, 2, {"fairness": ({"fairness.rmse_gap.sex": 0.5}, [])}), s, "") == []
    [resolved] = alerts.evaluate(store, run_document(4, 3, {"fairness": ({"fairness.rmse_gap.sex": 0.1}, [])}), s, "")
    assert alerts.outbox(store)[0]["status"] == "resolved"


def test_backoff_stays_capped_however_many_attempts(store, monkeypatch):
    s = settings(f"http://127.0.0.1:{free_port()}/hook", secret_env="")
    alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
    with store.transaction() as conn:
        conn.execute(update(st.alert_deliveries).values(attempts=5000))
    now = pd.Timestamp.now("UTC").tz_localize(None) + pd.Timedelta(days=1)
    assert alerts.deliver(store, s, clock=lambda: now)["failed"] == 1
    retry = pd.Timestamp(alerts.outbox(store)[0]["deliveries"][0]["next_attempt_at"])
    assert (retry - now).total_seconds() == pytest.approx(s["max_backoff_seconds"])


def test_two_delivery_runs_at_once_post_an_alert_once(store):
    r = Receiver(plan=[(200, 1.0)])
    try:
        s = settings(r.url, secret_env="")
        alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
        results = []
        workers = [threading.Thread(target=lambda: results.append(alerts.deliver(store, s))) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(r.requests) == 1 and sorted(x["delivered"] for x in results) == [0, 1]
    finally:
        r.close()


def test_a_delivery_run_longer_than_a_lease_posts_each_alert_once_beside_a_later_run(store, monkeypatch):
    # A lease of just the timeout (1 s) and posts of 0.1 s: the first run goes on past a lease.
    monkeypatch.setattr(alerts, "LEASE_SECONDS", 0)
    r = Receiver(delay=0.1)
    try:
        s = settings(r.url, secret_env="", timeout=1.0)
        gaps = [finding(key=f"fairness.rmse_gap.group{i}") for i in range(14)]
        ids = alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, gaps)}), s, "")
        results = []
        runs = [threading.Thread(target=lambda: results.append(alerts.deliver(store, s))) for _ in range(2)]
        runs[0].start()
        # The 12th post began at least 1.1 s into the first run: the second run starts while it is
        # in flight, and must find its lease still ahead.
        r.wait_for(12)
        runs[1].start()
        for run in runs:
            run.join()
        assert sorted(json.loads(q["body"])["alert_id"] for q in r.requests) == sorted(ids) and len(ids) == 14
        assert sum(x["delivered"] for x in results) == 14 and sum(x["failed"] for x in results) == 0
        assert all(a["deliveries"][0]["attempts"] == 1 for a in alerts.outbox(store))
    finally:
        r.close()


def test_each_attempt_takes_its_lease_and_backoff_from_the_clock_at_that_attempt(store):
    r = Receiver(plan=[(200, 0), (200, 0), (500, 0)])
    try:
        s = settings(r.url, secret_env="")
        gaps = [finding(key=f"fairness.rmse_gap.group{i}") for i in range(3)]
        alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, gaps)}), s, "")
        start, readings = pd.Timestamp.now("UTC").tz_localize(None), []

        def clock():  # a long run: every reading is ten minutes after the one before
            readings.append(start + pd.Timedelta(minutes=10 * len(readings)))
            return readings[-1]

        assert alerts.deliver(store, s, clock=clock) == {"delivered": 2, "failed": 1, "waiting": 0,
                                                         "unknown_webhook": 0}
        state = {a["alert_id"]: a["deliveries"][0] for a in alerts.outbox(store)}
        first, second, third = (state[json.loads(q["body"])["alert_id"]] for q in r.requests)
        # A delivered row keeps the lease its claim wrote.
        lease = pd.Timedelta(seconds=s["webhooks"][0]["timeout"] + alerts.LEASE_SECONDS)
        claimed = [pd.Timestamp(d["next_attempt_at"]) - lease for d in (first, second)]
        delivered = [pd.Timestamp(d["delivered_at"]) for d in (first, second)]
        failed = pd.Timestamp(third["next_attempt_at"]) - pd.Timedelta(seconds=s["backoff_seconds"])
        assert set(claimed + delivered + [failed]) <= set(readings)
        assert claimed[0] < delivered[0] < claimed[1] < delivered[1] < failed
    finally:
        r.close()


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_a_failed_attempt_and_is_not_followed(store, code):
    elsewhere = Receiver()
    r = Receiver(plan=[(code, 0, {"Location": elsewhere.url})])
    try:
        s = settings(r.url, secret_env="")
        alerts.evaluate(store, run_document(1, 0, {"fairness": ({}, [finding()])}), s, "")
        now = pd.Timestamp.now("UTC").tz_localize(None)
        assert alerts.deliver(store, s, clock=lambda: now) == {"delivered": 0, "failed": 1, "waiting": 0,
                                                               "unknown_webhook": 0}
        assert len(r.requests) == 1 and elsewhere.requests == []
        [state] = alerts.outbox(store)[0]["deliveries"]
        assert state["status"] == "pending" and state["attempts"] == 1
        assert f"HTTP {code}" in state["last_error"] and f"redirected to {elsewhere.url}" in state["last_error"]
        retry = pd.Timestamp(state["next_attempt_at"])
        assert (retry - now).total_seconds() == pytest.approx(s["backoff_seconds"])
    finally:
        r.close()
        elsewhere.close()


def test_auditing_an_older_window_again_raises_no_alerts(tmp_path):
    simulate(tmp_path / "data", Config(users=300, movies=120, days=3, seed=7, inject=("corrupt",)))
    store = Store(f"sqlite:///{tmp_path / 'o.db'}")
    ingest(store, [str(tmp_path / "data")])
    cfg = configuration.load()
    newest = audit_and_publish(store, cfg, "2024-01-03", "2024-01-04", ["validation"], tmp_path / "r")
    older = audit_and_publish(store, cfg, "2024-01-02", "2024-01-03", ["validation"], tmp_path / "r")
    assert newest.alerts and older.alerts == []

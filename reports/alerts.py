"""Alerts that reach on-call once, signed, and never get lost.

After a run, `evaluate` turns its findings and the configured rules into conditions. A
condition that opens writes a "firing" alert to the outbox; while it stays open nothing more
is sent; when it clears, one "resolved" alert. Each alert gets one delivery row per webhook,
written in the same transaction, and `deliver` posts what is due: signed with HMAC-SHA256,
with the alert id as idempotency key, a timeout, and exponential backoff on failure. A
receiver that is down gets every alert once it is back; an alert is never given up.

Payload (JSON, schema "recaudit.alert/1"):
    {"schema", "alert_id", "status": "firing" | "resolved", "condition", "scope", "rule", "audit", "severity",
     "message", "metrics": {key: value}, "run_id", "window": {"since", "until"}, "link",
     "created_at"}
It is posted as it is to the webhooks of format "json" (the default); the other channels get it
as their own kind of message (reports/channels.py): "slack" {"text": "..."}, "teams" an
Adaptive Card, "pagerduty" an Events API v2 trigger or resolve under the condition's key as
dedup_key, "email" a plain-text message over SMTP with STARTTLS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from recaudit.audits import store as st
from recaudit.audits.vocabulary import SEVERITIES
from recaudit.clock import utc_now
from recaudit.reports import channels

SCHEMA = "recaudit.alert/1"
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
       "!=": operator.ne}
SIGNATURE_HEADER = "X-Recaudit-Signature"
LEASE_SECONDS = 60  # a claimed delivery is retried by others only after its timeout and this


@dataclass
class Condition:
    key: str  # stable: <scope>/<the rule's name, the finding's fingerprint, or the event kind>
    rule: str
    audit: str  # the audit whose results say whether it holds
    severity: str
    message: str
    metrics: dict


ADHOC = "adhoc"  # the scope of runs no schedule made (`recaudit audit`)
FRESHNESS = "freshness"  # the scope of silent-data conditions, judged by the clock, not by a run


def scope_of(run: dict) -> str:
    """Which runs judge the conditions `run` opens: those of the same scheduled job, or the
    ad-hoc ones. An ad-hoc audit of any window so never mutes or resolves a scheduled one."""
    return f"schedule:{run['schedule']}" if run.get("schedule") else ADHOC


def completed(run: dict) -> set[str]:
    """The audits of a run that looked at the data: an errored audit or one without enough data
    says nothing about whether a condition cleared."""
    return {name for name, result in run["audits"].items() if result["status"] in ("ok", "findings")}


def conditions(store: st.Store, run: dict, settings: dict) -> dict[str, Condition]:
    """The conditions that hold after `run`, keyed within its scope."""
    scope, found = scope_of(run), {}
    if settings["findings"]:
        floor = SEVERITIES.index(settings["findings"])
        for audit, result in run["audits"].items():
            for f in result["findings"]:
                if SEVERITIES.index(f["severity"]) >= floor:
                    key = f"{scope}/finding:{f['fingerprint']}"
                    found[key] = Condition(key, f"{audit}.{f['kind'] or 'finding'}", audit, f["severity"], f["message"],
                                           {f["key"]: f["value"]} if f["value"] is not None else {})
    for rule in settings["rules"]:
        hit = _rule_holds(store, run, rule)
        if hit is not None:
            key = f"{scope}/rule:{rule['name']}"
            found[key] = Condition(key, rule["name"], hit[0], rule.get("severity", "warning"), hit[1], hit[2])
    return found


def _rule_holds(store: st.Store, run: dict, rule: dict) -> tuple[str, str, dict] | None:
    """(audit, message, metrics) when the rule held in this run and in the `for_runs` - 1 runs
    of the same audit and schedule before it."""
    n, schedule = rule.get("for_runs", 1), run.get("schedule")
    until = pd.Timestamp(run["window"]["until"])
    if "metric" in rule:
        key, op, threshold = rule["metric"], rule["op"], rule["threshold"]
        audit = key.split(".")[0]
        value = run["audits"].get(audit, {}).get("metrics", {}).get(key)
        if value is None or not OPS[op](value, threshold):
            return None
        earlier = (store.metric_history([key], until, n - 1, schedule) if n > 1
                   else pd.DataFrame({"value": []}))
        if len(earlier) < n - 1 or not all(v is not None and OPS[op](v, threshold) for v in earlier["value"]):
            return None
        runs = f" for {n} runs in a row" if n > 1 else ""
        return audit, f"{rule['name']}: {key} = {value:.4g} {op} {threshold:g}{runs}", {key: value}
    matches = [(a, f) for a, r in run["audits"].items() for f in r["findings"] if f["kind"] == rule["finding"]]
    if not matches:
        return None
    audit, first = matches[0]
    if n > 1:
        # Enough of the newest runs to find n - 1 earlier windows among them, however many
        # runs share a window end.
        earlier = [r["document"] for r in store.runs(limit=4 * n, schedule=schedule)
                   if pd.Timestamp(r["until"]) < until and r["document"] and audit in completed(r["document"])][: n - 1]
        if len(earlier) < n - 1 or not all(any(f["kind"] == rule["finding"] for f in doc["audits"][audit]["findings"])
                                           for doc in earlier):
            return None
    return audit, f"{rule['name']}: {first['message']}", {first["key"]: first["value"]}


def evaluate(store: st.Store, run: dict, settings: dict, link: str) -> list[str]:
    """Write the alerts `run` causes to the outbox, with their deliveries, in one transaction;
    returns their ids. A condition fires once; it resolves when a later run of its audit and
    scope (one that completed) no longer shows it. A run of a window older than its scope's
    newest judges nothing: auditing last month again must not resolve or re-fire today's
    conditions. Evaluating the same run again writes nothing."""
    newest = store.newest_window_end(run.get("schedule"))
    if newest is not None and newest > pd.Timestamp(run["window"]["until"]):
        return []
    values = {k: v for result in run["audits"].values() for k, v in result["metrics"].items()}
    return judge(store, scope_of(run), conditions(store, run, settings), completed(run), settings,
                 Source(run["run_id"], run["window"], link, f"run {run['run_id']}", values))


@dataclass
class Source:
    """What judged the conditions: a run (its id, window, page and metric values), or the clock."""

    run_id: int | None
    window: dict | None
    link: str | None
    name: str  # for alert ids: the same source judging again writes the same alerts
    values: dict  # metric key: its value now, for the messages of what resolves


def judge(store: st.Store, scope: str, holding: dict[str, Condition], seen: set[str], settings: dict,
          source: Source) -> list[str]:
    """Open what holds and was not open, resolve what was open in `scope` and no longer holds
    where its audit was seen (`seen`), in one transaction; returns the alert ids written."""
    try:
        return _judge_once(store, scope, holding, seen, settings, source)
    except IntegrityError:  # a concurrent evaluation opened the same condition first: read again
        return _judge_once(store, scope, holding, seen, settings, source)


def _judge_once(store: st.Store, scope: str, holding: dict[str, Condition], seen: set[str], settings: dict,
                source: Source) -> list[str]:
    webhooks, created, now = [w["name"] for w in settings["webhooks"]], [], utc_now()
    with store.transaction() as conn:
        were_open = {row.condition: json.loads(row.payload) for row in conn.execute(
            select(st.open_conditions.c.condition, st.alerts.c.payload)
            .join(st.alerts, st.alerts.c.id == st.open_conditions.c.alert_id)
            .where(st.open_conditions.c.condition.startswith(f"{scope}/", autoescape=True)))}
        for key, c in holding.items():
            if key in were_open:
                continue  # still open: already sent
            alert_id = _write(conn, source, scope, key, "firing", c.rule, c.audit, c.severity, c.message,
                              c.metrics, webhooks, now)
            conn.execute(st.open_conditions.insert().values(condition=key, alert_id=alert_id,
                                                            opened_run_id=source.run_id))
            created.append(alert_id)
        for key, first in were_open.items():
            if key in holding or first["audit"] not in seen:
                continue
            now_values = {k: source.values[k] for k in first["metrics"] if source.values.get(k) is not None}
            alert_id = _write(conn, source, scope, key, "resolved", first["rule"], first["audit"],
                              first["severity"], resolved_message(first, source, now_values), now_values,
                              webhooks, now)
            conn.execute(st.open_conditions.delete().where(st.open_conditions.c.condition == key))
            created.append(alert_id)
    return created


def resolved_message(first: dict, source: Source, now_values: dict) -> str:
    """What cleared a condition, with the values that cleared it first, then what opened it.

    >>> first = {"message": "gini-high: feedback.gini = 0.947 > 0.8", "metrics": {"feedback.gini": 0.947},
    ...          "run_id": 7}
    >>> print(resolved_message(first, Source(9, None, None, "run 9", {}), {"feedback.gini": 0.41234}))
    resolved by run 9: feedback.gini = 0.4123 now, 0.947 when it opened (run 7): gini-high: feedback.gini = 0.947 > 0.8
    """
    was = first["metrics"]
    opened = f" (run {first['run_id']})" if first.get("run_id") is not None else ""
    told = [f"{k} = {v:.4g} now" + (f", {was[k]:.4g} when it opened{opened}" if was.get(k) is not None else "")
            for k, v in now_values.items()]
    return f"resolved by {source.name}: {'; '.join(told) or 'no longer found'}: {first['message']}"


def _write(conn, source: Source, scope: str, key: str, status: str, rule: str, audit: str, severity: str,
           message: str, metrics: dict, webhooks: list[str], now: pd.Timestamp) -> str:
    alert_id = hashlib.sha256(f"{source.name}|{key}|{status}".encode()).hexdigest()[:32]
    payload = {"schema": SCHEMA, "alert_id": alert_id, "status": status, "condition": key, "scope": scope,
               "rule": rule, "audit": audit, "severity": severity, "message": message, "metrics": metrics,
               "run_id": source.run_id, "window": source.window, "link": source.link, "created_at": now.isoformat()}
    conn.execute(st.alerts.insert().values(id=alert_id, created_at=now, run_id=source.run_id, condition=key,
                                           status=status, severity=severity, payload=json.dumps(payload)))
    for name in webhooks:
        conn.execute(st.alert_deliveries.insert().values(alert_id=alert_id, webhook=name, status="pending", attempts=0,
                                                         next_attempt_at=now))
    return alert_id


def check_freshness(store: st.Store, cfg: dict, now: pd.Timestamp | None = None) -> list[str]:
    """Judge silent data: an event kind that no ingest has stored for `audit.max_silence` of
    wall-clock time is a critical condition; it resolves when the kind arrives again. Returns the
    alert ids written."""
    from recaudit.audits import freshness

    limit = cfg["audit"]["max_silence"]
    if not limit:
        return []
    now = utc_now() if now is None else now
    holding, values = {}, {}
    for kind, silence, last in freshness.silences(store, now):
        key, metric = f"{FRESHNESS}/{kind}", f"freshness.silence_seconds.{kind}"
        values[metric] = silence.total_seconds()
        if silence > pd.Timedelta(limit):
            holding[key] = Condition(
                key, f"freshness.{kind}", FRESHNESS, "critical",
                f"no {kind} events for {freshness.spoken(silence)} (last stored {last:%Y-%m-%d %H:%M} UTC; "
                f"audit.max_silence {limit})", {metric: values[metric]})
    return judge(store, FRESHNESS, holding, {FRESHNESS}, cfg["alerts"],
                 Source(None, None, cfg["alerts"]["report_url"] or None, f"the freshness check at {now.isoformat()}",
                        values))


def open_now(store: st.Store) -> list[dict]:
    """The conditions open now across every audit and scope, worst first, then oldest: each
    alert payload's condition, scope, rule, audit, severity, message, metrics (when it opened),
    run_id (None for freshness) and link, with `since` (when it opened) and `latest` (each of
    its metrics' value in the newest window its own scope's runs recorded)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(st.alerts.c.payload, st.alerts.c.created_at)
                            .join(st.open_conditions, st.alerts.c.id == st.open_conditions.c.alert_id)).all()
        opened = [{**json.loads(payload), "since": pd.Timestamp(at).isoformat()} for payload, at in rows]
        keys = sorted({k for c in opened for k in c["metrics"] if not k.startswith(f"{FRESHNESS}.")})
        latest = {}
        if keys:
            query = (select(st.audit_runs.c.schedule, st.metrics.c.key, st.metrics.c.value)
                     .join(st.audit_runs, st.metrics.c.run_id == st.audit_runs.c.id)
                     .where(st.metrics.c.key.in_(keys), st.audit_runs.c.finished_at.is_not(None))
                     .order_by(st.audit_runs.c.until, st.audit_runs.c.id))
            # The last row of each (scope, key) wins: the newest window of the runs judging it.
            latest = {(scope_of({"schedule": schedule}), key): value for schedule, key, value in conn.execute(query)}
    now = utc_now()
    for c in opened:
        if c.get("scope") == FRESHNESS:  # silent still: the silence it opened with, grown since
            grown = (now - pd.Timestamp(c["since"])).total_seconds()
            c["latest"] = {k: v + grown for k, v in c["metrics"].items()}
        else:
            c["latest"] = {k: latest[c.get("scope"), k] for k in c["metrics"] if (c.get("scope"), k) in latest}
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(opened, key=lambda c: (order.get(c["severity"], len(order)), c["since"]))


def catch_up(store: st.Store, settings: dict) -> int:
    """Give every configured webhook the firing alerts of the conditions open now that it has
    no delivery of (a webhook added later hears of what is already open); returns how many."""
    names = [w["name"] for w in settings["webhooks"]]
    if not names:
        return 0
    with store.engine.connect() as conn:
        open_ids = [row[0] for row in conn.execute(select(st.open_conditions.c.alert_id)).all()]
        have = {tuple(row) for row in conn.execute(select(st.alert_deliveries.c.alert_id, st.alert_deliveries.c.webhook)
                                                   .where(st.alert_deliveries.c.alert_id.in_(open_ids))).all()}
    missing = [(a, w) for a in open_ids for w in names if (a, w) not in have]
    if not missing:
        return 0
    try:
        with store.transaction() as conn:
            now = utc_now()
            conn.execute(st.alert_deliveries.insert(), [{"alert_id": a, "webhook": w, "status": "pending",
                                                          "attempts": 0, "next_attempt_at": now} for a, w in missing])
    except IntegrityError:  # a concurrent delivery run caught up first
        return 0
    return len(missing)


def link_for(settings: dict, page: Path, run_id: int) -> str:
    if settings["report_url"]:
        return f"{settings['report_url'].rstrip('/')}/runs/{run_id}/index.html"
    return page.resolve().as_uri()


# ---------------------------------------------------------------------------------------------
# Delivery.

def body_for(payload: dict, fmt: str) -> bytes:
    """The body posted to a webhook of format `fmt` whose body is the payload's alone (json,
    slack, teams); `channels.body` for any webhook."""
    return channels.body({"format": fmt}, payload)


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Leaves every 3xx to raise HTTPError: urllib would follow a 301/302 with a GET without the
    body, and the GET's 200 would mark as delivered an alert that never arrived."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def post(webhook: dict, payload: dict) -> None:
    """Send one alert through the webhook's channel (`format`); raises unless the channel took
    it: for an email, the SMTP server's refusal (`channels.send_email`); for the others, anything
    but a 2xx answer to the POST within the timeout, a redirect included (it is not followed)."""
    if webhook.get("format") == channels.EMAIL:
        channels.send_email(webhook, payload)
        return
    body = channels.body(webhook, payload)
    headers = {"Content-Type": "application/json", "User-Agent": "recaudit",
               "Idempotency-Key": payload["alert_id"], "X-Recaudit-Alert-Id": payload["alert_id"]}
    if webhook.get("secret_env"):
        headers[SIGNATURE_HEADER] = sign(body, channels.environment(webhook, "secret_env", "the webhook's secret"))
    request = urllib.request.Request(webhook["url"], data=body, headers=headers, method="POST")
    with _OPENER.open(request, timeout=webhook.get("timeout", 5.0)) as response:
        response.read()


def deliver(store: st.Store, settings: dict, clock: Callable[[], pd.Timestamp] = utc_now) -> dict:
    """Post every delivery that is due; failures are retried later with exponential backoff.
    Returns counts: delivered, failed (will be retried), waiting (not yet due).

    Each attempt reads `clock` when it starts (whether it is due, and its lease) and when it
    ends (its backoff, or delivered_at): a run that posts for longer than a lease must not
    write leases already past, which a concurrent run would claim and post again."""
    catch_up(store, settings)
    webhooks = {w["name"]: w for w in settings["webhooks"]}
    query = (select(st.alert_deliveries, st.alerts.c.payload)
             .join(st.alerts, st.alerts.c.id == st.alert_deliveries.c.alert_id)
             .where(st.alert_deliveries.c.status == "pending").order_by(st.alerts.c.created_at, st.alerts.c.id))
    with store.engine.connect() as conn:
        pending = conn.execute(query).mappings().all()
    counts = {"delivered": 0, "failed": 0, "waiting": 0, "unknown_webhook": 0}
    for row in pending:
        hook = webhooks.get(row["webhook"])
        if hook is None:
            counts["unknown_webhook"] += 1  # kept: it is delivered if the webhook is configured again
            continue
        now = clock()
        if pd.Timestamp(row["next_attempt_at"]) > now:
            counts["waiting"] += 1
            continue
        where = (st.alert_deliveries.c.alert_id == row["alert_id"]) & (st.alert_deliveries.c.webhook == row["webhook"])
        lease = now + pd.Timedelta(seconds=hook.get("timeout", 5.0) + LEASE_SECONDS)
        with store.transaction() as conn:  # claim it, so that a concurrent delivery run leaves it alone
            claimed = conn.execute(update(st.alert_deliveries).where(
                where, st.alert_deliveries.c.status == "pending",
                st.alert_deliveries.c.next_attempt_at == row["next_attempt_at"]).values(
                next_attempt_at=lease)).rowcount
        if not claimed:
            continue
        attempts = row["attempts"] + 1
        try:
            post(hook, json.loads(row["payload"]))
        except Exception as exc:  # any failure is retried: nothing is lost
            delay = min(settings["max_backoff_seconds"], settings["backoff_seconds"] * 2 ** min(attempts - 1, 30))
            values = {"attempts": attempts, "last_error": describe_error(exc),
                      "next_attempt_at": clock() + pd.Timedelta(seconds=delay)}
            # Only while the claim is still this run's: a post that outlived its lease may have
            # been claimed and delivered by another run, whose record must stand.
            still_ours = (st.alert_deliveries.c.status == "pending") & (st.alert_deliveries.c.next_attempt_at == lease)
            counts["failed"] += 1
        else:
            values = {"attempts": attempts, "status": "delivered", "delivered_at": clock(), "last_error": None}
            still_ours = st.alert_deliveries.c.status == "pending"  # delivered is a fact, whoever claims it now
            counts["delivered"] += 1
        with store.transaction() as conn:
            conn.execute(update(st.alert_deliveries).where(where, still_ours).values(**values))
    return counts


def describe_error(exc: Exception) -> str:
    if isinstance(exc, channels.NotSent):  # its message says it all
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        if 300 <= exc.code < 400:
            return (f"HTTP {exc.code}: the receiver redirected to {exc.headers.get('Location') or 'no Location'}; "
                    "redirects are not followed: set the webhook's url to the final address")
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def outbox(store: st.Store) -> list[dict]:
    """Every alert, newest first, with the state of its deliveries."""
    with store.engine.connect() as conn:
        newest_first = select(st.alerts).order_by(st.alerts.c.created_at.desc(), st.alerts.c.id)
        alerts = conn.execute(newest_first).mappings().all()
        deliveries = conn.execute(select(st.alert_deliveries)).mappings().all()
    by_alert: dict[str, list] = {}
    for d in deliveries:
        by_alert.setdefault(d["alert_id"], []).append(
            {"webhook": d["webhook"], "status": d["status"], "attempts": d["attempts"], "last_error": d["last_error"],
             "next_attempt_at": str(d["next_attempt_at"]), "delivered_at": str(d["delivered_at"] or "") or None})
    return [{**json.loads(a["payload"]), "deliveries": by_alert.get(a["id"], [])} for a in alerts]


def test_payload() -> dict:
    now = utc_now()
    return {"schema": SCHEMA, "alert_id": "test-" + hashlib.sha256(now.isoformat().encode()).hexdigest()[:16],
            "status": "test", "condition": "test", "rule": "test", "audit": None, "severity": "info",
            "message": "a test alert from recaudit: this webhook is reachable and verifies the signature",
            "metrics": {}, "run_id": None, "window": None, "link": None, "created_at": now.isoformat()}

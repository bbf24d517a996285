"""Alerts that reach on-call once, signed, and never get lost.

After a run, `evaluate` turns its findings and the configured rules into conditions. A
condition that opens writes a "firing" alert to the outbox; while it stays open nothing more
is sent; when it clears, one "resolved" alert. Each alert gets one delivery row per webhook,
written in the same transaction, and `deliver` posts what is due: signed with HMAC-SHA256,
with the alert id as idempotency key, a timeout, and exponential backoff on failure. A
receiver that is down gets every alert once it is back; an alert is never given up.

Payload (JSON, schema "recaudit.alert/1"):
    {"schema", "alert_id", "status": "firing" | "resolved", "condition", "rule", "audit", "severity",
     "message", "metrics": {key: value}, "run_id", "window": {"since", "until"}, "link",
     "created_at"}
Slack-compatible webhooks (format = "slack") get {"text": "..."} instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from recaudit.audits import store as st
from recaudit.audits.result import SEVERITIES
from recaudit.clock import utc_now

SCHEMA = "recaudit.alert/1"
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
       "!=": operator.ne}
SIGNATURE_HEADER = "X-Recaudit-Signature"
LEASE_SECONDS = 60  # a claimed delivery is retried by others only after its timeout and this


@dataclass
class Condition:
    key: str  # stable: the rule's name, or the finding's fingerprint
    rule: str
    audit: str  # the audit whose results say whether it holds
    severity: str
    message: str
    metrics: dict


def completed(run: dict) -> set[str]:
    """The audits of a run that looked at the data: an errored audit or one without enough data
    says nothing about whether a condition cleared."""
    return {name for name, result in run["audits"].items() if result["status"] in ("ok", "findings")}


def conditions(store: st.Store, run: dict, settings: dict) -> dict[str, Condition]:
    """The conditions that hold after `run`."""
    found: dict[str, Condition] = {}
    if settings["findings"]:
        floor = SEVERITIES.index(settings["findings"])
        for audit, result in run["audits"].items():
            for f in result["findings"]:
                if SEVERITIES.index(f["severity"]) >= floor:
                    key = f"finding:{f['fingerprint']}"
                    found[key] = Condition(key, f"{audit}.{f['kind'] or 'finding'}", audit, f["severity"], f["message"],
                                           {f["key"]: f["value"]} if f["value"] is not None else {})
    for rule in settings["rules"]:
        hit = _rule_holds(store, run, rule)
        if hit is not None:
            key = f"rule:{rule['name']}"
            found[key] = Condition(key, rule["name"], hit[0], rule.get("severity", "warning"), hit[1], hit[2])
    return found


def _rule_holds(store: st.Store, run: dict, rule: dict) -> tuple[str, str, dict] | None:
    """(audit, message, metrics) when the rule held in this run and in the `for_runs` - 1 runs
    of the same audit before it."""
    n = rule.get("for_runs", 1)
    until = pd.Timestamp(run["window"]["until"])
    if "metric" in rule:
        key, op, threshold = rule["metric"], rule["op"], rule["threshold"]
        audit = key.split(".")[0]
        value = run["audits"].get(audit, {}).get("metrics", {}).get(key)
        if value is None or not OPS[op](value, threshold):
            return None
        earlier = store.metric_history([key], until, n - 1) if n > 1 else pd.DataFrame({"value": []})
        if len(earlier) < n - 1 or not all(v is not None and OPS[op](v, threshold) for v in earlier["value"]):
            return None
        runs = f" for {n} runs in a row" if n > 1 else ""
        return audit, f"{rule['name']}: {key} = {value:.4g} {op} {threshold:g}{runs}", {key: value}
    matches = [(a, f) for a, r in run["audits"].items() for f in r["findings"] if f["kind"] == rule["finding"]]
    if not matches:
        return None
    audit, first = matches[0]
    if n > 1:
        earlier = [r["document"] for r in store.runs() if pd.Timestamp(r["until"]) < until and r["document"]
                   and audit in completed(r["document"])][: n - 1]
        if len(earlier) < n - 1 or not all(any(f["kind"] == rule["finding"] for f in doc["audits"][audit]["findings"])
                                           for doc in earlier):
            return None
    return audit, f"{rule['name']}: {first['message']}", {first["key"]: first["value"]}


def evaluate(store: st.Store, run: dict, settings: dict, link: str) -> list[str]:
    """Write the alerts `run` causes to the outbox, with their deliveries, in one transaction;
    returns their ids. A condition fires once; it resolves when a later run of its audit
    (one that completed) no longer shows it. Evaluating the same run again writes nothing."""
    holding, seen = conditions(store, run, settings), completed(run)
    webhooks = [w["name"] for w in settings["webhooks"]]
    for _attempt in range(2):  # a concurrent evaluation may open the same condition first: read again
        created = []
        now = utc_now()
        try:
            with store.transaction() as conn:
                were_open = {row.condition: json.loads(row.payload) for row in conn.execute(
                    select(st.open_conditions.c.condition, st.alerts.c.payload)
                    .join(st.alerts, st.alerts.c.id == st.open_conditions.c.alert_id))}
                for key, c in holding.items():
                    if key in were_open:
                        continue  # still open: already sent
                    alert_id = _write(conn, run, key, "firing", c.rule, c.audit, c.severity, c.message, c.metrics,
                                      link, webhooks, now)
                    conn.execute(st.open_conditions.insert().values(condition=key, alert_id=alert_id,
                                                                    opened_run_id=run["run_id"]))
                    created.append(alert_id)
                for key, first in were_open.items():
                    if key in holding or first["audit"] not in seen:
                        continue
                    alert_id = _write(conn, run, key, "resolved", first["rule"], first["audit"], first["severity"],
                                      f"resolved: {first['message']}", {}, link, webhooks, now)
                    conn.execute(st.open_conditions.delete().where(st.open_conditions.c.condition == key))
                    created.append(alert_id)
            return created
        except IntegrityError:
            continue
    return []


def _write(conn, run: dict, key: str, status: str, rule: str, audit: str, severity: str, message: str,
           metrics: dict, link: str, webhooks: list[str], now: pd.Timestamp) -> str:
    alert_id = hashlib.sha256(f"{run['run_id']}|{key}|{status}".encode()).hexdigest()[:32]
    payload = {"schema": SCHEMA, "alert_id": alert_id, "status": status, "condition": key, "rule": rule,
               "audit": audit, "severity": severity, "message": message, "metrics": metrics, "run_id": run["run_id"],
               "window": run["window"], "link": link, "created_at": now.isoformat()}
    conn.execute(st.alerts.insert().values(id=alert_id, created_at=now, run_id=run["run_id"], condition=key,
                                           status=status, severity=severity, payload=json.dumps(payload)))
    for name in webhooks:
        conn.execute(st.alert_deliveries.insert().values(alert_id=alert_id, webhook=name, status="pending", attempts=0,
                                                         next_attempt_at=now))
    return alert_id


def link_for(settings: dict, page: Path, run_id: int) -> str:
    if settings["report_url"]:
        return f"{settings['report_url'].rstrip('/')}/runs/{run_id}/index.html"
    return page.resolve().as_uri()


# ---------------------------------------------------------------------------------------------
# Delivery.

def body_for(payload: dict, fmt: str) -> bytes:
    if fmt == "slack":
        text = f"[{payload['status'].upper()}] {payload['severity']}: {payload['message']} (run {payload['run_id']}"
        text += f", {payload['link']})" if payload.get("link") else ")"
        return json.dumps({"text": text}).encode()
    return json.dumps(payload, sort_keys=True).encode()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Leaves every 3xx to raise HTTPError: urllib would follow a 301/302 with a GET without the
    body, and the GET's 200 would mark as delivered an alert that never arrived."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def post(webhook: dict, payload: dict) -> None:
    """POST one alert; raises on anything but a 2xx answer within the timeout, a redirect
    included (it is not followed)."""
    body = body_for(payload, webhook.get("format", "json"))
    headers = {"Content-Type": "application/json", "User-Agent": "recaudit",
               "Idempotency-Key": payload["alert_id"], "X-Recaudit-Alert-Id": payload["alert_id"]}
    if webhook.get("secret_env"):
        secret = os.environ.get(webhook["secret_env"])
        if not secret:
            raise RuntimeError(f"the environment variable {webhook['secret_env']} (the webhook's secret) is not set")
        headers[SIGNATURE_HEADER] = sign(body, secret)
    request = urllib.request.Request(webhook["url"], data=body, headers=headers, method="POST")
    with _OPENER.open(request, timeout=webhook.get("timeout", 5.0)) as response:
        response.read()


def deliver(store: st.Store, settings: dict, clock: Callable[[], pd.Timestamp] = utc_now) -> dict:
    """Post every delivery that is due; failures are retried later with exponential backoff.
    Returns counts: delivered, failed (will be retried), waiting (not yet due).

    Each attempt reads `clock` when it starts (whether it is due, and its lease) and when it
    ends (its backoff, or delivered_at): a run that posts for longer than a lease must not
    write leases already past, which a concurrent run would claim and post again."""
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

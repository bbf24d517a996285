"""What each alert channel receives: how an alert's payload becomes a message for it, and how
that message is sent.

The outbox (reports/alerts.py) decides when an alert is sent, and retries; this module decides
what a channel gets. A webhook's `format` names its channel:

- ``json``: the payload itself, signed with HMAC-SHA256 when the webhook has a secret.
- ``slack``: ``{"text": one line}``.
- ``teams``: a message holding an Adaptive Card 1.4, for a Teams Workflows (or incoming) webhook.
- ``pagerduty``: a PagerDuty Events API v2 event: "trigger" when a condition fires, "resolve"
  when it clears, both with the condition's key as ``dedup_key``, so that PagerDuty holds one
  incident per condition however often it is told.
- ``email``: a plain-text message over SMTP (STARTTLS, then login), whose Message-ID is made from
  the alert id, so that the copies a retry may send are one message to the mail system.

The HTTP channels' bodies are posted by `alerts.post`, with the alert id as Idempotency-Key.
Secrets are read from the environment variables a webhook names, when it is sent: one that is
not set fails the delivery (`NotSent`), which the outbox retries like any other failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

EMAIL = "email"  # the channel that is no HTTP request
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")  # recaudit's severities are among them
SUMMARY_LIMIT = 1024  # PagerDuty refuses a longer payload.summary
DEDUP_KEY_LIMIT = 255  # and a longer dedup_key
SUBJECT_LIMIT = 120  # of the message's first line, in an email's subject
# The colour of a Teams card's headline: by status when it is no firing alert, else by severity.
TEAMS_COLOURS = {"resolved": "Good", "test": "Accent"}
TEAMS_SEVERITY_COLOURS = {"critical": "Attention", "warning": "Warning", "info": "Accent"}


class NotSent(RuntimeError):
    """A delivery that failed for a reason its message says in full: a secret missing from the
    environment, or what an SMTP server refused."""


def environment(webhook: dict, setting: str, what: str) -> str:
    """The value of the environment variable that `setting` of `webhook` names (`what` it
    holds, for the error when it is not set)."""
    name = webhook[setting]
    value = os.environ.get(name)
    if not value:
        raise NotSent(f"the environment variable {name} ({what}) is not set")
    return value


# -- what each channel receives ------------------------------------------------------------------

def body(webhook: dict, payload: dict) -> bytes:
    """The JSON body posted to the webhook's HTTP channel."""
    fmt = webhook.get("format", "json")
    if fmt == "pagerduty":
        message = pagerduty_event(payload, environment(webhook, "routing_key_env", "the PagerDuty routing key"))
    else:
        message = payload if fmt == "json" else {"slack": slack_message, "teams": teams_message}[fmt](payload)
    return json.dumps(message, sort_keys=True).encode()


def headline(payload: dict) -> str:
    """How every channel starts an alert: ``[FIRING] critical``."""
    return f"[{payload['status'].upper()}] {payload['severity']}"


def slack_message(payload: dict) -> dict:
    where = [f"run {payload['run_id']}"] if payload.get("run_id") is not None else []
    where += [payload["link"]] if payload.get("link") else []
    text = f"{headline(payload)}: {payload['message']}"
    return {"text": text + (f" ({', '.join(where)})" if where else "")}


def teams_message(payload: dict) -> dict:
    """A Teams message whose card has the headline, the message, the metrics and what judged
    them as facts, and a button to the report when it is on the web."""
    facts = [{"title": key, "value": value} for key, value in details(payload)]
    colour = TEAMS_COLOURS.get(payload["status"]) or TEAMS_SEVERITY_COLOURS[payload["severity"]]
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4",
            "body": [{"type": "TextBlock", "text": headline(payload), "weight": "Bolder", "size": "Medium",
                      "color": colour, "wrap": True},
                     {"type": "TextBlock", "text": payload["message"], "wrap": True}]}
    if facts:
        card["body"].append({"type": "FactSet", "facts": facts})
    if _on_the_web(payload.get("link")):  # Teams opens no file:// link of the machine that ran the audit
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the report", "url": payload["link"]}]
    return {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                                 "contentUrl": None, "content": card}]}


def pagerduty_event(payload: dict, routing_key: str) -> dict:
    """The Events API v2 event of an alert. A condition's alerts share its key as dedup_key:
    its "firing" triggers an incident, its "resolved" resolves that one; a test alert triggers
    an incident of its own."""
    key = payload["alert_id"] if payload["status"] == "test" else payload["condition"]
    if len(key) > DEDUP_KEY_LIMIT:  # the same long key always becomes the same short one
        key = hashlib.sha256(key.encode()).hexdigest()
    event = {"routing_key": routing_key, "dedup_key": key,
             "event_action": "resolve" if payload["status"] == "resolved" else "trigger"}
    if event["event_action"] == "resolve":  # PagerDuty resolves by dedup_key alone
        return event
    summary = payload["message"]
    event["payload"] = {
        "summary": summary if len(summary) <= SUMMARY_LIMIT else summary[:SUMMARY_LIMIT - 1] + "…",
        "source": "recaudit", "severity": payload["severity"], "timestamp": _with_zone(payload["created_at"]),
        "class": payload["rule"],
        "custom_details": {"metrics": payload["metrics"], "run_id": payload["run_id"], "window": payload["window"],
                           "scope": payload.get("scope"), "condition": payload["condition"],
                           "alert_id": payload["alert_id"], "link": payload.get("link")}}
    if payload.get("audit"):
        event["payload"]["component"] = payload["audit"]
    if payload.get("link"):
        event["links"] = [{"href": payload["link"], "text": _report_name(payload)}]
    return event


def email_message(webhook: dict, payload: dict) -> EmailMessage:
    """A plain-text email of the alert. Its Message-ID is made from the alert id, so that a copy
    sent again after a failed attempt is recognisably the same message (mail systems and clients
    drop duplicates by it)."""
    head = payload["message"].splitlines()[0] if payload["message"] else ""
    head = head if len(head) <= SUBJECT_LIMIT else head[:SUBJECT_LIMIT - 1] + "…"
    message = EmailMessage()
    message["Subject"] = f"{headline(payload)}: {head}"
    message["From"] = webhook["sender"]
    message["To"] = ", ".join(webhook["to"])
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{payload['alert_id']}@{webhook['sender'].rpartition('@')[2]}>"
    message["X-Recaudit-Alert-Id"] = payload["alert_id"]
    lines = [payload["message"], ""]
    lines += [f"{key}: {value}" for key, value in details(payload)]
    lines += ["", f"condition: {payload['condition']}", f"alert: {payload['alert_id']}"]
    message.set_content("\n".join(lines) + "\n")
    return message


def details(payload: dict) -> list[tuple[str, str]]:
    """(name, value) of what a reader wants beside the message: each metric, then the audit, the
    run, the window and the report."""
    told = [(key, f"{value:.4g}" if isinstance(value, float) else str(value))
            for key, value in payload["metrics"].items()]
    window = payload.get("window")
    told += [(name, str(value)) for name, value in (
        ("audit", payload.get("audit")), ("run", payload.get("run_id")),
        ("window", f"{window['since']} → {window['until']}" if window else None),
        ("report", payload.get("link"))) if value is not None and value != ""]
    return told


def _report_name(payload: dict) -> str:
    return f"the report of run {payload['run_id']}" if payload.get("run_id") is not None else "the report"


def _on_the_web(link: str | None) -> bool:
    return bool(link) and link.startswith(("http://", "https://"))


def _with_zone(timestamp: str) -> str:
    """An ISO 8601 time with its zone: the payload's times are UTC written without one."""
    return timestamp if re.search(r"(Z|[+-]\d\d:\d\d)$", timestamp) else timestamp + "+00:00"


# -- sending by email -----------------------------------------------------------------------------

def send_email(webhook: dict, payload: dict) -> None:
    """Send the alert by SMTP: STARTTLS (verifying the server's certificate against `ca_file`,
    or the system's CAs) when `starttls`, then the login when the webhook has one. Raises
    `NotSent` saying what failed when the server does not take the message for every recipient:
    the outbox then sends it again to all of them, under the same Message-ID."""
    message = email_message(webhook, payload)
    # Read before connecting: a missing secret or CA file fails without a word to the server.
    login = ((environment(webhook, "username_env", "the SMTP login"),
              environment(webhook, "password_env", "the SMTP password")) if webhook["username_env"] else None)
    try:
        context = ssl.create_default_context(cafile=webhook["ca_file"] or None) if webhook["starttls"] else None
    except (OSError, ssl.SSLError) as exc:
        raise NotSent(f"the ca_file {webhook['ca_file']} cannot be read as PEM certificates: {exc}") from exc
    where = f"SMTP {webhook['smtp_host']}:{webhook['smtp_port']}"
    smtp = _step(where, "connecting", smtplib.SMTP, webhook["smtp_host"], webhook["smtp_port"],
                 timeout=webhook["timeout"])
    with smtp:
        if context is not None:
            _step(where, "STARTTLS", smtp.starttls, context=context)
        if login:
            _step(where, "login", smtp.login, *login)
        refused = _step(where, "sending", smtp.send_message, message)
    if refused:  # some recipients, not all: those refused must get it too
        raise NotSent(f"{where}: sending: refused {_refused(refused)}")


def _step(where: str, what: str, call, *args, **kwargs):
    """`call(*args, **kwargs)`; its failure as a `NotSent` naming the server and the step."""
    try:
        return call(*args, **kwargs)
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotSent(f"{where}: {what}: refused {_refused(exc.recipients)}") from exc
    except smtplib.SMTPResponseException as exc:
        raise NotSent(f"{where}: {what}: refused with {exc.smtp_code} {_text(exc.smtp_error)}") from exc
    except (smtplib.SMTPException, OSError) as exc:  # not offered, disconnected, unreachable, TLS, timed out
        raise NotSent(f"{where}: {what}: {exc}") from exc


def _refused(recipients: dict) -> str:
    return ", ".join(f"{to} ({code} {_text(why)})" for to, (code, why) in recipients.items())


def _text(answer: bytes | str) -> str:
    return answer.decode(errors="replace") if isinstance(answer, bytes) else answer

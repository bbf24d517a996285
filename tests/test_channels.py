"""The alert channels against real servers on 127.0.0.1: HTTP receivers for JSON, Slack, Teams
and PagerDuty, and an SMTP server (aiosmtpd) that takes mail only after STARTTLS and a login,
for email. Every channel is sent through the same outbox: its failures are retried until the
server is back, and nothing is lost."""

import datetime
import email
import email.policy
import ipaddress
import json
import ssl

import pandas as pd
import pytest
from test_alerts import finding, run_document

from recaudit.audits import config as configuration
from recaudit.audits.vocabulary import SEVERITIES
from recaudit.recsys.formats import InputError
from recaudit.reports import alerts, channels
from support import Receiver, free_port, run_cli

ROUTING_KEY_ENV = "RECAUDIT_TEST_PAGERDUTY_KEY"
USER_ENV, PASSWORD_ENV = "RECAUDIT_TEST_SMTP_USER", "RECAUDIT_TEST_SMTP_PASSWORD"
USER, PASSWORD = "alerts", "correct horse"
LINK = "https://reports.example.org/runs/1/index.html"


# -- servers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A throwaway self-signed certificate of 127.0.0.1 and its key: (cert.pem, key.pem). The
    client trusts it as its CA (`ca_file`), as a site would trust its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recaudit test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


class Mailbox:
    """An SMTP server on 127.0.0.1 that refuses everything but STARTTLS before TLS, and mail
    before a login as USER with PASSWORD: records each login attempt (mechanism, user, over TLS)
    and each message taken (sender, recipients, over TLS, the parsed message)."""

    def __init__(self, certificate, port: int = 0):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.logins, self.messages = [], []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                outer.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos, "tls": bool(session.ssl),
                                       "message": email.message_from_bytes(envelope.content,
                                                                           policy=email.policy.default)})
                return "250 Message accepted for delivery"

        def authenticator(server, session, envelope, mechanism, login):
            self.logins.append((mechanism, login.login.decode(), bool(session.ssl)))
            # handled=False: the server answers a refusal with 535 itself
            return AuthResult(success=(login.login, login.password) == (USER.encode(), PASSWORD.encode()),
                              handled=False)

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*certificate)
        self.port = port or free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=tls,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=authenticator)
        self.controller.start()

    def close(self):
        self.controller.stop()


@pytest.fixture
def receiver():
    r = Receiver(plan=[(202, 0)] * 10)  # what PagerDuty answers; any 2xx is taken
    yield r
    r.close()


@pytest.fixture
def mailbox(certificate):
    m = Mailbox(certificate)
    yield m
    m.close()


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv(ROUTING_KEY_ENV, "R0UTING-KEY")
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return monkeypatch


# -- configuration ----------------------------------------------------------------------------------

def hook(fmt: str, where, certificate=None) -> dict:
    """A webhook of channel `fmt`: `where` is the receiver's URL, or the SMTP server's port."""
    if fmt == "email":
        return {"name": "mail", "format": "email", "smtp_host": "127.0.0.1", "smtp_port": where,
                "username_env": USER_ENV, "password_env": PASSWORD_ENV, "sender": "recaudit@example.org",
                "to": ["oncall@example.org", "lead@example.org"], "ca_file": str(certificate[0]), "timeout": 5.0}
    if fmt == "pagerduty":
        return {"name": "pd", "format": "pagerduty", "url": where, "routing_key_env": ROUTING_KEY_ENV, "timeout": 2.0}
    return {"name": fmt, "format": fmt, "url": where, "timeout": 2.0}


def configured(*webhooks: dict) -> dict:
    """The alert settings with these webhooks, checked as recaudit.toml's are."""
    return configuration.resolve({"alerts": {"webhooks": list(webhooks)}})["alerts"]


def fire(store, s, run_id=1, day=0, link=LINK) -> str:
    [alert_id] = alerts.evaluate(store, run_document(run_id, day, {"fairness": ({}, [finding()])}), s, link)
    return alert_id


def resolve(store, s, run_id=2, day=1) -> str:
    [alert_id] = alerts.evaluate(store, run_document(run_id, day, {"fairness": ({}, [])}), s, LINK)
    return alert_id


def later(hours=2):
    return lambda: pd.Timestamp.now("UTC").tz_localize(None) + pd.Timedelta(hours=hours)


# -- PagerDuty --------------------------------------------------------------------------------------

def test_a_pagerduty_condition_triggers_and_resolves_under_one_dedup_key(store, receiver, secrets):
    s = configured(hook("pagerduty", receiver.url))
    fired = fire(store, s)
    assert alerts.deliver(store, s)["delivered"] == 1
    resolved = resolve(store, s)
    assert alerts.deliver(store, s)["delivered"] == 1
    trigger, resolution = (json.loads(r["body"]) for r in receiver.requests)
    condition = alerts.outbox(store)[0]["condition"]
    assert trigger["routing_key"] == resolution["routing_key"] == "R0UTING-KEY"
    assert trigger["event_action"] == "trigger" and resolution["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolution["dedup_key"] == condition
    event = trigger["payload"]
    assert event["summary"] == "fairness.rmse_gap.sex is too large" and event["source"] == "recaudit"
    assert event["severity"] == "warning" and event["component"] == "fairness"
    assert event["timestamp"].endswith("+00:00")
    assert event["custom_details"]["metrics"] == {"fairness.rmse_gap.sex": 0.4}
    assert event["custom_details"]["run_id"] == 1 and event["custom_details"]["window"]["since"].startswith("2024")
    assert trigger["links"] == [{"href": LINK, "text": "the report of run 1"}]
    assert [r["headers"]["Idempotency-Key"] for r in receiver.requests] == [fired, resolved]
    assert [r["headers"]["X-Recaudit-Alert-Id"] for r in receiver.requests] == [fired, resolved]


def test_a_missing_routing_key_is_a_retried_failure_that_names_its_variable(store, receiver, monkeypatch):
    monkeypatch.delenv(ROUTING_KEY_ENV, raising=False)
    s = configured(hook("pagerduty", receiver.url))
    fire(store, s)
    assert alerts.deliver(store, s)["failed"] == 1 and receiver.requests == []
    [state] = alerts.outbox(store)[0]["deliveries"]
    assert state["status"] == "pending"
    assert state["last_error"] == f"the environment variable {ROUTING_KEY_ENV} (the PagerDuty routing key) is not set"
    monkeypatch.setenv(ROUTING_KEY_ENV, "R0UTING-KEY")
    assert alerts.deliver(store, s, clock=later())["delivered"] == 1
    assert json.loads(receiver.requests[0]["body"])["routing_key"] == "R0UTING-KEY"


def test_recaudit_severities_are_pagerduty_severities_as_they_are():
    assert set(SEVERITIES) <= set(channels.PAGERDUTY_SEVERITIES)


def test_a_pagerduty_summary_and_dedup_key_are_cut_to_what_pagerduty_takes():
    payload = {**alerts.test_payload(), "status": "firing", "message": "x" * 5000, "condition": "c" * 300}
    event = channels.pagerduty_event(payload, "key")
    assert len(event["payload"]["summary"]) == channels.SUMMARY_LIMIT and event["payload"]["summary"].endswith("…")
    assert len(event["dedup_key"]) <= channels.DEDUP_KEY_LIMIT
    assert channels.pagerduty_event({**payload, "status": "resolved"}, "key")["dedup_key"] == event["dedup_key"]


# -- Teams ------------------------------------------------------------------------------------------

def test_a_teams_webhook_gets_an_adaptive_card_with_the_alert_its_metrics_and_a_link(store, receiver):
    s = configured(hook("teams", receiver.url))
    fire(store, s)
    assert alerts.deliver(store, s)["delivered"] == 1
    message = json.loads(receiver.requests[0]["body"])
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    title, text, facts = card["body"]
    assert title["text"] == "[FIRING] warning" and title["weight"] == "Bolder" and title["color"] == "Warning"
    assert text["text"] == "fairness.rmse_gap.sex is too large"
    assert facts["type"] == "FactSet" and {"title": "fairness.rmse_gap.sex", "value": "0.4"} in facts["facts"]
    assert {"title": "run", "value": "1"} in facts["facts"]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open the report", "url": LINK}]


def test_a_teams_card_has_no_button_to_a_report_on_the_auditing_machine():
    card = channels.teams_message({**alerts.test_payload(), "link": "file:///srv/r/index.html"})
    assert "actions" not in card["attachments"][0]["content"]


# -- email ------------------------------------------------------------------------------------------

def test_an_email_arrives_after_starttls_and_login_with_the_alerts_subject_and_headers(store, mailbox, secrets,
                                                                                     certificate):
    s = configured(hook("email", mailbox.port, certificate))
    alert_id = fire(store, s)
    assert alerts.deliver(store, s)["delivered"] == 1
    [mechanism_user_tls] = mailbox.logins
    assert mechanism_user_tls[0] in ("PLAIN", "LOGIN") and mechanism_user_tls[1:] == (USER, True)
    [got] = mailbox.messages
    assert got["tls"] and got["from"] == "recaudit@example.org"
    assert got["to"] == ["oncall@example.org", "lead@example.org"]
    message = got["message"]
    assert message["Subject"] == "[FIRING] warning: fairness.rmse_gap.sex is too large"
    assert message["Message-ID"] == f"<{alert_id}@example.org>" and message["X-Recaudit-Alert-Id"] == alert_id
    text = message.get_content()
    assert "fairness.rmse_gap.sex is too large" in text and "fairness.rmse_gap.sex: 0.4" in text
    assert f"report: {LINK}" in text and "window: 2024-01-01" in text


def test_a_wrong_smtp_password_is_a_retried_failure_that_sends_nothing(store, mailbox, secrets, certificate):
    secrets.setenv(PASSWORD_ENV, "wrong")
    s = configured(hook("email", mailbox.port, certificate))
    fire(store, s)
    assert alerts.deliver(store, s)["failed"] == 1 and mailbox.messages == []
    [state] = alerts.outbox(store)[0]["deliveries"]
    assert state["status"] == "pending" and state["last_error"].startswith(f"SMTP 127.0.0.1:{mailbox.port}: login: "
                                                                           "refused with 535")
    secrets.setenv(PASSWORD_ENV, PASSWORD)
    assert alerts.deliver(store, s, clock=later())["delivered"] == 1 and len(mailbox.messages) == 1


def test_an_smtp_server_whose_certificate_is_not_trusted_gets_no_password(store, mailbox, secrets, certificate):
    s = configured({**hook("email", mailbox.port, certificate), "ca_file": ""})  # the system's CAs only
    fire(store, s)
    assert alerts.deliver(store, s)["failed"] == 1
    assert mailbox.logins == [] and mailbox.messages == []
    assert "STARTTLS: [SSL: CERTIFICATE_VERIFY_FAILED]" in alerts.outbox(store)[0]["deliveries"][0]["last_error"]


# -- every channel ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "slack", "teams", "pagerduty", "email"])
def test_every_channel_that_is_down_gets_its_alert_from_the_same_outbox_once_it_is_back(store, secrets, certificate,
                                                                                        fmt):
    port = free_port()
    s = configured(hook(fmt, port if fmt == "email" else f"http://127.0.0.1:{port}/hook", certificate))
    alert_id = fire(store, s)
    assert alerts.deliver(store, s) == {"delivered": 0, "failed": 1, "waiting": 0, "unknown_webhook": 0}
    [state] = alerts.outbox(store)[0]["deliveries"]
    assert state["status"] == "pending" and state["last_error"]
    assert alerts.deliver(store, s)["waiting"] == 1  # backing off
    server = Mailbox(certificate, port) if fmt == "email" else Receiver(port)
    try:
        assert alerts.deliver(store, s, clock=later())["delivered"] == 1
        assert alerts.deliver(store, s, clock=later(4))["delivered"] == 0  # once, never again
        if fmt == "email":
            [got] = server.messages
            assert got["message"]["X-Recaudit-Alert-Id"] == alert_id
        else:
            [request] = server.requests
            assert request["headers"]["Idempotency-Key"] == request["headers"]["X-Recaudit-Alert-Id"] == alert_id
    finally:
        server.close()


@pytest.mark.parametrize("entry, message", [
    ({"name": "pd", "format": "pagerduty"}, "alerts.webhooks[1].routing_key_env: is required"),
    ({"name": "mail", "format": "email", "smtp_host": "smtp.example.org", "sender": "recaudit@example.org"},
     "alerts.webhooks[1].to: is required"),
    ({"name": "mail", "format": "email", "smtp_host": "smtp.example.org", "sender": "recaudit@example.org",
      "to": []}, "alerts.webhooks[1].to: must not be empty"),
    ({"name": "mail", "format": "email", "smtp_host": "smtp.example.org", "sender": "recaudit@example.org",
      "to": ["oncall@example.org"], "username_env": USER_ENV}, "alerts.webhooks[1].password_env: must be set too"),
    ({"name": "w", "format": "opsgenie", "url": "https://x"},
     "alerts.webhooks[1].format: must be one of 'json', 'slack', 'teams', 'pagerduty', 'email' (got 'opsgenie')"),
    ({"name": "pd", "format": "pagerduty", "routing_key_env": "K", "secret_env": "S"},
     "alerts.webhooks[1].secret_env: unknown setting (known: name, timeout, format, url, routing_key_env)"),
])
def test_a_channel_entry_missing_what_it_needs_is_one_line_naming_the_key(tmp_path, entry, message):
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in entry.items())
    (tmp_path / "recaudit.toml").write_text(f"[[alerts.webhooks]]\n{lines}")
    with pytest.raises(InputError) as caught:
        configuration.load(tmp_path / "recaudit.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_entry_without_format_is_still_a_json_webhook():
    [entry] = configured({"name": "oncall", "url": "https://hooks.example.org/a"})["webhooks"]
    assert entry == {"name": "oncall", "format": "json", "url": "https://hooks.example.org/a", "secret_env": "",
                     "timeout": 5.0}


def test_alerts_test_reaches_every_channel_and_says_which_failed_and_why(recaudit_bin, tmp_path, mailbox, certificate,
                                                                         monkeypatch):
    receivers = {fmt: Receiver() for fmt in ("json", "slack", "teams", "pagerduty")}
    try:
        entries = [hook(fmt, r.url) for fmt, r in receivers.items()] + [hook("email", mailbox.port, certificate)]
        toml = tmp_path / "recaudit.toml"
        toml.write_text("".join("[[alerts.webhooks]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.items())
                                for e in entries))
        env = {ROUTING_KEY_ENV: "R0UTING-KEY", USER_ENV: USER, PASSWORD_ENV: PASSWORD}
        done = run_cli(recaudit_bin, "alerts", "test", "--config", str(toml), env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.decode().splitlines() == [f"{e['name']}: accepted" for e in entries]
        assert json.loads(receivers["json"].requests[0]["body"])["status"] == "test"
        assert json.loads(receivers["slack"].requests[0]["body"])["text"].startswith("[TEST] info: ")
        card = json.loads(receivers["teams"].requests[0]["body"])["attachments"][0]["content"]
        assert card["body"][0]["text"] == "[TEST] info"
        event = json.loads(receivers["pagerduty"].requests[0]["body"])
        assert event["event_action"] == "trigger" and event["dedup_key"].startswith("test-")  # an incident of its own
        assert mailbox.messages[0]["message"]["Subject"].startswith("[TEST] info: a test alert from recaudit")

        monkeypatch.delenv(PASSWORD_ENV, raising=False)
        failed = run_cli(recaudit_bin, "alerts", "test", "--config", str(toml), env={ROUTING_KEY_ENV: "R0UTING-KEY",
                                                                                     USER_ENV: USER})
        assert failed.returncode == 1
        assert (f"mail: failed (the environment variable {PASSWORD_ENV} (the SMTP password) is not set)"
                in failed.stdout.decode().splitlines())
    finally:
        for r in receivers.values():
            r.close()

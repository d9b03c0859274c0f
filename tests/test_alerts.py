"""Job alerts: spec validation, and delivery to real servers on loopback (a tornado HTTP server
that records what it receives, an aiosmtpd SMTP server in-process); no HTTP or SMTP mocks.

Fixtures:
- `webhook`: a recording HTTP server; its routes script answers (500 twice, 404, 429 with
  Retry-After, slow, redirect) so each retry rule is observed on the wire.
- `smtpd`: an aiosmtpd server on a free port that keeps every message; recipients starting with
  "refused" get 550, "later" get 451 the first time, and login `mlp`/`s3cret` works.
- `notifier`: an AlertNotifier with tiny backoffs so retries take milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets.config import Config

from mlp.core.alert_rules import ALERT_EVENTS, redact_url, validate_alerts
from mlp.core.alerts import AlertNotifier, Delivery, parse_retry_after
from mlp.core.ports import free_port
from mlp.core.spec import SpecError

JOB: dict[str, Any] = {
    "id": 12,
    "user": "alice",
    "name": "train-mnist",
    "state": "failed",
    "reason": "task worker-0 exited with code 1",
    "attempt": 1,
}


# The recording servers listen on loopback, which webhooks may not reach unless allowed.
LOOPBACK_OK = Config({"OutboundPolicy": {"allow_networks": ["127.0.0.0/8"]}})


# ===================================================================================== validation
def test_no_alerts_is_an_empty_list() -> None:
    assert validate_alerts(None, email_enabled=False) == []
    assert validate_alerts([], email_enabled=False) == []


def test_normalizes_events_in_canonical_order_without_duplicates() -> None:
    raw = [
        {"on": ["succeeded", "failed", "succeeded"], "webhook": "https://hooks.example.org/x"},
        {"on": ["cancelled", "timed_out", "preempted"], "email": "Alice.B+ml@Example.org"},
    ]
    assert validate_alerts(raw, email_enabled=True) == [
        {"on": ["failed", "succeeded"], "webhook": "https://hooks.example.org/x"},
        {"on": ["timed_out", "preempted", "cancelled"], "email": "Alice.B+ml@Example.org"},
    ]


def test_accepts_every_event_plain_http_ports_and_credentials() -> None:
    raw = [
        {"on": list(ALERT_EVENTS), "webhook": "http://127.0.0.1:8080/hook?token=abc"},
        {"on": ["failed"], "webhook": "https://user:p%40ss@hooks.example.org/x"},
        {"on": ["failed"], "webhook": "http://[::1]:9000/"},
    ]
    assert [a["on"] for a in validate_alerts(raw, email_enabled=False)] == [
        list(ALERT_EVENTS),
        ["failed"],
        ["failed"],
    ]


BAD_ALERTS: list[tuple[object, str, str]] = [
    ("https://x.org", "alerts", "expected a list"),
    ({"on": ["failed"]}, "alerts", "expected a list"),
    (
        [{"on": ["failed"], "webhook": f"https://h.org/{i}"} for i in range(11)],
        "alerts",
        "at most 10",
    ),
    (["https://h.org"], "alerts[0]", "expected an object"),
    ([{"webhook": "https://h.org"}], "alerts[0].on", "required"),
    ([{"on": "failed", "webhook": "https://h.org"}], "alerts[0].on", "expected a list"),
    ([{"on": [], "webhook": "https://h.org"}], "alerts[0].on", "at least one event"),
    (
        [
            {"on": ["failed"], "webhook": "https://h.org"},
            {"on": ["failed", "crashed"], "webhook": "https://h.org"},
        ],
        "alerts[1].on[1]",
        "unknown event 'crashed'; valid events: failed, timed_out, succeeded, preempted, cancelled",
    ),
    ([{"on": [None], "webhook": "https://h.org"}], "alerts[0].on[0]", "unknown event None"),
    ([{"on": ["failed"]}, {}], "alerts[0]", "exactly one of 'webhook' or 'email' (got neither)"),
    (
        [{"on": ["failed"], "webhook": "https://h.org", "email": "a@b.org"}],
        "alerts[0]",
        "(got both)",
    ),
    ([{"on": ["failed"], "webhok": "https://h.org"}], "alerts[0].webhok", "unknown field"),
    ([{"on": ["failed"], "webhook": 42}], "alerts[0].webhook", "expected an http(s) URL"),
    ([{"on": ["failed"], "webhook": ""}], "alerts[0].webhook", "expected an http(s) URL"),
    ([{"on": ["failed"], "webhook": "ftp://h.org/x"}], "alerts[0].webhook", "http:// or https://"),
    ([{"on": ["failed"], "webhook": "file:///etc/passwd"}], "alerts[0].webhook", "got 'file'"),
    ([{"on": ["failed"], "webhook": "h.org/hook"}], "alerts[0].webhook", "got no scheme"),
    ([{"on": ["failed"], "webhook": "javascript:alert(1)"}], "alerts[0].webhook", "http://"),
    ([{"on": ["failed"], "webhook": "http:///hook"}], "alerts[0].webhook", "no host"),
    ([{"on": ["failed"], "webhook": "https://"}], "alerts[0].webhook", "no host"),
    (
        [{"on": ["failed"], "webhook": "http://h.org:99999/"}],
        "alerts[0].webhook",
        "not a valid URL",
    ),
    ([{"on": ["failed"], "webhook": "http://h.org:0/"}], "alerts[0].webhook", "port 0"),
    ([{"on": ["failed"], "webhook": "http://[::1/"}], "alerts[0].webhook", "not a valid URL"),
    ([{"on": ["failed"], "webhook": "http://h.org/a b"}], "alerts[0].webhook", "spaces"),
    ([{"on": ["failed"], "webhook": "http://h.org/\r\nX: y"}], "alerts[0].webhook", "control"),
    (
        [{"on": ["failed"], "webhook": "https://h.org/" + "x" * 3000}],
        "alerts[0].webhook",
        "too long",
    ),
    ([{"on": ["failed"], "email": 7}], "alerts[0].email", "expected an email address"),
    ([{"on": ["failed"], "email": "alice"}], "alerts[0].email", "not a valid email address"),
    ([{"on": ["failed"], "email": "alice@"}], "alerts[0].email", "not a valid email address"),
    ([{"on": ["failed"], "email": "@example.org"}], "alerts[0].email", "not a valid email"),
    ([{"on": ["failed"], "email": "a b@example.org"}], "alerts[0].email", "not a valid email"),
    ([{"on": ["failed"], "email": "a@b@example.org"}], "alerts[0].email", "not a valid email"),
    ([{"on": ["failed"], "email": "a@-x.org"}], "alerts[0].email", "not a valid email"),
    ([{"on": ["failed"], "email": "a@x..org"}], "alerts[0].email", "not a valid email"),
    (
        [{"on": ["failed"], "email": "a@x.org\nBcc: victim@y.org"}],
        "alerts[0].email",
        "not a valid email",
    ),
    ([{"on": ["failed"], "email": "Alice <a@x.org>"}], "alerts[0].email", "not a valid email"),
]


@pytest.mark.parametrize(("raw", "field", "message"), BAD_ALERTS)
def test_bad_alerts_name_the_field(raw: object, field: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_alerts(raw, email_enabled=True)
    assert info.value.field == field
    assert message in info.value.message


def test_email_refused_when_smtp_is_not_configured() -> None:
    raw = [{"on": ["failed"], "webhook": "https://h.org"}, {"on": ["failed"], "email": "a@x.org"}]
    with pytest.raises(SpecError) as info:
        validate_alerts(raw, email_enabled=False)
    assert info.value.field == "alerts[1].email"
    assert info.value.message == (
        "email alerts are not configured on this platform (c.AlertNotifier.smtp_host)"
    )
    assert AlertNotifier().email_enabled is False
    assert AlertNotifier(smtp_host="localhost").email_enabled is True


def test_credentials_never_appear_in_errors() -> None:
    with pytest.raises(SpecError) as info:
        validate_alerts(
            [{"on": ["failed"], "webhook": "ftp://bob:hunter2@h.org/x"}], email_enabled=False
        )
    assert "hunter2" not in str(info.value)
    assert "ftp://h.org/x" in str(info.value)
    assert redact_url("https://u:p@h.org:8443/x?y=1") == "https://h.org:8443/x?y=1"
    assert redact_url("https://h.org/x") == "https://h.org/x"


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("7") == 7
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past: now
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < (parse_retry_after(future) or 0) <= 120


def test_bad_notifier_config_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AlertNotifier(retries=0)
    with pytest.raises(ValueError, match="must be > 0"):
        AlertNotifier(webhook_timeout=0)
    with pytest.raises(ValueError, match=">= 0"):
        AlertNotifier(retry_backoff=-1)


# ===================================================================================== webhooks
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookServer:
    port: int
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


class RecordingHandler(web.RequestHandler):
    """Records every POST; the path picks a scripted answer (see the module docstring)."""

    def initialize(self, server: WebhookServer) -> None:
        self.server = server

    async def post(self, path: str) -> None:
        self.server.received.append(
            Received(
                self.request.path, dict(self.request.headers), self.request.body, time.monotonic()
            )
        )
        n = len(self.server.hits(self.request.path))
        if path == "ok":
            self.set_status(204)
        elif path == "flaky" and n <= 2:
            self.set_status(500)
            self.finish("database is locked")
        elif path == "flaky":
            self.finish("ok")
        elif path == "always-500":
            self.set_status(502)
        elif path == "missing":
            self.set_status(404)
            self.finish("no such hook")
        elif path == "forbidden":
            self.set_status(403)
        elif path == "busy" and n == 1:
            self.set_status(429)
            self.set_header("Retry-After", "1")
        elif path == "very-busy" and n == 1:
            self.set_status(503)
            self.set_header("Retry-After", "3600")
        elif path == "slow":
            await asyncio.sleep(5)
        elif path == "redirect":
            self.redirect("http://elsewhere.example.org/")
        else:
            self.finish("{}")


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookServer]:
    server = WebhookServer(port=free_port())
    app = web.Application([(r"/(.*)", RecordingHandler, {"server": server})])
    http = HTTPServer(app)
    http.listen(server.port, address="127.0.0.1")
    yield server
    http.stop()
    await http.close_all_connections()


@pytest.fixture
def notifier() -> AlertNotifier:
    return AlertNotifier(
        retries=3, retry_backoff=0.01, retry_backoff_max=0.05, webhook_timeout=2,
        config=LOOPBACK_OK,
    )


async def test_webhook_delivery_and_payload(
    webhook: WebhookServer, notifier: AlertNotifier
) -> None:
    notifier.public_url = "https://hub.example.org/services/mlp/"
    [d] = await notifier.notify(JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/ok")}])
    assert d == Delivery(target=webhook.url("/ok"), kind="webhook", ok=True, attempts=1, error=None)
    [req] = webhook.received
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"] == "jupyterhub-mlp"
    assert req.headers["X-Mlp-Event"] == "failed"
    body = req.json()
    assert body["event"] == "failed"
    assert body["job"] == JOB
    assert body["url"] == "https://hub.example.org/services/mlp/api/v1/jobs/12"
    assert body["sent_at"].endswith("Z") and body["sent_at"][:4].isdigit()
    assert set(body) == {"event", "job", "sent_at", "url"}


async def test_payload_without_public_url_has_no_link(
    webhook: WebhookServer, notifier: AlertNotifier
) -> None:
    job = {**JOB, "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}  # not JSON: str()
    await notifier.notify(job, "succeeded", [{"on": ["succeeded"], "webhook": webhook.url("/ok")}])
    body = webhook.received[0].json()
    assert set(body) == {"event", "job", "sent_at"}
    assert body["job"]["created_at"] == "2026-01-02 03:04:05+00:00"


async def test_500_twice_then_success_takes_three_attempts(
    webhook: WebhookServer, notifier: AlertNotifier
) -> None:
    notifier.retries = 5
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/flaky")}]
    )
    assert (d.ok, d.attempts, d.error) == (True, 3, None)
    # One delivery id across its retries, so the receiver can drop duplicates.
    assert len({r.headers["X-Mlp-Delivery"] for r in webhook.hits("/flaky")}) == 1


async def test_404_is_not_retried(
    webhook: WebhookServer, notifier: AlertNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/missing")}]
    )
    assert (d.ok, d.attempts) == (False, 1)
    assert d.error == "HTTP 404 Not Found: no such hook"
    assert len(webhook.hits("/missing")) == 1
    assert "HTTP 404 Not Found" in caplog.text and "/missing" in caplog.text


async def test_redirect_is_not_followed(webhook: WebhookServer, notifier: AlertNotifier) -> None:
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/redirect")}]
    )
    assert (d.ok, d.attempts) == (False, 1)
    assert d.error is not None and "302" in d.error and "redirects are not followed" in d.error


async def test_connection_refused_fails_after_retries_attempts(
    notifier: AlertNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    [d] = await notifier.notify(JOB, "failed", [{"on": ["failed"], "webhook": url}])
    assert (d.ok, d.attempts) == (False, notifier.retries)
    assert d.error is not None and d.error.startswith("could not connect:")
    assert "refused" in d.error.lower()
    assert f"failed after {notifier.retries} attempt(s)" in caplog.text


async def test_backoff_doubles_up_to_the_cap(webhook: WebhookServer) -> None:
    notifier = AlertNotifier(retries=5, retry_backoff=0.05, retry_backoff_max=0.15, config=LOOPBACK_OK)
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/always-500")}]
    )
    assert (d.ok, d.attempts, d.error) == (False, 5, "HTTP 502 Bad Gateway")
    hits = webhook.hits("/always-500")
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.15, 0.15], strict=True):
        assert expected * 0.9 <= gap < expected + 0.25, gaps


async def test_retry_after_is_honoured(webhook: WebhookServer, notifier: AlertNotifier) -> None:
    notifier.retry_backoff_max = 60
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/busy")}]
    )
    assert (d.ok, d.attempts) == (True, 2)
    first, second = webhook.hits("/busy")
    # The backoff alone would have waited 0.01 s: the 1 s is the server's Retry-After.
    assert second.at - first.at >= 0.95


async def test_retry_after_is_capped(webhook: WebhookServer, notifier: AlertNotifier) -> None:
    started = time.monotonic()
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/very-busy")}]
    )
    assert (d.ok, d.attempts) == (True, 2)
    assert time.monotonic() - started < 2  # not an hour: capped at retry_backoff_max


async def test_timeout_is_retried_with_a_clear_error(webhook: WebhookServer) -> None:
    notifier = AlertNotifier(retries=2, retry_backoff=0.01, webhook_timeout=0.2, config=LOOPBACK_OK)
    [d] = await notifier.notify(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/slow")}]
    )
    assert (d.ok, d.attempts) == (False, 2)
    assert d.error is not None and d.error.startswith("timed out after 0.2s")


async def test_only_alerts_on_the_event_are_delivered_concurrently(
    webhook: WebhookServer, notifier: AlertNotifier
) -> None:
    alerts = validate_alerts(
        [
            {"on": ["succeeded"], "webhook": webhook.url("/ok?a")},
            {"on": ["failed", "timed_out"], "webhook": webhook.url("/ok")},
            {"on": ["failed"], "webhook": webhook.url("/forbidden")},
            {"on": ["preempted"], "webhook": webhook.url("/missing")},
        ],
        email_enabled=False,
    )
    deliveries = await notifier.notify(JOB, "failed", alerts)
    assert [(d.target, d.ok, d.attempts) for d in deliveries] == [
        (webhook.url("/ok"), True, 1),
        (webhook.url("/forbidden"), False, 1),
    ]
    assert sorted(r.path for r in webhook.received) == ["/forbidden", "/ok"]
    assert await notifier.notify(JOB, "cancelled", alerts) == []
    assert await notifier.notify(JOB, "exploded", alerts) == []  # unknown: logged, not raised


async def test_credentials_go_as_basic_auth_and_are_never_logged(
    webhook: WebhookServer, notifier: AlertNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = webhook.url("")
    secret_url = base.replace("http://", "http://hook%40user:s%3Acret@")
    alerts = [
        {"on": ["failed"], "webhook": secret_url + "/ok"},
        {"on": ["failed"], "webhook": secret_url + "/missing"},
    ]
    ok, missing = await notifier.notify(JOB, "failed", alerts)
    assert ok.ok and ok.target == base + "/ok"
    assert not missing.ok and missing.target == base + "/missing"
    auth = webhook.hits("/ok")[0].headers["Authorization"]
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"hook@user:s:cret"
    assert "cret" not in caplog.text and "hook%40user" not in caplog.text
    assert "/missing" in caplog.text


async def test_notify_is_cancellable(webhook: WebhookServer) -> None:
    notifier = AlertNotifier(webhook_timeout=30, config=LOOPBACK_OK)
    task = asyncio.create_task(
        notifier.notify(JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/slow")}])
    )
    await asyncio.sleep(0.2)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5


async def test_background_notify_snapshots_the_job_and_close_cancels(
    webhook: WebhookServer, notifier: AlertNotifier
) -> None:
    job = dict(JOB)
    task = notifier.notify_in_background(
        job, "failed", [{"on": ["failed"], "webhook": webhook.url("/ok")}]
    )
    job["state"] = "queued"  # the caller moves on; the alert tells what was true at the event
    [d] = await task
    assert d.ok and webhook.received[0].json()["job"]["state"] == "failed"

    notifier.webhook_timeout = 30
    slow = notifier.notify_in_background(
        JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/slow")}]
    )
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await notifier.close()
    assert slow.cancelled() and time.monotonic() - started < 0.5


# ===================================================================================== email
def text_of(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@dataclass
class SMTPServer:
    port: int
    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)
    rcpt_attempts: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


class RecordingSMTPHandler:
    def __init__(self, server: SMTPServer):
        self.server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self.server.rcpt_attempts.append(address)
        if address.startswith("refused"):
            return "550 5.1.1 no such user here"
        if address.startswith("later") and self.server.rcpt_attempts.count(address) == 1:
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.server.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        return "250 Message accepted for delivery"


@pytest.fixture
def smtpd() -> Iterator[SMTPServer]:
    state = SMTPServer(port=free_port())

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        ok = (auth_data.login, auth_data.password) == (b"mlp", b"s3cret")
        if ok:
            state.logins.append(auth_data.login.decode())
        # handled=False: aiosmtpd then answers 535 itself instead of staying silent.
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        RecordingSMTPHandler(state),
        hostname="127.0.0.1",
        port=state.port,
        authenticator=authenticate,
        auth_require_tls=False,  # a loopback test server: no certificate to make
    )
    controller.start()
    yield state
    controller.stop()


def mail_notifier(smtpd: SMTPServer, **kw: Any) -> AlertNotifier:
    return AlertNotifier(
        smtp_host="127.0.0.1",
        smtp_port=smtpd.port,
        smtp_timeout=5,
        retries=3,
        retry_backoff=0.01,
        config=LOOPBACK_OK,
        **kw,
    )


async def test_email_is_delivered(smtpd: SMTPServer) -> None:
    notifier = mail_notifier(
        smtpd, smtp_from="mlp@hub.example.org", public_url="https://hub.example.org/jobs/{job_id}"
    )
    alerts = validate_alerts([{"on": ["failed"], "email": "alice@example.org"}], email_enabled=True)
    [d] = await notifier.notify(JOB, "failed", alerts)
    assert d == Delivery(target="alice@example.org", kind="email", ok=True, attempts=1, error=None)
    [(sender, rcpts, msg)] = smtpd.messages
    assert sender == "mlp@hub.example.org" and rcpts == ["alice@example.org"]
    assert msg["Subject"] == "[mlp] job 12 (train-mnist) failed"
    assert msg["To"] == "alice@example.org" and msg["From"] == "mlp@hub.example.org"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = text_of(msg)
    assert "State:  failed" in body
    assert "Reason: task worker-0 exited with code 1" in body
    assert "Link:   https://hub.example.org/jobs/12" in body


async def test_email_and_webhook_together_with_smtp_login(
    smtpd: SMTPServer, webhook: WebhookServer
) -> None:
    notifier = mail_notifier(smtpd, smtp_username="mlp", smtp_password="s3cret")
    job = {**JOB, "state": "timed_out", "reason": "ran longer than max_runtime 1h", "name": ""}
    alerts = [
        {"on": ["timed_out"], "email": "bob@example.org"},
        {"on": ["timed_out"], "webhook": webhook.url("/ok")},
    ]
    mail, hook = await notifier.notify(job, "timed_out", alerts)
    assert mail.ok and hook.ok and mail.kind == "email" and hook.kind == "webhook"
    assert smtpd.logins == ["mlp"]
    [(_, _, msg)] = smtpd.messages
    assert msg["Subject"] == "[mlp] job 12 timed_out"
    assert "Link:" not in text_of(msg)


async def test_refused_recipient_is_not_retried(smtpd: SMTPServer) -> None:
    [d] = await mail_notifier(smtpd).notify(
        JOB, "failed", [{"on": ["failed"], "email": "refused@x.org"}]
    )
    assert (d.ok, d.attempts) == (False, 1)
    assert d.error == "SMTP recipient refused: 550 5.1.1 no such user here"
    assert smtpd.messages == []


async def test_temporary_smtp_error_is_retried(smtpd: SMTPServer) -> None:
    [d] = await mail_notifier(smtpd).notify(
        JOB, "failed", [{"on": ["failed"], "email": "later@x.org"}]
    )
    assert (d.ok, d.attempts) == (True, 2)
    assert len(smtpd.messages) == 1


async def test_wrong_smtp_password_is_final(smtpd: SMTPServer) -> None:
    notifier = mail_notifier(smtpd, smtp_username="mlp", smtp_password="wrong")
    [d] = await notifier.notify(JOB, "failed", [{"on": ["failed"], "email": "a@x.org"}])
    assert (d.ok, d.attempts) == (False, 1)
    assert d.error is not None and "535" in d.error and "wrong" not in d.error


async def test_unreachable_smtp_server(caplog: pytest.LogCaptureFixture) -> None:
    notifier = AlertNotifier(
        smtp_host="127.0.0.1", smtp_port=free_port(), retries=2, retry_backoff=0.01
    )
    [d] = await notifier.notify(JOB, "failed", [{"on": ["failed"], "email": "a@x.org"}])
    assert (d.ok, d.attempts) == (False, 2)
    assert d.error is not None and d.error.startswith("could not reach SMTP server 127.0.0.1:")
    assert "a@x.org failed after 2 attempt(s)" in caplog.text


async def test_email_alert_when_smtp_was_unconfigured_since(notifier: AlertNotifier) -> None:
    [d] = await notifier.notify(JOB, "failed", [{"on": ["failed"], "email": "a@x.org"}])
    assert (d.ok, d.attempts, d.kind) == (False, 0, "email")
    assert d.error is not None and "c.AlertNotifier.smtp_host" in d.error


async def test_smtp_does_not_block_the_event_loop(smtpd: SMTPServer) -> None:
    # The loop keeps ticking while the SMTP exchanges run in threads.
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    alerts = [{"on": ["failed"], "email": f"u{i}@x.org"} for i in range(5)]
    deliveries = await mail_notifier(smtpd).notify(JOB, "failed", alerts)
    ticker.cancel()
    assert all(d.ok for d in deliveries) and len(smtpd.messages) == 5
    assert ticks > 1


async def test_webhook_into_the_platforms_network_is_refused(webhook: WebhookServer) -> None:
    """Without the allow-list, a webhook on loopback (the hub, the proxy API) is never called."""
    notifier = AlertNotifier(retries=2, retry_backoff=0.01)
    [d] = await notifier.notify(JOB, "failed", [{"on": ["failed"], "webhook": webhook.url("/ok")}])
    assert not d.ok and d.attempts == 1 and "loopback address" in (d.error or ""), d
    assert webhook.received == []

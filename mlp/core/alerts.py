"""Job alert delivery: deliver job events to the alerts of a job spec (validated by
`mlp.core.alert_rules`): webhooks (JSON POST) and email addresses (SMTP), with retries, without
ever blocking the event loop."""

from __future__ import annotations

import asyncio
import email.utils
import json
import smtplib
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from traitlets import Bool, Float, Integer, Unicode, validate
from traitlets.config import LoggingConfigurable

from mlp.core.alert_rules import ALERT_EVENTS, EMAIL_NOT_CONFIGURED, redact_url
from mlp.isolation.netguard import OutboundPolicy, UnsafeURL

USER_AGENT = "jupyterhub-mlp"

# 408 and 429 are the 4xx answers that mean "not now" rather than "never": retrying them can work.
_RETRY_STATUS = frozenset({408, 429})


# --------------------------------------------------------------------------------- delivery
@dataclass
class Delivery:
    """The outcome of delivering one event to one alert target."""

    target: str  # the webhook URL without credentials, or the email address
    kind: Literal["webhook", "email"]
    ok: bool
    attempts: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One try's outcome: `retry_after` is the server's wish in seconds (Retry-After)."""

    error: str | None
    retry: bool = False
    retry_after: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AlertNotifier(LoggingConfigurable):
    """Delivers job events to the alerts of a job (see `validate_alerts`)."""

    webhook_timeout = Float(
        10.0,
        config=True,
        help="""Seconds a webhook may take to connect and answer, per attempt. A slower
        endpoint counts as a failed attempt and is retried.""",
    )
    retries = Integer(
        5,
        config=True,
        help="""How many times one delivery (one event to one webhook or address) is tried in
        all, the first try included. Connection errors, timeouts, HTTP 5xx/408/429 and temporary
        SMTP errors (4xx) are retried; other answers (a 404, a refused recipient) are final.""",
    )
    retry_backoff = Float(
        1.0,
        config=True,
        help="""Seconds to wait before the second try; the wait doubles after each failed try,
        up to retry_backoff_max. A webhook's Retry-After header, when longer, is honoured up to
        the same cap.""",
    )
    retry_backoff_max = Float(
        60.0,
        config=True,
        help="""The longest wait between two tries, also the cap on a server's Retry-After.""",
    )
    smtp_host = Unicode(
        "",
        config=True,
        help="""SMTP server for email alerts. Empty (the default) disables email alerts: jobs that
        ask for them are refused at submit with a message naming this setting.""",
    )
    smtp_port = Integer(25, config=True, help="""Port of the SMTP server (587 for submission).""")
    smtp_starttls = Bool(
        False,
        config=True,
        help="""Upgrade the SMTP connection with STARTTLS (certificate verified against the system
        CA store) before logging in or sending. Turn on whenever smtp_username is set and the
        server is not on this machine, or the password crosses the network in clear.""",
    )
    smtp_username = Unicode(
        "", config=True, help="""SMTP login name; empty to send without authenticating."""
    )
    smtp_password = Unicode("", config=True, help="""SMTP password for smtp_username.""")
    smtp_from = Unicode(
        "mlp@localhost",
        config=True,
        help="""The From: address of alert emails. Many relays only accept a sender of their own
        domain, e.g. "mlp@hub.example.org".""",
    )
    smtp_timeout = Float(
        30.0,
        config=True,
        help="""Seconds one SMTP attempt (connect, TLS, login, send) may block before it counts as
        failed and is retried.""",
    )
    public_url = Unicode(
        "",
        config=True,
        help="""The mlp service's address as users reach it, e.g.
        "https://hub.example.org/services/mlp/". When set, alert emails and webhook payloads
        (key "url") carry a link to the job: <public_url>api/v1/jobs/<id>, or the URL itself with
        "{job_id}" replaced when it contains that placeholder (to link a UI page instead).""",
    )

    @validate("retries")
    def _validate_retries(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 1:
            raise ValueError(
                f"AlertNotifier.retries must be at least 1 (the first try), got {value}"
            )
        return value

    @validate("webhook_timeout", "smtp_timeout")
    def _validate_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise ValueError(f"AlertNotifier.{proposal['trait'].name} must be > 0, got {value}")
        return value

    @validate("retry_backoff", "retry_backoff_max")
    def _validate_backoff(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value >= 0:
            raise ValueError(f"AlertNotifier.{proposal['trait'].name} must be >= 0, got {value}")
        return value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outbound = OutboundPolicy(parent=self, log=self.log)
        # Strong references: the event loop only keeps weak ones to tasks, so a fire-and-forget
        # delivery could otherwise be garbage-collected half-way.
        self._background: set[asyncio.Task[list[Delivery]]] = set()

    @property
    def email_enabled(self) -> bool:
        return bool(self.smtp_host)

    def job_url(self, job: dict[str, Any]) -> str | None:
        if not self.public_url:
            return None
        if "{job_id}" in self.public_url:
            return self.public_url.replace("{job_id}", str(job.get("id")))
        return f"{self.public_url.rstrip('/')}/api/v1/jobs/{job.get('id')}"

    # ----------------------------------------------------------------------------- entry points
    def notify_in_background(
        self, job: dict[str, Any], event: str, alerts: list[dict[str, Any]]
    ) -> asyncio.Task[list[Delivery]]:
        """Start `notify` as a task and return it at once; the notifier keeps it alive, and
        `close()` cancels the ones still running. The job dict is copied now, so the caller may
        go on changing its own."""
        task = asyncio.ensure_future(self.notify(dict(job), event, list(alerts)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        """Cancel deliveries started by `notify_in_background` and wait for them to stop."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def notify(
        self, job: dict[str, Any], event: str, alerts: list[dict[str, Any]]
    ) -> list[Delivery]:
        """Deliver `event` for `job` (the REST API's job model: id, user, name, state, reason, ...)
        to every alert whose `on` contains the event, concurrently, each with retries.

        Never raises (a failed delivery is logged with its cause and returned with ok=False),
        except CancelledError when the caller cancels it: pending tries then stop at once (an
        SMTP try already running in its thread finishes, bounded by smtp_timeout, unobserved).
        """
        if event not in ALERT_EVENTS:
            self.log.error("job %s: not an alert event: %r (ignored)", job.get("id"), event)
            return []
        wanted = [a for a in alerts if isinstance(a, dict) and event in a.get("on", ())]
        if not wanted:
            return []
        try:
            # Serialize once, up front: a value json can't encode (a datetime) degrades to its
            # str() instead of failing every delivery.
            job_json = json.loads(json.dumps(job, default=str))
        except ValueError:  # a circular structure: send what identifies the job
            job_json = {k: str(job.get(k)) for k in ("id", "user", "name", "state", "reason")}
        return list(await asyncio.gather(*(self._deliver(job_json, event, a) for a in wanted)))

    # ----------------------------------------------------------------------------- per target
    async def _deliver(self, job: dict[str, Any], event: str, alert: dict[str, Any]) -> Delivery:
        if "webhook" in alert:
            url = str(alert["webhook"])
            delivery = Delivery(target=redact_url(url), kind="webhook", ok=False, attempts=0)
        else:
            address = str(alert.get("email", ""))
            delivery = Delivery(target=address, kind="email", ok=False, attempts=0)
            if not self.email_enabled:
                # The spec was accepted while SMTP was configured; the config changed since.
                delivery.error = EMAIL_NOT_CONFIGURED
                self.log.warning(
                    "job %s: %s alert to %s not sent: %s",
                    job.get("id"),
                    event,
                    address,
                    delivery.error,
                )
                return delivery
        try:
            attempt: Callable[[], Awaitable[_Attempt]]
            if delivery.kind == "webhook":
                delivery_id = uuid.uuid4().hex

                def attempt() -> Awaitable[_Attempt]:
                    return self._post_webhook(url, job, event, delivery_id)

            else:
                # Built once: every try sends the same Message-ID, so duplicates can be spotted.
                message = self._email_message(job, event, address)

                def attempt() -> Awaitable[_Attempt]:
                    return asyncio.to_thread(self._send_email, message)

            await self._with_retries(delivery, attempt)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never let one target's surprise break the others or the caller
            delivery.ok = False
            delivery.error = f"unexpected error: {type(e).__name__}: {e}"
            self.log.exception(
                "job %s: %s alert to %s: unexpected error", job.get("id"), event, delivery.target
            )
            return delivery
        if delivery.ok:
            self.log.info(
                "job %s: %s alert delivered to %s %s (attempt %d)",
                job.get("id"),
                event,
                delivery.kind,
                delivery.target,
                delivery.attempts,
            )
        else:
            self.log.warning(
                "job %s: %s alert to %s %s failed after %d attempt(s): %s",
                job.get("id"),
                event,
                delivery.kind,
                delivery.target,
                delivery.attempts,
                delivery.error,
            )
        return delivery

    async def _with_retries(
        self, delivery: Delivery, attempt: Callable[[], Awaitable[_Attempt]]
    ) -> None:
        backoff = self.retry_backoff
        while True:
            delivery.attempts += 1
            outcome = await attempt()
            delivery.error = outcome.error
            if outcome.error is None:
                delivery.ok = True
                return
            if not outcome.retry or delivery.attempts >= self.retries:
                return
            delay = backoff
            if outcome.retry_after is not None:
                delay = max(delay, outcome.retry_after)
            delay = min(delay, self.retry_backoff_max)
            self.log.info(
                "%s alert to %s: attempt %d failed (%s); retrying in %.1fs",
                delivery.kind,
                delivery.target,
                delivery.attempts,
                outcome.error,
                delay,
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.retry_backoff_max)

    # ----------------------------------------------------------------------------- webhooks
    async def _post_webhook(
        self, url: str, job: dict[str, Any], event: str, delivery_id: str
    ) -> _Attempt:
        try:
            await self.outbound.check_url(url, "webhook", ("http", "https"))
        except UnsafeURL as e:
            return _Attempt(f"refused: {e}", retry=False)
        parts = urlsplit(url)
        username = password = None
        if parts.username is not None:
            # Sent as HTTP basic auth explicitly, so the credentials are never part of a URL that
            # a library might echo in an error message.
            username, password = unquote(parts.username), unquote(parts.password or "")
        payload: dict[str, Any] = {
            "event": event,
            "job": job,
            "sent_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        link = self.job_url(job)
        if link:
            payload["url"] = link
        request = HTTPRequest(
            redact_url(url),
            method="POST",
            body=json.dumps(payload),
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                # The same id on every try of one delivery, so a receiver can drop duplicates
                # (a try that timed out may still have been processed).
                "X-MLP-Delivery": delivery_id,
                "X-MLP-Event": event,
            },
            auth_username=username,
            auth_password=password,
            auth_mode="basic" if username is not None else None,
            connect_timeout=self.webhook_timeout,
            request_timeout=self.webhook_timeout,
            # A redirect is an answer, not a success: following it could send the job's details
            # to a host the user never named.
            follow_redirects=False,
        )
        # A private client per try: the shared AsyncHTTPClient() singleton queues at 10 requests,
        # so slow webhooks would otherwise delay the service's own HTTP calls (hub API, ...).
        client = AsyncHTTPClient(force_instance=True)
        try:
            # raise_error=False only turns HTTP answers into responses: timeouts and socket
            # errors still raise, and are all worth another try.
            response = await client.fetch(request, raise_error=False)
        except HTTPClientError as e:  # 599: timeout, stream closed before an answer
            if "timeout" in str(e).lower():
                return _Attempt(f"timed out after {self.webhook_timeout:g}s ({e})", retry=True)
            return _Attempt(f"no answer: {e}", retry=True)
        except OSError as e:  # refused, unreachable, name not resolved, TLS handshake
            return _Attempt(f"could not connect: {e}", retry=True)
        finally:
            client.close()
        return self._judge_response(response)

    def _judge_response(self, response: HTTPResponse) -> _Attempt:
        code = response.code
        if 200 <= code < 300:
            return _Attempt(None)
        if code == 599:  # tornado's "no HTTP answer", should a client return it, not raise it
            return _Attempt(f"no answer: {response.error or 'connection failed'}", retry=True)
        error = f"HTTP {code} {response.reason or ''}".rstrip()
        body = (response.body or b"")[:400].decode("utf-8", "replace")
        if body.strip():
            error += f": {_one_line(body)}"
        if 300 <= code < 400:
            return _Attempt(error + " (redirects are not followed)")
        if code >= 500 or code in _RETRY_STATUS:
            return _Attempt(
                error,
                retry=True,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return _Attempt(error)

    # ----------------------------------------------------------------------------- email
    def _email_message(self, job: dict[str, Any], event: str, address: str) -> EmailMessage:
        job_id = job.get("id")
        name = _one_line(str(job.get("name") or ""), 80)
        title = f"job {job_id} ({name})" if name else f"job {job_id}"
        lines = [
            f"Your mlp {title} {event.replace('_', ' ')}.",
            "",
            f"Job:    {job_id}" + (f" ({name})" if name else ""),
            f"User:   {job.get('user', '')}",
            f"State:  {job.get('state', '')}",
            f"Reason: {job.get('reason') or '-'}",
        ]
        if job.get("attempt"):
            lines.append(f"Attempt: {job['attempt']}")
        link = self.job_url(job)
        if link:
            lines.append(f"Link:   {link}")
        lines += ["", f"You get this email because the job's spec asks for alerts on {event!r}."]
        msg = EmailMessage()
        msg["Subject"] = f"[mlp] {title} {event}"
        msg["From"] = self.smtp_from
        msg["To"] = address
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = email.utils.make_msgid(domain=self.smtp_from.rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def _send_email(self, message: EmailMessage) -> _Attempt:
        """One SMTP try; runs in a worker thread (smtplib blocks)."""
        server = f"{self.smtp_host}:{self.smtp_port}"
        try:
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.smtp_timeout) as smtp:
                if self.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.smtp_username:
                    smtp.login(self.smtp_username, self.smtp_password)
                smtp.send_message(message)
            return _Attempt(None)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()), (550, b"refused"))
            return _smtp_answer("recipient refused", code, text)
        except smtplib.SMTPResponseException as e:  # sender refused, auth failed, data refused...
            return _smtp_answer(type(e).__name__, e.smtp_code, e.smtp_error)
        except smtplib.SMTPServerDisconnected as e:
            return _Attempt(f"SMTP server {server} disconnected: {e}", retry=True)
        # SMTPException subclasses OSError: it must be caught before the network errors below.
        except smtplib.SMTPException as e:  # e.g. STARTTLS or AUTH not offered: config, final
            return _Attempt(f"SMTP error from {server}: {e}")
        except ssl.SSLCertVerificationError as e:  # a wrong certificate will not fix itself
            return _Attempt(f"TLS certificate of SMTP server {server} not trusted: {e}")
        except OSError as e:  # refused, unreachable, reset, timeout (TimeoutError is an OSError)
            return _Attempt(f"could not reach SMTP server {server}: {e}", retry=True)


def _smtp_answer(what: str, code: int, text: bytes | str) -> _Attempt:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # 4xx is SMTP's "try again later" (greylisting, a full queue); 5xx is final.
    return _Attempt(f"SMTP {what}: {code} {_one_line(text)}", retry=400 <= code < 500)


__all__ = ["AlertNotifier", "Delivery", "parse_retry_after"]

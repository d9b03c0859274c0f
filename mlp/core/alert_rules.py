"""The `alerts` field of a job spec: who is told about which job events (validation only;
delivery is `mlp.core.alerts`)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlp.core.errors import SpecError

ALERT_EVENTS = ("failed", "timed_out", "succeeded", "preempted", "cancelled")

MAX_ALERTS = 10
MAX_URL_LENGTH = 2048
# RFC 5321 caps a forward path at 256 octets including the angle brackets.
MAX_ADDRESS_LENGTH = 254

# Deliberately stricter than RFC 5322: no quoted local parts, comments or IP literals. An address
# that passes can go into a To: header and an SMTP RCPT command as is, with nothing to inject.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

EMAIL_NOT_CONFIGURED = (
    "email alerts are not configured on this platform (c.AlertNotifier.smtp_host)"
)


def redact_url(url: str) -> str:
    """The URL without user:password@, for logs, errors and `Delivery.target`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _validate_webhook(url: Any, field: str) -> str:
    if not isinstance(url, str) or not url:
        raise SpecError(field, "expected an http(s) URL string")
    # Error messages quote the URL redacted: credentials in it are allowed but must never reach
    # a log or an API error that someone else (an admin, a shared terminal) could read.
    shown = redact_url(url)
    if len(url) > MAX_URL_LENGTH:
        raise SpecError(field, f"URL too long (at most {MAX_URL_LENGTH} characters)")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise SpecError(field, "URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as e:
        raise SpecError(field, f"not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"{parts.scheme!r}" if parts.scheme else "no scheme"
        raise SpecError(
            field, f"webhooks must be http:// or https:// URLs, got {scheme}: {shown!r}"
        )
    if not parts.hostname:
        raise SpecError(field, f"URL has no host: {shown!r}")
    if port == 0:
        raise SpecError(field, f"port 0 is not a valid port: {shown!r}")
    return url


def _validate_address(address: Any, field: str) -> str:
    if not isinstance(address, str) or not address:
        raise SpecError(field, "expected an email address string like user@example.org")
    if len(address) > MAX_ADDRESS_LENGTH or not _ADDRESS.fullmatch(address):
        raise SpecError(field, f"not a valid email address: {address[:80]!r}")
    return address


def _validate_events(on: Any, field: str) -> list[str]:
    if not isinstance(on, list):
        raise SpecError(field, f"expected a list of events from {list(ALERT_EVENTS)}")
    if not on:
        raise SpecError(field, f"at least one event is required, from {list(ALERT_EVENTS)}")
    for i, event in enumerate(on):
        if event not in ALERT_EVENTS:
            raise SpecError(
                f"{field}[{i}]", f"unknown event {event!r}; valid events: {', '.join(ALERT_EVENTS)}"
            )
    given = set(on)
    return [e for e in ALERT_EVENTS if e in given]


def validate_alerts(raw: object, *, email_enabled: bool) -> list[dict[str, Any]]:
    """Validate the job spec's `alerts` field: a list of {"on": [events...], "webhook": URL} or
    {"on": [...], "email": address}. None (the field left out) means no alerts.

    Raises SpecError naming the offending field ("alerts[1].webhook", "alerts[0].on[2]", ...).
    Returns the normalized list: each alert with `on` de-duplicated in ALERT_EVENTS order and
    exactly one of `webhook` / `email`.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(
            "alerts", 'expected a list like [{"on": ["failed"], "webhook": "https://..."}]'
        )
    if len(raw) > MAX_ALERTS:
        raise SpecError("alerts", f"at most {MAX_ALERTS} alerts per job, got {len(raw)}")
    alerts: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        field = f"alerts[{i}]"
        if not isinstance(item, dict):
            raise SpecError(field, f"expected an object, got {type(item).__name__}")
        unknown = sorted(str(k) for k in item if k not in ("on", "webhook", "email"))
        if unknown:
            raise SpecError(
                f"{field}.{unknown[0]}", "unknown field; an alert has 'on' and 'webhook' or 'email'"
            )
        if "on" not in item:
            raise SpecError(f"{field}.on", f"required: the events to alert on, from {ALERT_EVENTS}")
        events = _validate_events(item["on"], f"{field}.on")
        has_webhook, has_email = "webhook" in item, "email" in item
        if has_webhook == has_email:
            which = "both" if has_webhook else "neither"
            raise SpecError(field, f"give exactly one of 'webhook' or 'email' (got {which})")
        if has_webhook:
            alerts.append(
                {"on": events, "webhook": _validate_webhook(item["webhook"], f"{field}.webhook")}
            )
        else:
            address = _validate_address(item["email"], f"{field}.email")
            if not email_enabled:
                raise SpecError(f"{field}.email", EMAIL_NOT_CONFIGURED)
            alerts.append({"on": events, "email": address})
    return alerts

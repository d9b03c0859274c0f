"""Notebook servers inside the quota ledger: the one reservation client of the platform's spawners.

`ReservationMixin` reserves a server's resources through the mlp service's REST API
(`POST /reservations`) before anything is created, and releases them when the server stops, is
culled, fails to start or is found gone. Both spawners use it, so they behave the same:

- `reserve_server(resources)` before the first process or Kubernetes object; over quota it
  raises `ReservationRefused` (HTTP 409) with the ledger's numbers ("Over quota: 1 CPU, 2Gi
  memory requested for this server, but ..."); with the mlp service down, 503 after the retries;
  a left-over reservation of this very server (a hub killed mid-spawn) is replaced.
- `release_server()` after stop, cull, a failed start, or a poll that finds the server gone.
- `check_options(options, offered)`: a request for a size that is not offered, or with fields of
  its own, is refused (HTTP 400) before anything is reserved.
- `reserved_devices()`: the GPU devices the ledger allocated (the reservation's `devices`), or
  None when the service does not say.
- `reservation_state()` / `load_reservation_state()`: what the hub keeps across its restarts.

The ledger's reclaim of reservations whose server the hub does not know is the mlp service's
(`mlp.core.hubsync`); a spawner only gives back what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable


class ReservationRefused(web.HTTPError):
    """A server that must not start: over quota (409), a size not offered (400), the mlp service
    unreachable (503). The message is for the user; JupyterHub shows it on the spawn page and in
    the progress stream."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(status, "%s", message)
        self.message = message
        self.jupyterhub_message = message

    def __str__(self) -> str:
        return self.message


class MLPUnavailable(Exception):
    """The mlp service did not answer after every retry."""


def describe(resources: dict[str, Any]) -> str:
    """'1 CPU, 2Gi memory, 1 GPU' of a resource dict (numbers or quantities such as '512Mi')."""
    from mlp.scheduling.resources import format_cpu, format_memory, parse_cpu, parse_memory

    parts = []
    if resources.get("cpu"):
        parts.append(f"{format_cpu(parse_cpu(resources['cpu']))} CPU")
    if resources.get("memory"):
        parts.append(f"{format_memory(parse_memory(resources['memory']))} memory")
    if resources.get("gpu"):
        parts.append(f"{int(resources['gpu'])} GPU")
    return ", ".join(parts) or "nothing"


class ReservationMixin(LoggingConfigurable):
    """Reserve before start, release after stop, through the mlp service's API.

    A spawner mixes it in before its own class and keeps `self.user.name` and `self.name`."""

    mlp_api_url = Unicode(
        config=True,
        help="""Base URL of the mlp service's REST API as the hub reaches it, e.g.
        http://127.0.0.1:10101/services/mlp/api/v1. Default: $MLP_API_URL, else the hub-managed
        service on 127.0.0.1:10101.""",
    )

    @default("mlp_api_url")
    def _default_mlp_api_url(self) -> str:
        return os.environ.get("MLP_API_URL", "http://127.0.0.1:10101/services/mlp/api/v1")

    mlp_api_token = Unicode(
        config=True,
        help="""Token the hub uses to reserve on behalf of users; it needs the mlp admin
        scope (custom:mlp:admin) and access to the mlp service. Default: $MLP_API_TOKEN.""",
    )

    @default("mlp_api_token")
    def _default_mlp_api_token(self) -> str:
        return os.environ.get("MLP_API_TOKEN", "")

    quota_pool = Unicode("default", config=True, help="Pool the servers' reservations use.")
    quota_group = Unicode(
        "",
        config=True,
        help="Quota group to charge (empty: the user's group, as for jobs).",
    )
    mlp_api_retries = Integer(
        4, config=True, help="Retries of an mlp API call that got no answer or a 5xx."
    )
    mlp_api_backoff = Float(0.5, config=True, help="First wait between retries (doubles).")
    mlp_api_timeout = Float(10.0, config=True, help="Seconds one mlp API call may take.")

    reservation_id: str | None = None
    reserved: dict[str, Any] | None = None

    # ------------------------------------------------------------------ http
    async def mlp_request(
        self, method: str, path: str, body: Any = None, retries: int | None = None
    ) -> tuple[int, Any]:
        """One call with retries on no answer / 5xx; returns (status, JSON body)."""
        retries = self.mlp_api_retries if retries is None else retries
        if not self.mlp_api_token:
            raise MLPUnavailable(
                f"no token to reach the mlp service: set c.{type(self).__name__}.mlp_api_token "
                "(or $MLP_API_TOKEN) to a token with the custom:mlp:admin scope"
            )
        url = self.mlp_api_url.rstrip("/") + path
        delay = self.mlp_api_backoff
        started = time.monotonic()
        problem = ""
        for attempt in range(retries + 1):
            req = HTTPRequest(
                url,
                method=method,
                headers={
                    "Authorization": f"token {self.mlp_api_token}",
                    "Content-Type": "application/json",
                },
                body=None if body is None else json.dumps(body),
                request_timeout=self.mlp_api_timeout,
                connect_timeout=self.mlp_api_timeout,
            )
            try:
                resp = await AsyncHTTPClient().fetch(req, raise_error=False)
            except (OSError, TimeoutError, HTTPClientError) as e:
                problem = f"{e.__class__.__name__}: {e}"
            else:
                if resp.code == 599:
                    problem = str(resp.error)
                elif resp.code >= 500:
                    problem = f"HTTP {resp.code}"
                else:
                    try:
                        data = json.loads(resp.body or b"null")
                    except ValueError:
                        data = None
                    return resp.code, data
            if attempt < retries:
                self.log.warning(
                    "mlp API %s %s failed (%s); retrying in %.1f s", method, path, problem, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise MLPUnavailable(
            f"the mlp service is not reachable: it did not answer {method} {path} after "
            f"{retries + 1} tries over {time.monotonic() - started:.0f} s at "
            f"{self.mlp_api_url} ({problem})"
        )

    # ------------------------------------------------------------------ ledger
    def reservation_key(self, user: str, server: str) -> str:
        return f"{quote(user, safe='')}/{quote(server, safe='')}"

    async def quota_of(self, user: str) -> dict[str, Any]:
        code, data = await self.mlp_request("GET", "/quota?" + urlencode({"user": user}))
        if code != 200:
            raise ReservationRefused(
                _message(data, f"cannot read {user}'s quota (HTTP {code})"), 503
            )
        return dict(data)

    async def reserve(self, user: str, server: str, resources: dict[str, Any]) -> dict[str, Any]:
        """Reserve `resources` for user's server; returns the ledger's reservation."""
        body: dict[str, Any] = {
            "user": user,
            "server": server,
            "resources": resources,
            "pool": self.quota_pool,
        }
        if self.quota_group:
            body["group"] = self.quota_group
        for _ in range(2):
            code, data = await self.mlp_request("POST", "/reservations", body)
            if code == 201:
                self.reservation_id = f"{user}/{server}"
                self.reserved = dict(data)
                return dict(data)
            if code == 409 and isinstance(data, dict) and data.get("error") == "conflict":
                # A reservation of this very server is left over (a start whose answer was
                # lost, or a hub killed mid-spawn): this server is not running, so replace it.
                self.log.warning("replacing a left-over reservation of %s/%s", user, server)
                await self.mlp_request(
                    "DELETE", f"/reservations/{self.reservation_key(user, server)}"
                )
                continue
            if code == 409:
                raise ReservationRefused(
                    f"Over quota: {describe(resources)} requested for this server, but "
                    + _message(data, "the quota ledger refused it")
                    + ". Stop another server or job, or pick a smaller size."
                )
            raise ReservationRefused(
                _message(data, f"reservation refused (HTTP {code})"), 400 if code < 500 else 503
            )
        raise ReservationRefused(
            f"a reservation of {user}/{server} keeps reappearing; ask an admin to check the "
            "mlp service's reservations",
            503,
        )

    async def release(self, user: str, server: str) -> None:
        code, data = await self.mlp_request(
            "DELETE", f"/reservations/{self.reservation_key(user, server)}"
        )
        if code not in (200, 204, 404):
            self.log.error(
                "could not release the reservation of %s/%s: HTTP %s %s",
                user,
                server,
                code,
                _message(data, ""),
            )
            return
        self.reservation_id = None
        self.reserved = None

    # ------------------------------------------------------------------ for the spawners
    async def reserve_server(self, resources: dict[str, Any]) -> dict[str, Any]:
        """Reserve this server (`self.user.name`, `self.name`); the mlp service down is a 503
        that says nothing was reserved or started."""
        user, server = self.user.name, self.name  # type: ignore[attr-defined]
        try:
            return await self.reserve(user, server, resources)
        except MLPUnavailable as e:
            # A POST that landed while its answer was lost would hold a reservation for a
            # server that does not start: give it back if the service answers now (else the
            # service reclaims it, as the hub does not know this server).
            with contextlib.suppress(MLPUnavailable):
                await self.mlp_request(
                    "DELETE", f"/reservations/{self.reservation_key(user, server)}", retries=0
                )
            raise ReservationRefused(
                f"{e}; nothing was reserved and no server was started. Try again in a minute; "
                "an admin finds the cause in the hub log",
                503,
            ) from None

    async def release_server(self) -> None:
        """Give this server's reservation back; never raises (the mlp service reclaims
        reservations of servers that no longer exist if it cannot be reached now)."""
        user, server = self.user.name, self.name  # type: ignore[attr-defined]
        try:
            await self.release(user, server)
        except MLPUnavailable as e:
            self.log.error(
                "could not release %s/%s's reservation (%s); the mlp service reclaims it once "
                "it sees the server gone", user, server, e,
            )

    def reserved_message(self, resources: dict[str, Any]) -> str:
        """The progress message once this server is reserved (both spawners say the same)."""
        group = (self.reserved or {}).get("group", "?")
        return f"Reserved {describe(resources)} in the quota ledger (group {group})"

    def check_options(self, options: dict[str, Any], offered: Iterable[str]) -> str | None:
        """The slug a request asks for, after refusing sizes not offered and fields of its own."""
        slugs = list(offered)
        extra = set(options) - {"profile"}
        if extra:
            raise ReservationRefused(
                f"server options {sorted(extra)} are not offered; choose a size "
                f"({', '.join(slugs)})",
                400,
            )
        slug = options.get("profile") or None
        if slug is not None and slug not in slugs:
            raise ReservationRefused(
                f"profile {slug!r} is not offered; choose one of {', '.join(slugs)}", 400
            )
        return slug

    def reserved_devices(self) -> list[str] | None:
        """The GPU devices of this server's reservation, or None when the service does not
        allocate devices (then nothing about them is decided here)."""
        devices = (self.reserved or {}).get("devices")
        if devices is None:
            return None
        if not isinstance(devices, list):
            raise ReservationRefused(
                f"the mlp service answered devices={devices!r} for this reservation, not a "
                "list of device ids; the server was not started (an admin checks the mlp "
                "service's version)",
                503,
            )
        return [str(d) for d in devices]

    def reservation_state(self) -> dict[str, Any]:
        return {"mlp_reservation": self.reservation_id} if self.reservation_id else {}

    def load_reservation_state(self, state: dict[str, Any]) -> None:
        self.reservation_id = state.get("mlp_reservation") or None


def _message(data: Any, fallback: str) -> str:
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return fallback

"""Notebook servers inside the quota ledger: a spawner mixin that reserves a server's resources
through the mlp service's REST API (`POST /reservations`) before anything is created, and releases
them when the server stops, is culled or fails to start.

The mixin is spawner-agnostic: a spawner supplies `reservation_amount()` (what it is about to
ask the cluster or machine for) and calls `reserve()` / `release()` around its own start/stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable


class ReservationRefused(Exception):
    """The ledger said no (over quota, unknown group...): the message is for the user."""


class MLPUnavailable(Exception):
    """The mlp service did not answer after every retry."""


def describe(resources: dict[str, Any]) -> str:
    from mlp.scheduling.resources import format_cpu, format_memory

    parts = []
    if resources.get("cpu"):
        parts.append(f"{format_cpu(float(resources['cpu']))} CPU")
    if resources.get("memory"):
        parts.append(f"{format_memory(int(resources['memory']))} memory")
    if resources.get("gpu"):
        parts.append(f"{int(resources['gpu'])} GPU")
    return ", ".join(parts) or "nothing"


class ReservationMixin(LoggingConfigurable):
    """Reserve before start, release after stop, through the mlp service's API."""

    mlp_api_url = Unicode(
        config=True,
        help="""Base URL of the mlp service's REST API, e.g.
        http://mlp:10101/services/mlp/api/v1. Default: $MLP_API_URL, else the hub-managed
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
        self, method: str, path: str, body: Any = None, ok_missing: bool = False
    ) -> tuple[int, Any]:
        """One call with retries on no answer / 5xx; returns (status, JSON body)."""
        if not self.mlp_api_token:
            raise MLPUnavailable(
                "no token to reach the mlp service: set c.QuotaKubeSpawner.mlp_api_token (or "
                "$MLP_API_TOKEN) to a token with the custom:mlp:admin scope"
            )
        url = self.mlp_api_url.rstrip("/") + path
        delay = self.mlp_api_backoff
        started = time.monotonic()
        problem = ""
        for attempt in range(self.mlp_api_retries + 1):
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
            if attempt < self.mlp_api_retries:
                self.log.warning(
                    "mlp API %s %s failed (%s); retrying in %.1f s", method, path, problem, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise MLPUnavailable(
            f"the mlp service at {self.mlp_api_url} did not answer {method} {path} after "
            f"{self.mlp_api_retries + 1} tries over {time.monotonic() - started:.0f} s "
            f"({problem}); no resources were reserved and nothing was created"
        )

    # ------------------------------------------------------------------ ledger
    def reservation_key(self, user: str, server: str) -> str:
        return f"{quote(user, safe='')}/{quote(server, safe='')}"

    async def quota_of(self, user: str) -> dict[str, Any]:
        code, data = await self.mlp_request("GET", "/quota?" + urlencode({"user": user}))
        if code != 200:
            raise ReservationRefused(_message(data, f"cannot read {user}'s quota (HTTP {code})"))
        return dict(data)

    async def reserve(self, user: str, server: str, resources: dict[str, Any]) -> dict[str, Any]:
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
                # lost, or a hub that crashed): it is ours, so replace it.
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
            raise ReservationRefused(_message(data, f"reservation refused (HTTP {code})"))
        raise ReservationRefused(
            f"a reservation of {user}/{server} keeps reappearing; ask an admin to check the "
            "mlp service's reservations"
        )

    async def release(self, user: str, server: str) -> None:
        code, data = await self.mlp_request(
            "DELETE", f"/reservations/{self.reservation_key(user, server)}"
        )
        if code not in (200, 404):
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


def _message(data: Any, fallback: str) -> str:
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return fallback

"""The mlp service's conversation with the hub about notebook servers.

- Reservations of servers that no longer exist (hub restarted, server crashed, hub killed mid
  spawn) are reclaimed: a reservation is only held while the hub knows its server (running or
  pending); the server's cgroup goes with it, so nothing the dead spawn left keeps running.
- With `keep_servers_of_running_jobs`, the owner of a running job is reported active through
  the hub's activity API, so the idle culler leaves the notebook of a long training alone.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets.config import LoggingConfigurable

from mlp.core.states import JobState
from mlp.isolation.cgroups import CgroupError
from mlp.isolation.names import server_cgroup_name


class HubSync(LoggingConfigurable):
    def __init__(self, manager: Any, isolation: Any, grace: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.manager = manager
        self.isolation = isolation
        self.grace = grace
        self.api_url = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        self.token = os.environ.get("JUPYTERHUB_API_TOKEN", "")

    async def _hub(self, method: str, path: str, body: Any = None) -> Any:
        req = HTTPRequest(
            f"{self.api_url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=None if body is None else json.dumps(body),
            request_timeout=20,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if e.code == 404:
                return None
            raise
        return json.loads(resp.body) if resp.body else {}

    async def reclaim(self) -> list[str]:
        """Release server reservations whose server the hub does not know; returns their ids."""
        if not self.api_url:
            return []
        quota = self.manager.quota
        now = time.time()
        released = []
        by_user: dict[str, Any] = {}
        for h in list(quota.ledger.holders()):
            if h.kind != "server" or now - h.admitted_at < self.grace:
                continue
            if h.id.startswith("deploy:"):
                continue  # a model deployment (mlp/serving), not a notebook server
            if h.user not in by_user:
                by_user[h.user] = await self._hub("GET", f"/users/{quote(h.user, safe='')}")
            model = by_user[h.user]
            server = h.id.partition("/")[2]
            if model is not None and server in (model.get("servers") or {}):
                continue
            if h.id not in quota.ledger:
                continue
            quota.release(h.id)
            released.append(h.id)
            self.log.warning(
                "reclaimed the reservation of %s's server %r: the hub has no such server "
                "(hub restarted, server crashed, or a spawn died)", h.user, server,
            )
            self._remove_cgroup(h.user, server)
        if released:
            self.manager.kick()
        return released

    def _remove_cgroup(self, user: str, server: str) -> None:
        driver = None if self.isolation is None else self.isolation.cgroups
        if driver is None or not driver.available:
            return
        try:
            driver.cgroup(server_cgroup_name(user, server)).remove()
        except (CgroupError, OSError) as e:
            self.log.warning("cannot remove the cgroup of %s's server %r: %s", user, server, e)

    async def keep_owners_active(self) -> list[str]:
        """Report the owners of running jobs (and their servers) active right now."""
        if not self.api_url:
            return []
        owners = {
            j.user for j in self.manager.store.list_jobs(
                states=[JobState.STARTING, JobState.RUNNING])
        }
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        kept = []
        for user in sorted(owners):
            model = await self._hub("GET", f"/users/{quote(user, safe='')}")
            if model is None:
                continue
            servers = {name: {"last_activity": now} for name in (model.get("servers") or {})}
            await self._hub("POST", f"/users/{quote(user, safe='')}/activity",
                            {"last_activity": now, "servers": servers})
            kept.append(user)
        return kept

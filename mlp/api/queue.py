"""`/queue` and `/quota`: where a user's queued jobs stand, and their quota and usage."""

from __future__ import annotations

import time

from mlp.api.base import ApiError, APIHandler, iso
from mlp.core.states import JobState


class QueueHandler(APIHandler):
    async def get(self) -> None:
        asked = self.get_argument("user", None)
        everyone = self.is_admin and asked in (None, "*")
        if asked not in (None, self.user["name"]) and not self.is_admin:
            raise ApiError(403, "forbidden", "only admins may see other users' queue entries")
        now = time.time()
        entries = []
        for job in self.manager.store.list_jobs(states=[JobState.QUEUED]):
            if not everyone and job.user != (asked or self.user["name"]):
                continue
            info = self.manager.queue_info(job)
            if info is None:
                continue
            entries.append(
                {
                    "id": job.id,
                    "user": job.user,
                    "name": job.name,
                    "group": job.group,
                    "pool": job.pool,
                    **info,
                }
            )
        entries.sort(key=lambda e: (e["position"] is None, e["position"] or 0, e["id"]))
        self.write_json({"now": iso(now), "queue": entries})


class MyQuotaHandler(APIHandler):
    async def get(self) -> None:
        asked = self.get_argument("user", None)
        if asked not in (None, self.user["name"]):
            # Admins (the hub's spawner) read another user's quota to offer server sizes.
            if not self.is_admin:
                raise ApiError(403, "forbidden", "only admins may read another user's quota")
            self.user = {"name": asked, "groups": await self.hub_groups(asked)}
        ledger = self.quota.ledger
        default = self.quota.config.default_group
        mine = sorted(g for g in self.user.get("groups", []) if g in ledger.groups) or [default]
        groups = {}
        for name in mine:
            group = ledger.groups.get(name)
            if group is None:
                continue
            cap = group.cap_of(self.user["name"])
            groups[name] = {
                "cohort": group.cohort,
                "personal_cap": None if cap is None else cap.to_dict(),
                "my_usage": ledger.user_usage(name, self.user["name"]).to_dict(),
                "pools": {
                    pool: {
                        "limit": group.limit(pool).to_dict(),
                        "with_expansions": ledger.nominal(name, pool, ledger.now).to_dict(),
                        "used_by_group": ledger.group_usage(name, pool).to_dict(),
                        "idle": ledger.idle(name, pool).to_dict(),
                    }
                    for pool in sorted(ledger.pools)
                },
            }
        jobs = self.manager.store.list_jobs(
            user=self.user["name"], states=[JobState.QUEUED, JobState.STARTING, JobState.RUNNING]
        )
        self.write_json(
            {
                "user": self.user["name"],
                "groups": groups,
                "active_jobs": [
                    {"id": j.id, "name": j.name, "state": j.state, "group": j.group, "pool": j.pool}
                    for j in jobs
                ],
            }
        )



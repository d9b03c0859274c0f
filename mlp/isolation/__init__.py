"""Isolation of users on one machine: system accounts (`accounts`), cgroups (`cgroups`), and
starting processes inside both (`process`). Shared by the notebook spawner and the local job
backend, configured once as `c.MLPIsolation.*` in jupyterhub_config.py."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from traitlets import Bool, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from mlp.isolation.accounts import DEFAULT_PREFIX, Account, AccountManager, check_prefix
from mlp.isolation.cgroups import CgroupDriver, Limits


def personal_mode_reason() -> str:
    return (
        f"personal mode: the platform runs as the OS user {pwd.getpwuid(os.geteuid()).pw_name} "
        "(not root); notebooks and jobs run as that user, with no isolation between hub users. "
        "Start it as root for one system account per hub user."
    )


class MLPIsolation(LoggingConfigurable):
    """Who processes run as and which cgroups hold them."""

    multi_user = Bool(
        config=True,
        help="""One system account per hub user (needs root). Default: True when the platform
        runs as root, else False (personal mode: everything runs as the OS user who started
        the platform, and only that user should log in).""",
    )

    @default("multi_user")
    def _default_multi_user(self) -> bool:
        return os.geteuid() == 0

    @validate("multi_user")
    def _check_multi_user(self, proposal: dict[str, bool]) -> bool:
        if proposal["value"] and os.geteuid() != 0:
            raise ValueError(
                "MLPIsolation.multi_user needs the platform to run as root (it creates system "
                "accounts); start it as root or leave multi_user unset for personal mode"
            )
        return proposal["value"]

    account_prefix = Unicode(
        DEFAULT_PREFIX,
        config=True,
        help="""Prefix of the system accounts the platform creates: hub user `alice` runs as
        `mlp-alice`. Names that are not safe account names (capitals, dots, unicode, long
        names) get a hash suffix: `Ann.B` -> `mlp-ann-b-<8 hex>`.""",
    )

    @validate("account_prefix")
    def _check_prefix(self, proposal: dict[str, str]) -> str:
        return check_prefix(proposal["value"])

    enforce_limits = Bool(
        True,
        config=True,
        help="""Run each notebook server and each job task in its own cgroup whose memory
        limit and CPU quota are its reservation. When cgroups cannot be written the platform
        says so at start and in the quota view, and runs without limits.""",
    )
    cgroup_root = Unicode(
        "/sys/fs/cgroup",
        config=True,
        help="Where the cgroup hierarchy (v2) or hierarchies (v1) are mounted.",
    )
    cgroup_parent = Unicode(
        "mlp",
        config=True,
        help="""The platform's cgroup below cgroup_root; each server and task gets a child.
        On a systemd host, give the platform's unit Delegate=yes.""",
    )
    data_dir = Unicode(config=True, help="The platform's data directory (homes live below it).")

    _driver: CgroupDriver | None = None

    def account_manager(self) -> AccountManager | None:
        if not self.multi_user:
            return None
        return AccountManager(Path(self.data_dir), self.account_prefix)

    def account(self, hub_name: str) -> Account | None:
        """The hub user's system account (created on first use), None in personal mode."""
        manager = self.account_manager()
        return None if manager is None else manager.ensure(hub_name)

    @property
    def cgroups(self) -> CgroupDriver:
        if self._driver is None:
            self._driver = CgroupDriver.detect(
                self.cgroup_root, self.cgroup_parent, enabled=self.enforce_limits
            )
        return self._driver

    def describe(self) -> dict[str, object]:
        """What the quota view and the start banner say about isolation."""
        driver = self.cgroups
        return {
            "mode": "multi-user" if self.multi_user else "personal",
            "accounts": (
                f"one system account per hub user ({self.account_prefix}<name>)"
                if self.multi_user
                else personal_mode_reason()
            ),
            "limits_enforced": driver.available,
            "limits": driver.describe(),
        }


__all__ = ["Account", "AccountManager", "CgroupDriver", "Limits", "MLPIsolation"]

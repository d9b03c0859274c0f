"""Quota configuration: traitlets (or YAML loaded into the same shape) to pools and groups.

``c.QuotaConfig.pools``, ``c.QuotaConfig.groups`` and ``c.QuotaConfig.default_group`` in
``jupyterhub_config.py`` declare the starting quotas. The store is the runtime truth: config
seeds a group or pool the store does not know yet, and an admin's change through the API (kept
in the store) wins over config from then on (`effective`). A user in no quota group belongs to
``default_group``, which exists even when nobody declared it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from traitlets import Dict, List, Unicode
from traitlets.config import Configurable

from mlp.scheduling.model import (
    DEFAULT_POOL,
    PRODUCTION_POOL,
    Pool,
    QuotaGroup,
    UnknownNameError,
)
from mlp.scheduling.resources import Resources, parse_resources

__all__ = ["MACHINE", "QuotaConfig", "effective", "resolve_group"]

#: Stands for "the whole machine" wherever a resource mapping is expected.
MACHINE = "machine"

T = TypeVar("T")


class QuotaConfig(Configurable):
    """Pools, quota groups and the default group, as declared in configuration."""

    extra_resources = List(
        Unicode(),
        config=True,
        help="""Names of extra countable resources besides cpu, memory and gpu
        (e.g. ["rdma"]). Requests and quotas may then name them; amounts are whole numbers.""",
    )
    pools = Dict(
        default_value={
            DEFAULT_POOL: {"capacity": MACHINE, "priority": 0},
            PRODUCTION_POOL: {"capacity": MACHINE, "priority": 100, "requires_promotion": True},
        },
        config=True,
        help="""Pools by name: {"capacity": {"cpu": 32, "memory": "128Gi", "gpu": 4} or
        "machine", "priority": int, "requires_promotion": bool, "devices": ["0", "1"]}.
        "machine" is the local machine's cpu and memory, as the service measures them. On one
        machine both default pools share the hardware: give them explicit capacities to
        partition it. The ledger hands each job and notebook server its own GPU devices of the
        pool (their CUDA_VISIBLE_DEVICES): "devices" lists them (indices or GPU UUIDs; the
        gpu capacity is then their number), without it a capacity of gpu n means the devices
        "0" .. "n-1". Pools on the same machine must list disjoint devices.""",
    )
    groups = Dict(
        default_value={},
        config=True,
        help="""Quota groups by name (a JupyterHub group of the same name maps to it):
        {"cohort": "ml", "limits": {"default": {"cpu": 8, "memory": "32Gi", "gpu": 1}},
        "member_cap": {"cpu": 4, "memory": "16Gi"}, "member_caps": {"alice": {...}},
        "lend_limit": {"default": {"cpu": 4}}}. A limit may be "machine".""",
    )
    default_group = Unicode(
        "default",
        config=True,
        help="""The quota group of a user who is in none of `groups`. If it is not declared in
        `groups` it gets `default_group_quota`.""",
    )
    default_group_quota = Dict(
        default_value={"limits": {DEFAULT_POOL: MACHINE}, "member_cap": None},
        config=True,
        help="""The quota of `default_group` when it is not declared: by default the whole
        machine in the default pool, no personal cap, no cohort (it neither lends nor
        borrows), nothing in production.""",
    )

    def _resources(self, value: object, machine: Resources, field: str) -> Resources:
        if value == MACHINE:
            return machine
        if not isinstance(value, Mapping):
            raise ValueError(
                f"{field}: expected a mapping such as {{'cpu': 2, 'memory': '4Gi'}} or "
                f"{MACHINE!r}, got {value!r}"
            )
        return parse_resources(value, self.extra_resources, field)

    def build_pools(self, machine: Resources) -> dict[str, Pool]:
        """The configured pools; `machine` is what "machine" stands for."""
        built: dict[str, Pool] = {}
        for name, raw in self.pools.items():
            where = f"QuotaConfig.pools[{name!r}]"
            spec = _as_mapping(raw, where)
            _only(spec, {"capacity", "priority", "requires_promotion", "devices"}, where)
            priority = spec.get("priority", 0)
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ValueError(f"{where}.priority: expected an int, got {priority!r}")
            capacity = self._resources(spec.get("capacity", MACHINE), machine, f"{where}.capacity")
            devices = spec.get("devices")
            if devices is not None:
                if not isinstance(devices, list | tuple) or not all(
                    isinstance(d, str) for d in devices
                ):
                    raise ValueError(
                        f"{where}.devices: expected a list of device ids such as ['0', '1'], "
                        f"got {devices!r}"
                    )
                if capacity.gpu == 0:  # the list says how many GPUs the pool has
                    capacity = capacity + Resources(gpu=len(devices))
            try:
                built[name] = Pool(
                    name,
                    capacity,
                    priority=priority,
                    requires_promotion=bool(spec.get("requires_promotion", False)),
                    devices=None if devices is None else tuple(devices),
                )
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if DEFAULT_POOL not in built:
            raise ValueError(f"QuotaConfig.pools: the {DEFAULT_POOL!r} pool must be declared")
        return built

    def build_groups(self, machine: Resources, pools: Iterable[str]) -> dict[str, QuotaGroup]:
        """The configured groups plus `default_group`; unknown pools are refused by name."""
        known = set(pools)
        specs = dict(self.groups)
        specs.setdefault(self.default_group, self.default_group_quota)
        built: dict[str, QuotaGroup] = {}
        for name, raw in specs.items():
            where = f"QuotaConfig.groups[{name!r}]"
            spec = _as_mapping(raw, where)
            _only(spec, {"cohort", "limits", "member_cap", "member_caps", "lend_limit"}, where)

            def per_pool(key: str, spec: Mapping[str, Any] = spec, where: str = where) -> dict:
                table = _as_mapping(spec.get(key) or {}, f"{where}.{key}")
                for pool in table:
                    if pool not in known:
                        raise UnknownNameError(
                            f"{where}.{key}: unknown pool {pool!r}; pools are "
                            f"{', '.join(sorted(known))}"
                        )
                return {
                    pool: self._resources(v, machine, f"{where}.{key}[{pool!r}]")
                    for pool, v in table.items()
                }

            cap = spec.get("member_cap")
            caps = _as_mapping(spec.get("member_caps") or {}, f"{where}.member_caps")
            cohort = spec.get("cohort")
            if cohort is not None and not isinstance(cohort, str):
                raise ValueError(f"{where}.cohort: expected a name, got {cohort!r}")
            built[name] = QuotaGroup(
                name,
                cohort=cohort,
                limits=per_pool("limits"),
                member_cap=None
                if cap is None
                else self._resources(cap, machine, f"{where}.member_cap"),
                member_caps={
                    user: self._resources(v, machine, f"{where}.member_caps[{user!r}]")
                    for user, v in caps.items()
                },
                lend_limit=per_pool("lend_limit"),
            )
        return built


def _as_mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    return value


def _only(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed are {', '.join(sorted(allowed))}"
        )


def effective(configured: Mapping[str, T], stored: Mapping[str, T]) -> dict[str, T]:
    """Config seeds, the store wins: a name the store knows keeps the store's value."""
    merged = dict(configured)
    merged.update(stored)
    return merged


def resolve_group(
    user: str,
    hub_groups: Iterable[str],
    groups: Mapping[str, QuotaGroup],
    default_group: str,
    requested: str | None = None,
) -> str:
    """The quota group a user's job or server is charged to.

    A quota group maps to the JupyterHub group of the same name. A user in several picks one
    with `requested` (else the first by name is used); a user in none gets `default_group`.
    Asking for a group the user is not in is refused with the groups they may use.
    """
    mine = sorted(g for g in set(hub_groups) if g in groups)
    allowed = mine or [default_group]
    if requested is not None:
        if requested not in groups:
            raise UnknownNameError(
                f"unknown group {requested!r}; groups are {', '.join(sorted(groups))}"
            )
        if requested not in allowed:
            raise ValueError(
                f"user {user!r} is not a member of quota group {requested!r}; "
                f"they may use {', '.join(allowed)}"
            )
        return requested
    if default_group not in groups and not mine:
        raise UnknownNameError(
            f"user {user!r} is in no quota group and the default group {default_group!r} "
            "is not configured"
        )
    return allowed[0]

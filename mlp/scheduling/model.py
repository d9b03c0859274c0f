"""The quota model's value types: pools, quota groups, expansions, demands and holders.

All are frozen dataclasses that validate themselves on construction, so a bad quota (negative,
non-numeric, an expansion ending before it starts) is refused where it is written down, with the
field and the numbers in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from mlp.scheduling.resources import Resources

__all__ = [
    "DEFAULT_POOL",
    "PRODUCTION_POOL",
    "Blocker",
    "Decision",
    "Demand",
    "Expansion",
    "Holder",
    "HolderKind",
    "Pool",
    "Preemption",
    "QuotaExceeded",
    "QuotaGroup",
    "Scope",
    "UnknownNameError",
]

DEFAULT_POOL = "default"
PRODUCTION_POOL = "production"

HolderKind = Literal["job", "server"]
Scope = Literal["pool", "group", "user", "cohort"]


class UnknownNameError(ValueError):
    """A group, pool, holder or expansion name that the ledger does not know."""


def _require_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: expected a non-empty name, got {value!r}")


def _require_vector(value: object, what: str) -> None:
    if not isinstance(value, Resources):
        raise ValueError(f"{what}: expected Resources, got {value!r}")
    if not value.is_nonnegative():
        raise ValueError(f"{what}: amounts must be >= 0, got {value!r}")


def _require_time(value: object, what: str, allow_inf: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{what}: expected a time in seconds, got {value!r}")
    if not allow_inf and math.isinf(value):
        raise ValueError(f"{what}: expected a finite time in seconds, got {value!r}")


def _frozen_map(value: Mapping[str, Resources], what: str) -> Mapping[str, Resources]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected a mapping of name to Resources, got {value!r}")
    for key, vector in value.items():
        _require_name(key, f"{what} key")
        _require_vector(vector, f"{what}[{key!r}]")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Pool:
    """A set of machines jobs run on. ``production`` admits promoted jobs only.

    ``devices`` names the pool's GPU devices (``CUDA_VISIBLE_DEVICES`` values such as ``"0"``
    or ``"GPU-<uuid>"``); None stands for the indices ``0 .. capacity.gpu - 1``. An explicit
    list must have exactly ``capacity.gpu`` distinct entries, so the ledger's gpu count and its
    per-device allocation can never disagree.
    """

    name: str
    capacity: Resources
    priority: int = 0
    requires_promotion: bool = False
    devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _require_name(self.name, "pool name")
        _require_vector(self.capacity, f"pool {self.name!r} capacity")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"pool {self.name!r} priority: expected an int, got {self.priority!r}")
        if self.devices is not None:
            devices = tuple(self.devices)
            where = f"pool {self.name!r} devices"
            for device in devices:
                if not isinstance(device, str) or not device.strip() or not device.isprintable():
                    raise ValueError(f"{where}: expected device ids such as '0', got {device!r}")
                if "," in device or device != device.strip():
                    raise ValueError(f"{where}: {device!r} may not contain commas or spaces")
            if len(set(devices)) != len(devices):
                raise ValueError(f"{where}: {list(devices)!r} lists a device twice")
            if len(devices) != self.capacity.gpu:
                raise ValueError(
                    f"{where}: {len(devices)} device(s) {list(devices)!r} but capacity says "
                    f"gpu {self.capacity.gpu}; the list must name each GPU of the pool once"
                )
            object.__setattr__(self, "devices", devices)

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The pool's GPU devices, in allocation order."""
        if self.devices is not None:
            return self.devices
        return tuple(str(i) for i in range(self.capacity.gpu))


@dataclass(frozen=True)
class QuotaGroup:
    """A team's quota: a hard limit per pool, a personal cap per member, what it may lend.

    ``member_cap`` is the personal cap of every member (None: only the group limit applies);
    ``member_caps`` overrides it per user. A personal cap bounds a user's usage in this group
    summed over all pools. ``lend_limit[pool]`` bounds how much of the group's *idle* quota other
    groups of its ``cohort`` may borrow; a group without a cohort neither lends nor borrows.
    """

    name: str
    cohort: str | None = None
    limits: Mapping[str, Resources] = field(default_factory=dict)
    member_cap: Resources | None = None
    member_caps: Mapping[str, Resources] = field(default_factory=dict)
    lend_limit: Mapping[str, Resources] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_name(self.name, "group name")
        if self.cohort is not None:
            _require_name(self.cohort, f"group {self.name!r} cohort")
        where = f"group {self.name!r}"
        object.__setattr__(self, "limits", _frozen_map(self.limits, f"{where} limits"))
        object.__setattr__(
            self, "member_caps", _frozen_map(self.member_caps, f"{where} member_caps")
        )
        object.__setattr__(self, "lend_limit", _frozen_map(self.lend_limit, f"{where} lend_limit"))
        if self.member_cap is not None:
            _require_vector(self.member_cap, f"{where} member_cap")

    def limit(self, pool: str) -> Resources:
        return self.limits.get(pool, Resources.zero())

    def cap_of(self, user: str) -> Resources | None:
        """The personal cap of `user` in this group, or None when uncapped."""
        return self.member_caps.get(user, self.member_cap)

    def lendable(self, pool: str) -> Resources:
        if self.cohort is None:
            return Resources.zero()
        return self.lend_limit.get(pool, Resources.zero())


@dataclass(frozen=True)
class Expansion:
    """A temporary, admin-granted increase of a group's limit in one pool.

    Active in ``[start, expiry)``: it ends by itself, nobody has to revoke it.
    """

    id: str
    group: str
    pool: str
    amount: Resources
    start: float
    expiry: float
    reason: str = ""
    granted_by: str = ""

    def __post_init__(self) -> None:
        _require_name(self.id, "expansion id")
        _require_name(self.group, f"expansion {self.id!r} group")
        _require_name(self.pool, f"expansion {self.id!r} pool")
        _require_vector(self.amount, f"expansion {self.id!r} amount")
        _require_time(self.start, f"expansion {self.id!r} start")
        _require_time(self.expiry, f"expansion {self.id!r} expiry", allow_inf=True)
        if self.expiry <= self.start:
            raise ValueError(
                f"expansion {self.id!r}: expiry {self.expiry} must be after start {self.start}"
            )

    def active(self, now: float) -> bool:
        return self.start <= now < self.expiry

    def covers(self, start: float, end: float) -> bool:
        """True when the expansion is active during the whole window ``[start, end]``."""
        return self.start <= start and end < self.expiry


@dataclass(frozen=True, eq=False)
class Demand:
    """What a pending job asks for: a gang of tasks admitted together or not at all."""

    id: str
    user: str
    group: str
    pool: str
    tasks: tuple[Resources, ...]
    priority: int = 0
    max_runtime: float = 3600.0
    submitted_at: float = 0.0
    promoted: bool = False
    total: Resources = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _require_name(self.id, "demand id")
        _require_name(self.user, f"demand {self.id!r} user")
        _require_name(self.group, f"demand {self.id!r} group")
        _require_name(self.pool, f"demand {self.id!r} pool")
        tasks = tuple(self.tasks)
        if not tasks:
            raise ValueError(f"demand {self.id!r}: a job needs at least one task")
        total = Resources.zero()
        for index, task in enumerate(tasks):
            _require_vector(task, f"demand {self.id!r} tasks[{index}]")
            total = total + task
        if total.is_zero():
            raise ValueError(f"demand {self.id!r}: requests no resources at all")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"demand {self.id!r} priority: expected an int, got {self.priority!r}")
        _require_time(self.max_runtime, f"demand {self.id!r} max_runtime")
        if self.max_runtime <= 0:
            raise ValueError(f"demand {self.id!r} max_runtime: must be > 0 seconds")
        _require_time(self.submitted_at, f"demand {self.id!r} submitted_at")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "total", total)


@dataclass(frozen=True)
class Holder:
    """Resources held in the ledger by a running job or a notebook server.

    ``borrowed`` is the part of ``amount`` taken from other groups' idle quota in the cohort;
    a job with a non-zero ``borrowed`` is preemptible for its whole run. ``until`` is when the
    holder will have released at the latest (a job's start + max runtime; None for servers).
    ``devices`` are the pool's GPU devices the ledger allocated to it, one per reserved gpu
    (a job's tasks take them in task order); no device is ever held by two holders.
    """

    id: str
    user: str
    group: str
    pool: str
    amount: Resources
    kind: HolderKind = "job"
    borrowed: Resources = field(default_factory=Resources.zero)
    priority: int = 0
    admitted_at: float = 0.0
    until: float | None = None
    devices: tuple[str, ...] = ()

    @property
    def own(self) -> Resources:
        return self.amount - self.borrowed

    @property
    def preemptible(self) -> bool:
        return self.kind == "job" and not self.borrowed.is_zero()


@dataclass(frozen=True)
class Blocker:
    """One reason a demand cannot start now, with the numbers."""

    reason: str
    scope: Scope
    name: str
    resource: str
    requested: float
    available: float

    def to_dict(self) -> dict[str, object]:
        return {
            "reason": self.reason,
            "scope": self.scope,
            self.scope: self.name,
            "resource": self.resource,
            "requested": self.requested,
            "available": self.available,
        }


@dataclass(frozen=True)
class Decision:
    """The ledger's answer to "may this demand start now?"."""

    admit: bool
    borrowed: Resources | None
    blocking: tuple[Blocker, ...] = ()


@dataclass(frozen=True)
class Preemption:
    """A holder the ledger released to restore its limits; the service stops and requeues it."""

    holder_id: str
    reason: str


class QuotaExceeded(ValueError):
    """A reservation that would break a limit; ``blocking`` carries the numbers."""

    def __init__(self, holder_id: str, blocking: tuple[Blocker, ...]) -> None:
        self.holder_id = holder_id
        self.blocking = blocking
        reasons = "; ".join(b.reason for b in blocking) or "no reason given"
        super().__init__(f"cannot reserve {holder_id!r}: {reasons}")

"""Resource vectors and the parsers that turn user input into them.

A `Resources` value is an immutable vector over named resources: `cpu` in cores, `memory` in
bytes, `gpu` as a count, plus any extra names an operator configures (e.g. `rdma`). Values are
stored as integers in each resource's smallest unit (millicores for cpu, bytes, counts), so sums
and differences are exact and a ledger invariant such as "usage <= capacity" can never be broken
by float rounding.

The parsers (`parse_cpu`, `parse_memory`, `parse_gpu`, `parse_count`, `parse_resources`) are the
one place user-facing quantities are validated; every error names the field and the accepted
forms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

__all__ = [
    "BASE_RESOURCES",
    "Resources",
    "format_amount",
    "format_cpu",
    "format_memory",
    "parse_count",
    "parse_cpu",
    "parse_gpu",
    "parse_memory",
    "parse_resources",
]

#: The resources every deployment has; extra names are counts (integers).
BASE_RESOURCES: tuple[str, ...] = ("cpu", "memory", "gpu")

# cpu is kept in millicores: the finest grain Kubernetes accepts, and exact integer arithmetic.
_MILLI = 1000

_CPU_FORMS = "a number of cores (2, '2', 0.5) or millicores ('500m')"
_MEMORY_FORMS = (
    "bytes (4294967296) or a quantity with a unit: binary 'Ki', 'Mi', 'Gi', 'Ti', 'Pi' "
    "('4Gi', '1.5Gi', '512Mi') or decimal 'k', 'M', 'G', 'T', 'P' ('1G')"
)
_COUNT_FORMS = "a whole number >= 0 (1, '2')"

_MEMORY_UNITS: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^\s*(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)\s*$")


def _reject(field: str, value: object, forms: str, why: str = "is not a valid quantity") -> None:
    raise ValueError(f"{field}: {value!r} {why}; use {forms}")


def _number(value: object, field: str, forms: str) -> Decimal:
    """Read an int/float (never a bool) as an exact, finite, non-negative Decimal."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        _reject(field, value, forms)
    # via str(): Decimal(0.1) is 0.1000000000000000055..., which would round up to 101m
    number = Decimal(str(value))
    if not number.is_finite():
        _reject(field, value, forms, "is not finite")
    if number < 0:
        _reject(field, value, forms, "is negative")
    return number


def _split_quantity(value: str, field: str, forms: str) -> tuple[Decimal, str]:
    match = _QUANTITY.match(value)
    if match is None:
        if value.strip().startswith("-"):
            _reject(field, value, forms, "is negative")
        _reject(field, value, forms)
        raise AssertionError  # unreachable; keeps type checkers satisfied
    try:
        number = Decimal(match["num"])
    except InvalidOperation:  # pragma: no cover - the regex only admits decimal digits
        _reject(field, value, forms)
        raise
    return number, match["unit"]


# Far above any machine, far below what SQLite's 64-bit integers and floats can hold.
MAX_CPU = Decimal(10**9)  # cores
MAX_MEMORY = Decimal(2**62)  # bytes
MAX_COUNT = Decimal(10**9)  # gpus and other whole resources


def _bounded(number: Decimal, limit: Decimal, field: str, value: object, forms: str) -> Decimal:
    if number > limit:
        _reject(field, value, forms, f"is too large (at most {limit})")
    return number


def _ceil_int(number: Decimal) -> int:
    return int(number.to_integral_value(rounding=ROUND_CEILING))


def parse_cpu(value: object, field: str = "cpu") -> float:
    """Parse a cpu request into cores: ``2``, ``"2"``, ``0.5``, ``"500m"``.

    Amounts finer than a millicore are rounded up to the next millicore, as Kubernetes does.
    """
    if isinstance(value, str):
        number, unit = _split_quantity(value, field, _CPU_FORMS)
        if unit == "m":
            return _ceil_int(_bounded(number, MAX_CPU * _MILLI, field, value, _CPU_FORMS)) / _MILLI
        if unit:
            _reject(field, value, _CPU_FORMS, f"has an unknown unit {unit!r}")
    else:
        number = _number(value, field, _CPU_FORMS)
    _bounded(number, MAX_CPU, field, value, _CPU_FORMS)
    return _ceil_int(number * _MILLI) / _MILLI


def parse_memory(value: object, field: str = "memory") -> int:
    """Parse a memory request into bytes: ``"4Gi"``, ``"512Mi"``, ``"1G"``, ``"1.5Gi"``, ``1024``.

    Fractions of a byte are rounded up.
    """
    if isinstance(value, str):
        number, unit = _split_quantity(value, field, _MEMORY_FORMS)
        if unit not in _MEMORY_UNITS:
            _reject(field, value, _MEMORY_FORMS, f"has an unknown unit {unit!r}")
        bytes_ = number * _MEMORY_UNITS[unit]
    else:
        bytes_ = _number(value, field, _MEMORY_FORMS)
    return _ceil_int(_bounded(bytes_, MAX_MEMORY, field, value, _MEMORY_FORMS))


def parse_count(value: object, field: str) -> int:
    """Parse a whole, non-negative count (``gpu`` and any extra resource)."""
    if isinstance(value, str):
        number, unit = _split_quantity(value, field, _COUNT_FORMS)
        if unit:
            _reject(field, value, _COUNT_FORMS, f"has an unknown unit {unit!r}")
    else:
        number = _number(value, field, _COUNT_FORMS)
    if number != number.to_integral_value():
        _reject(field, value, _COUNT_FORMS, "is not a whole number")
    return int(_bounded(number, MAX_COUNT, field, value, _COUNT_FORMS))


def parse_gpu(value: object, field: str = "gpu") -> int:
    """Parse a gpu count: ``0``, ``1``, ``"2"``; fractions, negatives and bools are refused."""
    return parse_count(value, field)


def parse_resources(
    values: Mapping[str, object] | None,
    extra_names: Iterable[str] = (),
    field: str = "resources",
) -> Resources:
    """Parse a ``{"cpu": ..., "memory": ..., "gpu": ...}`` mapping into `Resources`.

    Missing names are zero; a name that is neither a base resource nor a configured extra is
    refused, so a typo (``"gpus"``) cannot silently request nothing.
    """
    if values is None:
        return Resources.zero()
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{field}: expected a mapping such as {{'cpu': 2, 'memory': '4Gi', 'gpu': 0}}, "
            f"got {values!r}"
        )
    known = (*BASE_RESOURCES, *extra_names)
    parsed: dict[str, float | int] = {}
    for name, raw in values.items():
        where = f"{field}.{name}"
        if name == "cpu":
            parsed[name] = parse_cpu(raw, where)
        elif name == "memory":
            parsed[name] = parse_memory(raw, where)
        elif name in known:
            parsed[name] = parse_count(raw, where)
        else:
            raise ValueError(
                f"{field}: unknown resource {name!r}; known resources are {', '.join(known)}"
            )
    return Resources(parsed)


def format_memory(num_bytes: int) -> str:
    """Render bytes for people: exact binary units when they divide (``4Gi``), else 2 decimals."""
    if num_bytes < 0:
        return "-" + format_memory(-num_bytes)
    for unit in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        size = _MEMORY_UNITS[unit]
        if num_bytes >= size:
            if num_bytes % size == 0:
                return f"{num_bytes // size}{unit}"
            # never print an inexact amount as if it were exact: 2142114939 -> "2.0Gi", not "2Gi"
            text = f"{num_bytes / size:.2f}".rstrip("0")
            return (text + "0" if text.endswith(".") else text) + unit
    return str(num_bytes)


def format_cpu(cores: float) -> str:
    """Render cores for people: ``2``, ``0.5`` -> ``500m``."""
    milli = round(cores * _MILLI)
    if milli % _MILLI == 0:
        return str(milli // _MILLI)
    return f"{milli}m"


def format_amount(name: str, value: float) -> str:
    """Render one component of a vector in its natural unit."""
    if name == "cpu":
        return format_cpu(value)
    if name == "memory":
        return format_memory(int(value))
    return str(int(value))


def _scale_of(name: str) -> int:
    return _MILLI if name == "cpu" else 1


class Resources:
    """An immutable vector over named resources; missing names are zero.

    ``Resources(cpu=2, memory=4 * 2**30, gpu=1)``. Comparison is per component: ``a <= b`` and
    ``a.fits(b)`` mean every component of ``a`` is at most that of ``b``. Differences may be
    negative (``available = limit - usage``); `clamp` brings them back to zero.
    """

    __slots__ = ("_hash", "_units")

    _units: dict[str, int]
    _hash: int | None

    def __init__(self, values: Mapping[str, float] | None = None, /, **named: float) -> None:
        units: dict[str, int] = {}
        for source in (values or {}, named):
            for name, value in source.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"resource names must be non-empty strings, got {name!r}")
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name}: expected a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{name}: {value!r} is not finite")
                scaled = round(value * _scale_of(name))
                if scaled:
                    units[name] = scaled
                else:
                    units.pop(name, None)
        self._units = units
        self._hash = None

    @classmethod
    def _of_units(cls, units: dict[str, int]) -> Resources:
        """Build from already-scaled integer units (no validation; zeros dropped)."""
        new = cls.__new__(cls)
        new._units = {k: v for k, v in units.items() if v}
        new._hash = None
        return new

    @classmethod
    def _raw(cls, units: dict[str, int]) -> Resources:
        """Adopt `units` as is: the caller guarantees no zero entries and gives up the dict."""
        new = cls.__new__(cls)
        new._units = units
        new._hash = None
        return new

    @classmethod
    def zero(cls) -> Resources:
        return _ZERO

    # -- reading ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> float:
        value = self._units.get(name, 0)
        return value / _MILLI if name == "cpu" else value

    def get(self, name: str) -> float:
        return self[name]

    @property
    def cpu(self) -> float:
        return self["cpu"]

    @property
    def memory(self) -> int:
        return self._units.get("memory", 0)

    @property
    def gpu(self) -> int:
        return self._units.get("gpu", 0)

    def names(self) -> tuple[str, ...]:
        """The names with a non-zero component, in a stable order."""
        return tuple(sorted(self._units))

    def unit_map(self) -> Mapping[str, int]:
        """Every non-zero component in smallest units (read-only view for hot loops)."""
        return self._units

    def units(self, name: str) -> int:
        """The integer amount in the resource's smallest unit (millicores for cpu)."""
        return self._units.get(name, 0)

    def items(self) -> Iterator[tuple[str, float]]:
        for name in self.names():
            yield name, self[name]

    def to_dict(self, names: Iterable[str] = BASE_RESOURCES) -> dict[str, float]:
        """Plain numbers in natural units; `names` are always present (zero if absent)."""
        out: dict[str, float] = {name: self[name] for name in names}
        for name in self._units:
            out[name] = self[name]
        return out

    def is_zero(self) -> bool:
        return not self._units

    def is_nonnegative(self) -> bool:
        return all(v >= 0 for v in self._units.values())

    # -- arithmetic ------------------------------------------------------------------------
    def __add__(self, other: Resources) -> Resources:
        if not other._units:
            return self
        if not self._units:
            return other
        units = dict(self._units)
        for name, value in other._units.items():
            total = units.get(name, 0) + value
            if total:
                units[name] = total
            else:
                del units[name]
        return Resources._raw(units)

    def __sub__(self, other: Resources) -> Resources:
        if not other._units:
            return self
        units = dict(self._units)
        for name, value in other._units.items():
            total = units.get(name, 0) - value
            if total:
                units[name] = total
            else:
                del units[name]
        return Resources._raw(units)

    def __neg__(self) -> Resources:
        return Resources._of_units({k: -v for k, v in self._units.items()})

    def scale(self, factor: float) -> Resources:
        """Multiply every component, rounding to the smallest unit."""
        return Resources._of_units({k: round(v * factor) for k, v in self._units.items()})

    def clamp(self) -> Resources:
        """Negative components become zero."""
        for value in self._units.values():
            if value < 0:
                return Resources._raw({k: v for k, v in self._units.items() if v > 0})
        return self

    def fits_after(self, used: Resources, limit: Resources) -> bool:
        """True when adding self to `used` stays within `limit` wherever self asks for more.

        The allocation-free form of ``(used + self).fits(limit)`` for non-negative self.
        """
        used_units, limit_units = used._units, limit._units
        for name, value in self._units.items():
            if value > 0 and used_units.get(name, 0) + value > limit_units.get(name, 0):
                return False
        return True

    def min(self, other: Resources) -> Resources:
        """Component-wise minimum."""
        mine, theirs = self._units, other._units
        units: dict[str, int] = {}
        for name, value in mine.items():
            low = min(value, theirs.get(name, 0))
            if low:
                units[name] = low
        for name, value in theirs.items():
            if value < 0 and name not in mine:
                units[name] = value
        return Resources._raw(units)

    def max(self, other: Resources) -> Resources:
        """Component-wise maximum."""
        names = set(self._units) | set(other._units)
        return Resources._of_units(
            {n: max(self._units.get(n, 0), other._units.get(n, 0)) for n in names}
        )

    # -- comparison ------------------------------------------------------------------------
    def fits(self, other: Resources) -> bool:
        """True when every component of self is at most that of `other`."""
        theirs = other._units
        return all(value <= theirs.get(name, 0) for name, value in self._units.items()) and all(
            value >= 0 for name, value in theirs.items() if name not in self._units
        )

    def exceeding(self, other: Resources) -> list[str]:
        """The names whose component in self is larger than in `other` (sorted)."""
        names = set(self._units) | set(other._units)
        return sorted(n for n in names if self._units.get(n, 0) > other._units.get(n, 0))

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self.fits(other)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return other.fits(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self._units == other._units

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._units.items()))
        return self._hash

    def __bool__(self) -> bool:
        return bool(self._units)

    def __repr__(self) -> str:
        parts = [f"{name}={format_amount(name, self[name])}" for name in self.names()]
        return f"Resources({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Resources, ({name: self[name] for name in self._units},))


_ZERO = Resources()

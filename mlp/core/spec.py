"""Validation of job specifications: turns untrusted JSON/YAML into a normalized JobSpec.

Pure functions, no I/O. Every error names the offending field so that the REST API, the CLI and
the notebook magics can show the user exactly what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mlp.scheduling.resources import format_memory, parse_cpu, parse_gpu, parse_memory

TASK_TYPES = ("chief", "ps", "worker")
# A name must survive as a Kubernetes object name, a file name and a URL segment unchanged.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = re.compile(r"^(TF_CONFIG|MLP_.*|JUPYTERHUB_.*)$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_TASKS_PER_TYPE = 64
MIN_PRIORITY, MAX_PRIORITY = -100, 100
MAX_DEPENDENCIES = 50

SPEC_FIELDS = {
    "pool",
    "priority",
    "group",
    "depends_on",
    "alerts",
    "name",
    "source",
    "args",
    "env",
    "params",
    "runtime",
    "tasks",
    "max_runtime",
    "batch",
}
TASK_FIELDS = {"count", "cpu", "memory", "gpu"}


class SpecError(ValueError):
    """An invalid job spec; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TaskSpec:
    count: int
    cpu: float
    memory: int
    gpu: int

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "cpu": self.cpu, "memory": self.memory, "gpu": self.gpu}


@dataclass(frozen=True)
class JobSpec:
    name: str
    source: dict[str, str]
    tasks: dict[str, TaskSpec]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    runtime: str | None = None
    max_runtime: float = 86400.0
    batch: str | None = None  # groups the jobs of a hyperparameter grid for comparison
    pool: str | None = None  # None: "production" for promoted models, else "default"
    priority: int = 0
    group: str | None = None  # the quota group to charge when the user is in several
    depends_on: tuple[int, ...] = ()
    alerts: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": dict(self.source),
            "tasks": {t: s.to_dict() for t, s in self.tasks.items()},
            "args": list(self.args),
            "env": dict(self.env),
            "params": dict(self.params),
            "runtime": self.runtime,
            "max_runtime": self.max_runtime,
            "batch": self.batch,
            "pool": self.pool,
            "priority": self.priority,
            "group": self.group,
            "depends_on": list(self.depends_on),
            "alerts": [dict(a) for a in self.alerts],
        }

    def resources(self) -> list[dict[str, Any]]:
        """One entry per task (the gang), for the quota ledger."""
        return [
            {"cpu": t.cpu, "memory": t.memory, "gpu": t.gpu}
            for t in self.tasks.values()
            for _ in range(t.count)
        ]

    @property
    def task_count(self) -> int:
        return sum(t.count for t in self.tasks.values())

    def describe_tasks(self) -> str:
        return ", ".join(
            f"{s.count} {t} ({s.cpu:g} cpu, {format_memory(s.memory)}, {s.gpu} gpu)"
            for t, s in self.tasks.items()
        )


def parse_duration(value: Any, field_name: str, *, allow_zero: bool = False) -> float:
    """Seconds from 3600, "3600", "90s", "30m", "2h" or "1d"; must be positive (or zero)."""
    if isinstance(value, bool):
        raise SpecError(field_name, f"expected a duration like 3600, '30m' or '2h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := DURATION_RE.match(value)):
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    else:
        raise SpecError(field_name, f"expected a duration like 3600, '30m' or '2h', got {value!r}")
    if seconds == float("inf") or not (seconds >= 0 if allow_zero else seconds > 0):
        raise SpecError(field_name, f"must be a positive duration, got {value!r}")
    return seconds


def _require_mapping(value: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(field_name, f"expected an object, got {type(value).__name__}")
    return value


def _refuse_unknown(given: dict[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise SpecError(
            f"{where}{unknown[0]}",
            f"unknown field; valid fields are: {', '.join(sorted(known))}",
        )


def validate_name(name: Any, field_name: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise SpecError(field_name, "a job name is required (a non-empty string)")
    if len(name) > 63:
        raise SpecError(field_name, f"at most 63 characters, got {len(name)}")
    if not NAME_RE.match(name):
        raise SpecError(
            field_name,
            f"{name!r} is not a valid name: use lowercase letters a-z, digits and '-', "
            "starting and ending with a letter or digit (it becomes a file and object name)",
        )
    return name


def validate_relative_path(path: Any, field_name: str) -> str:
    """A path inside a folder: relative, no '..', no NUL, not empty."""
    if not isinstance(path, str) or not path.strip():
        raise SpecError(field_name, "expected a non-empty relative path")
    if "\x00" in path:
        raise SpecError(field_name, "path contains a NUL byte")
    if path.startswith("/") or path.startswith("~"):
        raise SpecError(field_name, f"{path!r} must be relative to your home folder")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise SpecError(field_name, f"{path!r} must not contain '..'")
    if not parts:
        raise SpecError(field_name, "expected a file path")
    return "/".join(parts)


def _validate_source(raw: Any) -> dict[str, str]:
    src = _require_mapping(raw, "source")
    # "path" doubles as the file inside a git repository, so git wins when both are given.
    kinds: list[str] = [k for k in ("inline", "git") if k in src]
    if "path" in src and "git" not in src:
        kinds.append("path")
    if len(kinds) != 1:
        raise SpecError("source", "give exactly one of 'inline' (code), 'path' or 'git'")
    kind = kinds[0]
    if kind == "inline":
        _refuse_unknown(src, {"inline"}, "source")
        code = src["inline"]
        if not isinstance(code, str) or not code.strip():
            raise SpecError("source.inline", "the training code is empty")
        return {"inline": code}
    if kind == "path":
        _refuse_unknown(src, {"path"}, "source")
        return {"path": validate_relative_path(src["path"], "source.path")}
    _refuse_unknown(src, {"git", "ref", "path"}, "source")
    url = src["git"]
    if not isinstance(url, str) or not re.match(r"^(https?://|ssh://|git@|file://)\S+$", url):
        raise SpecError(
            "source.git", f"expected a git URL (https://, ssh://, git@ or file://), got {url!r}"
        )
    ref = src.get("ref", "HEAD")
    if (
        not isinstance(ref, str)
        or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$", ref)
        or (".." in ref)
    ):
        raise SpecError("source.ref", f"{ref!r} is not a valid branch, tag or commit")
    path = validate_relative_path(src.get("path", "train.py"), "source.path")
    return {"git": url, "ref": ref, "path": path}


def _validate_task(raw: Any, role: str, defaults: TaskSpec) -> TaskSpec:
    fname = f"tasks.{role}"
    task = _require_mapping(raw, fname)
    _refuse_unknown(task, TASK_FIELDS, fname)
    count = task.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int):
        raise SpecError(f"{fname}.count", f"expected a whole number, got {count!r}")
    if count < 1:
        raise SpecError(
            f"{fname}.count", f"must be at least 1, got {count} (leave the role out instead)"
        )
    if count > MAX_TASKS_PER_TYPE:
        raise SpecError(f"{fname}.count", f"at most {MAX_TASKS_PER_TYPE}, got {count}")
    if role == "chief" and count != 1:
        raise SpecError(f"{fname}.count", f"a job has exactly one chief, got {count}")
    try:
        cpu = parse_cpu(task["cpu"]) if "cpu" in task else defaults.cpu
    except ValueError as e:
        raise SpecError(f"{fname}.cpu", str(e)) from None
    try:
        memory = parse_memory(task["memory"]) if "memory" in task else defaults.memory
    except ValueError as e:
        raise SpecError(f"{fname}.memory", str(e)) from None
    try:
        gpu = parse_gpu(task["gpu"]) if "gpu" in task else defaults.gpu
    except ValueError as e:
        raise SpecError(f"{fname}.gpu", str(e)) from None
    if cpu <= 0:
        raise SpecError(f"{fname}.cpu", f"must be more than 0, got {cpu:g}")
    if memory <= 0:
        raise SpecError(f"{fname}.memory", "must be more than 0")
    return TaskSpec(count=count, cpu=cpu, memory=memory, gpu=gpu)


DEFAULT_TASK = TaskSpec(count=1, cpu=1.0, memory=2 * 1024**3, gpu=0)


def validate_spec(
    raw: Any,
    *,
    default_task: TaskSpec = DEFAULT_TASK,
    default_max_runtime: float = 86400.0,
    max_runtime_limit: float | None = None,
) -> JobSpec:
    """Validate a job spec given as parsed JSON; raise SpecError naming the first bad field."""
    spec = _require_mapping(raw, "spec")
    _refuse_unknown(spec, SPEC_FIELDS, "")
    name = validate_name(spec.get("name"))
    if "source" not in spec:
        raise SpecError("source", "required: {'inline': code} or {'path': ...} or {'git': ...}")
    source = _validate_source(spec["source"])

    args = spec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise SpecError("args", "expected a list of strings")
    env = _require_mapping(spec.get("env", {}), "env")
    for key, value in env.items():
        if not ENV_NAME_RE.match(key):
            raise SpecError(f"env.{key}", "not a valid environment variable name")
        if RESERVED_ENV.match(key):
            raise SpecError(f"env.{key}", "reserved: the platform sets it for every task")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SpecError(f"env.{key}", "expected a string value")
    params = _require_mapping(spec.get("params", {}), "params")
    for key in params:
        if not isinstance(key, str) or not key:
            raise SpecError("params", "parameter names must be non-empty strings")
    runtime = spec.get("runtime")
    if runtime is not None and (not isinstance(runtime, str) or not runtime):
        raise SpecError("runtime", "expected the name of a configured runtime")

    raw_tasks = spec.get("tasks", {"worker": {}})
    raw_tasks = _require_mapping(raw_tasks, "tasks")
    _refuse_unknown(raw_tasks, set(TASK_TYPES), "tasks")
    if not raw_tasks:
        raise SpecError("tasks", "at least one task role (chief, ps or worker) is required")
    tasks = {role: _validate_task(raw_tasks[role], role, default_task) for role in raw_tasks}
    if "ps" in tasks:
        if "worker" not in tasks:
            raise SpecError("tasks.worker", "a job with ps tasks needs at least one worker")
        # ParameterServerStrategy needs a coordinator: add a chief unless one was declared.
        tasks.setdefault("chief", TaskSpec(1, default_task.cpu, default_task.memory, 0))
    ordered = {role: tasks[role] for role in TASK_TYPES if role in tasks}

    max_runtime = parse_duration(spec.get("max_runtime", default_max_runtime), "max_runtime")
    if max_runtime_limit is not None and max_runtime > max_runtime_limit:
        raise SpecError(
            "max_runtime", f"at most {max_runtime_limit:g} s on this platform, got {max_runtime:g}"
        )
    batch = spec.get("batch")
    if batch is not None:
        batch = validate_name(batch, "batch")
    pool = spec.get("pool")
    if pool is not None:
        pool = validate_name(pool, "pool")
    group = spec.get("group")
    if group is not None and (not isinstance(group, str) or not group or len(group) > 255):
        raise SpecError("group", "expected the name of one of your quota groups")
    priority = spec.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise SpecError("priority", f"expected a whole number, got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise SpecError(
            "priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
        )
    depends_on = spec.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in depends_on
    ):
        raise SpecError("depends_on", "expected a list of job ids (positive whole numbers)")
    if len(depends_on) > MAX_DEPENDENCIES:
        raise SpecError("depends_on", f"at most {MAX_DEPENDENCIES} dependencies")
    from mlp.core.alerts import validate_alerts  # alerts imports this module

    alerts = validate_alerts(spec.get("alerts", []), email_enabled=True)
    return JobSpec(
        name=name,
        batch=batch,
        pool=pool,
        priority=priority,
        group=group,
        depends_on=tuple(dict.fromkeys(depends_on)),
        alerts=tuple(alerts),
        source=source,
        tasks=ordered,
        args=[str(a) for a in args],
        env={k: str(v) for k, v in env.items()},
        params=dict(params),
        runtime=runtime,
        max_runtime=max_runtime,
    )

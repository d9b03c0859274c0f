"""The job spec, defined once: `JobSpecModel` (pydantic) is the wire format of `POST /jobs`,
its validation and normalisation (quantities, durations, the default chief) and, through its JSON
schema, the OpenAPI document's `JobSpec`. `validate_spec` turns untrusted JSON/YAML into the
normalized, immutable `JobSpec` the core works with.

No I/O. Every error names the offending field (`SpecError.field`, a dotted path such as
`tasks.worker.memory` or `alerts[1].webhook`) so that the REST API, the CLI and the notebook magics
can show the user exactly what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from mlp.core.alert_rules import validate_alerts
from mlp.core.errors import SpecError
from mlp.core.fields import (
    ALERTS_SCHEMA,
    CPU_SCHEMA,
    DURATION_SCHEMA,
    ENV_NAME_RE,
    GPU_SCHEMA,
    MAX_DEPENDENCIES,
    MAX_PRIORITY,
    MAX_TASKS_PER_TYPE,
    MEMORY_SCHEMA,
    MIN_PRIORITY,
    NAME_RE,
    RESERVED_ENV,
    SOURCE_SCHEMA,
    TASK_TYPES,
    parse_duration,
    refuse_unknown,
    require_mapping,
    validate_name,
    validate_source,
)
from mlp.scheduling.resources import format_memory, parse_cpu, parse_gpu, parse_memory


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


DEFAULT_TASK = TaskSpec(count=1, cpu=1.0, memory=2 * 1024**3, gpu=0)

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_RE.pattern)]


class TaskModel(BaseModel):
    """Resources of one task role; cpu, memory and gpu default to the platform's settings."""

    model_config = ConfigDict(extra="forbid", title="Resources")

    count: Annotated[int, Field(ge=1, le=MAX_TASKS_PER_TYPE)] = 1
    cpu: Annotated[float | None, WithJsonSchema(CPU_SCHEMA)] = None
    memory: Annotated[int | None, WithJsonSchema(MEMORY_SCHEMA)] = None
    gpu: Annotated[int | None, WithJsonSchema(GPU_SCHEMA)] = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            refuse_unknown(raw, set(cls.model_fields), "")
        return raw

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, count: Any) -> int:
        if isinstance(count, bool) or not isinstance(count, int):
            raise SpecError("count", f"expected a whole number, got {count!r}")
        if count < 1:
            raise SpecError(
                "count", f"must be at least 1, got {count} (leave the role out instead)"
            )
        if count > MAX_TASKS_PER_TYPE:
            raise SpecError("count", f"at most {MAX_TASKS_PER_TYPE}, got {count}")
        return count

    @field_validator("cpu", "memory", "gpu", mode="before")
    @classmethod
    def _quantity(cls, value: Any, info: ValidationInfo) -> float | int | None:
        name = str(info.field_name)
        if value is None:
            return None
        parse = {"cpu": parse_cpu, "memory": parse_memory, "gpu": parse_gpu}[name]
        try:
            parsed: float | int = parse(value)
        except ValueError as e:
            raise SpecError(name, str(e)) from None
        if name == "cpu" and parsed <= 0:
            raise SpecError(name, f"must be more than 0, got {parsed:g}")
        if name == "memory" and parsed <= 0:
            raise SpecError(name, "must be more than 0")
        return parsed


class TasksModel(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Tasks")

    # A role is given as an object or left out (None only means "left out").
    chief: TaskModel | SkipJsonSchema[None] = None
    ps: TaskModel | SkipJsonSchema[None] = None
    worker: TaskModel | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _one_chief(self) -> TasksModel:
        if self.chief is not None and self.chief.count != 1:
            count = self.chief.count
            raise SpecError("tasks.chief.count", f"a job has exactly one chief, got {count}")
        return self


class JobSpecModel(BaseModel):
    """A training job as submitted: what to run, on which tasks, with which resources."""

    model_config = ConfigDict(extra="forbid", title="JobSpec")

    name: Annotated[Name, Field(description="DNS-label-like: it becomes file and object names")]
    source: Annotated[dict[str, str], WithJsonSchema(SOURCE_SCHEMA)]
    args: list[Annotated[str, Field(description="command-line arguments of the script")]] = []
    env: Annotated[
        dict[Annotated[str, Field(pattern=ENV_NAME_RE.pattern)], str],
        Field(description="extra environment; TF_CONFIG, MLP_* and JUPYTERHUB_* are reserved"),
    ] = {}
    params: Annotated[
        dict[str, Any], Field(description="given to the code as JSON in $MLP_PARAMS")
    ] = {}
    runtime: Annotated[
        str | None, Field(min_length=1, description="a runtime configured by the admin")
    ] = None
    tasks: Annotated[
        TasksModel,
        Field(description="With ps tasks a chief (the coordinator) is added by default."),
    ] = TasksModel(worker=TaskModel())
    # Left out: the platform's default_max_runtime (the validator reads it from the context).
    max_runtime: Annotated[float, WithJsonSchema(DURATION_SCHEMA)] = Field(
        default=None, validate_default=True
    )
    batch: Annotated[Name | None, Field(description="a label grouping a grid's jobs")] = None
    pool: Annotated[Name | None, Field(description="default, or production once promoted")] = None
    group: Annotated[
        str | None,
        Field(min_length=1, max_length=255, description="quota group, if you are in several"),
    ] = None
    priority: Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)] = 0
    depends_on: Annotated[
        list[Annotated[int, Field(ge=1)]],
        Field(max_length=MAX_DEPENDENCIES, description="run after all these jobs succeed"),
    ] = []
    alerts: Annotated[list[dict[str, Any]], WithJsonSchema(ALERTS_SCHEMA)] = []

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, raw: Any) -> Any:
        spec = require_mapping(raw, "spec")
        refuse_unknown(spec, set(cls.model_fields), "")
        if "name" not in spec:
            raise SpecError("name", "a job name is required (a non-empty string)")
        if "source" not in spec:
            raise SpecError("source", "required: {'inline': code} or {'path': ...} or {'git': ...}")
        return spec

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, name: Any) -> str:
        return validate_name(name)

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, raw: Any) -> dict[str, str]:
        return validate_source(raw)

    @field_validator("args", mode="before")
    @classmethod
    def _args(cls, args: Any) -> list[str]:
        if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
            raise SpecError("args", "expected a list of strings")
        return [str(a) for a in args]

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, raw: Any) -> dict[str, str]:
        env = require_mapping(raw, "env")
        for key, value in env.items():
            if not ENV_NAME_RE.match(key):
                raise SpecError(f"env.{key}", "not a valid environment variable name")
            if RESERVED_ENV.match(key):
                raise SpecError(f"env.{key}", "reserved: the platform sets it for every task")
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise SpecError(f"env.{key}", "expected a string value")
        return {k: str(v) for k, v in env.items()}

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, raw: Any) -> dict[str, Any]:
        params = require_mapping(raw, "params")
        if any(not isinstance(k, str) or not k for k in params):
            raise SpecError("params", "parameter names must be non-empty strings")
        return params

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime(cls, runtime: Any) -> str | None:
        if runtime is not None and (not isinstance(runtime, str) or not runtime):
            raise SpecError("runtime", "expected the name of a configured runtime")
        return runtime

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, raw: Any) -> Any:
        tasks = require_mapping(raw, "tasks")
        refuse_unknown(tasks, set(TASK_TYPES), "tasks")
        if not tasks:
            raise SpecError("tasks", "at least one task role (chief, ps or worker) is required")
        if "ps" in tasks and "worker" not in tasks:
            raise SpecError("tasks.worker", "a job with ps tasks needs at least one worker")
        for role, task in tasks.items():
            require_mapping(task, f"tasks.{role}")
        return tasks

    @field_validator("max_runtime", mode="before")
    @classmethod
    def _max_runtime(cls, value: Any, info: ValidationInfo) -> float:
        context = info.context or {}
        if value is None:
            value = context.get("default_max_runtime", 86400.0)
        seconds = parse_duration(value, "max_runtime")
        limit = context.get("max_runtime_limit")
        if limit is not None and seconds > limit:
            raise SpecError("max_runtime", f"at most {limit:g} s on this platform, got {seconds:g}")
        return seconds

    @field_validator("batch", "pool", mode="before")
    @classmethod
    def _label(cls, value: Any, info: ValidationInfo) -> str | None:
        return None if value is None else validate_name(value, str(info.field_name))

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, group: Any) -> str | None:
        if group is not None and (not isinstance(group, str) or not group or len(group) > 255):
            raise SpecError("group", "expected the name of one of your quota groups")
        return group

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, priority: Any) -> int:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise SpecError("priority", f"expected a whole number, got {priority!r}")
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise SpecError(
                "priority", f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
            )
        return priority

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_on(cls, deps: Any) -> list[int]:
        if not isinstance(deps, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in deps
        ):
            raise SpecError("depends_on", "expected a list of job ids (positive whole numbers)")
        if len(deps) > MAX_DEPENDENCIES:
            raise SpecError("depends_on", f"at most {MAX_DEPENDENCIES} dependencies")
        return list(dict.fromkeys(deps))

    @field_validator("alerts", mode="before")
    @classmethod
    def _alerts(cls, raw: Any, info: ValidationInfo) -> list[dict[str, Any]]:
        email = (info.context or {}).get("email_enabled", True)
        return validate_alerts(raw, email_enabled=email)


SPEC_FIELDS = frozenset(JobSpecModel.model_fields)
_UNION_TAGS = frozenset({"TaskModel"})
TASK_FIELDS = frozenset(TaskModel.model_fields)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part in _UNION_TAGS:
            continue  # pydantic names the union member it tried ("TaskModel"): not a field
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def spec_error(e: ValidationError) -> SpecError:
    """The first error pydantic found, as the SpecError of the API's error contract."""
    err = e.errors(include_url=False)[0]
    where = _dotted(tuple(err["loc"]))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):
        # Validators of a whole structure name the exact sub-field ("source.ref"); validators of
        # one field name that field ("count"); model validators a field of their model ("mem").
        if cause.field.startswith(where):
            field_name = cause.field
        elif where.endswith(cause.field):
            field_name = where
        else:
            field_name = f"{where}.{cause.field}"
        return SpecError(field_name, cause.message)
    if err["type"] == "extra_forbidden":
        return SpecError(where, "unknown field")
    return SpecError(where or "spec", err["msg"])


def validate_spec(
    raw: Any,
    *,
    default_task: TaskSpec = DEFAULT_TASK,
    default_max_runtime: float = 86400.0,
    max_runtime_limit: float | None = None,
) -> JobSpec:
    """Validate a job spec given as parsed JSON; raise SpecError naming the first bad field."""
    context = {"default_max_runtime": default_max_runtime, "max_runtime_limit": max_runtime_limit}
    try:
        model = JobSpecModel.model_validate(raw, context=context)
    except ValidationError as e:
        raise spec_error(e) from None
    return from_model(model, default_task)


def from_model(model: JobSpecModel, default_task: TaskSpec = DEFAULT_TASK) -> JobSpec:
    """The core's JobSpec: platform defaults filled in, a chief added for ps jobs, roles ordered."""
    given = {role: getattr(model.tasks, role) for role in TASK_TYPES}
    tasks = {
        role: TaskSpec(
            count=t.count,
            cpu=default_task.cpu if t.cpu is None else t.cpu,
            memory=default_task.memory if t.memory is None else t.memory,
            gpu=default_task.gpu if t.gpu is None else t.gpu,
        )
        for role, t in given.items()
        if t is not None
    }
    if "ps" in tasks:
        # ParameterServerStrategy needs a coordinator: add a chief unless one was declared.
        tasks.setdefault("chief", TaskSpec(1, default_task.cpu, default_task.memory, 0))
    return JobSpec(
        name=model.name,
        batch=model.batch,
        pool=model.pool,
        priority=model.priority,
        group=model.group,
        depends_on=tuple(model.depends_on),
        alerts=tuple(model.alerts),
        source=dict(model.source),
        tasks={role: tasks[role] for role in TASK_TYPES if role in tasks},
        args=list(model.args),
        env=dict(model.env),
        params=dict(model.params),
        runtime=model.runtime,
        max_runtime=model.max_runtime,
    )


__all__ = [
    "NAME_RE",
    "SPEC_FIELDS",
    "TASK_TYPES",
    "JobSpec",
    "JobSpecModel",
    "SpecError",
    "TaskSpec",
    "parse_duration",
    "validate_name",
    "validate_spec",
]

"""The wire format of every request body and response of the REST API, as pydantic models.

`mlp.api.openapi` generates the OpenAPI document's `components.schemas` from these models (the
job spec is `mlp.core.spec.JobSpecModel`); request bodies are validated by them before a handler
calls the core, and schemathesis checks every response of a real service against them.
Responses allow properties beyond those listed (clients must ignore what they do not know).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from mlp.core.fields import CPU_SCHEMA, DURATION_SCHEMA, MEMORY_SCHEMA, NAME_RE
from mlp.core.spec import JobSpecModel
from mlp.core.states import JobState

# ----------------------------------------------------------------------------- shared parts
# An amount as people write it: {"cpu": "500m", "memory": "4Gi", "gpu": 1, <extra>: n}.
_AMOUNT_VALUE = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGTPE]i?|[kmgtpe]|m)?\s*$"},
    ]
}
AMOUNT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "cpu (cores or '500m'), memory (bytes or '4Gi'), gpu, extra resources",
    "properties": {"cpu": CPU_SCHEMA, "memory": MEMORY_SCHEMA},
    "additionalProperties": _AMOUNT_VALUE,
    "minProperties": 1,
}
Amount = Annotated[dict[str, Any], WithJsonSchema(AMOUNT_SCHEMA)]
MachineOrAmount = Annotated[
    Any,
    WithJsonSchema({"oneOf": [{"const": "machine"}, AMOUNT_SCHEMA]}),
]
Resources = Annotated[
    dict[str, float],
    Field(description="cpu (cores), memory (bytes), gpu and extra resources, as numbers"),
]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Name = Annotated[str, Field(pattern=NAME_RE.pattern, max_length=63)]


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(Response):
    """Every error: a code, a message saying what went wrong and what to do, the field."""

    error: str
    message: str
    field: str | None = Field(None, description="the offending field of the request")
    blocking: list[Blocker] | None = None


class Blocker(Response):
    """One reason a request cannot be admitted now: which quota, which resource, how much."""

    reason: str
    scope: Literal["pool", "group", "user", "cohort", "dependency"]
    resource: str
    requested: float
    available: float


class QueueInfo(Response):
    """Where a queued job stands: position (jobs ahead), score and its parts, what blocks it."""

    position: int | None
    score: float | None
    score_parts: dict[str, float]
    blocking: list[Blocker]
    waiting_for: list[int] | None = Field(None, description="dependencies not yet succeeded")


# ----------------------------------------------------------------------------- jobs
class TaskStatus(Response):
    name: str
    type: str
    index: int
    state: Literal["running", "exited", "stopped"]
    exit_code: int | None
    signal: int | None
    pid: int | None
    address: str | None


class JobEvent(Response):
    at: Timestamp
    from_: str | None = Field(alias="from")
    to: str
    reason: str


class Reservation(Response):
    """Resources held in the quota ledger by a notebook server or a job."""

    id: str
    user: str
    group: str
    pool: str
    amount: Resources
    since: Timestamp | None
    devices: list[str] = Field(
        description="the GPU devices of the pool the ledger allocated to this reservation, "
        "one per reserved gpu, held by no other job or server: the server's "
        'CUDA_VISIBLE_DEVICES is these joined by commas ("" when empty, so it sees no GPU)'
    )


class Job(Response):
    id: int
    user: str
    name: str
    batch: str | None
    state: JobState
    reason: str = Field(description="why the job is in its state")
    attempt: int
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    group: str | None
    pool: str | None
    priority: int
    queue: QueueInfo | None = Field(None, description="while Queued: position, score, blockers")
    reservation: dict[str, Any] | None = Field(None, description="what the job holds now")
    spec: JobSpecModel | None = Field(None, description="the normalized spec (details only)")
    tasks: list[TaskStatus] | None = None
    events: list[JobEvent] | None = None


class JobList(Response):
    jobs: list[Job]


class Logs(Response):
    job: int
    state: JobState
    logs: dict[str, list[str]] = Field(description="task -> last lines")


MetricPoint = Annotated[
    tuple[int, float, float], Field(description="[step, value, unix time of the report]")
]


class Metrics(Response):
    job: int
    state: JobState
    tasks: dict[str, dict[str, list[MetricPoint]]] = Field(description="task -> metric -> points")
    latest: dict[str, dict[str, Any]] = Field(description="task -> {step, time, metrics}")
    skipped_lines: int
    truncated: bool


# ----------------------------------------------------------------------------- queue, quota
class QueueEntry(QueueInfo):
    id: int
    user: str
    name: str
    group: str | None
    pool: str | None


class Queue(Response):
    now: Timestamp
    queue: list[QueueEntry]


class PoolQuota(Response):
    limit: Resources
    with_expansions: Resources
    used_by_group: Resources
    idle: Resources


class GroupQuota(Response):
    cohort: str | None
    personal_cap: Resources | None
    my_usage: Resources
    pools: dict[str, PoolQuota]


class ActiveJob(Response):
    id: int
    name: str
    state: JobState
    group: str | None
    pool: str | None


class MyQuota(Response):
    user: str
    groups: dict[str, GroupQuota]
    active_jobs: list[ActiveJob]


class ReservationList(Response):
    reservations: list[Reservation]


class ReservationRequest(BaseModel):
    """Reserve resources for a notebook server (the spawners call this before they start one)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, description="admins may reserve for another user")
    server: Annotated[str, Field(max_length=255, pattern=r"^[^/]*$")] = ""
    group: str | None = Field(None, description="the quota group, if the user is in several")
    pool: str | None = Field(None, description="default unless given")
    resources: Amount


# ----------------------------------------------------------------------------- admin
class GroupSettings(Response):
    cohort: str | None
    limits: dict[str, Resources]
    member_cap: Resources | None
    member_caps: dict[str, Resources]
    lend_limit: dict[str, Resources]


class GroupList(Response):
    groups: dict[str, GroupSettings]
    default_group: str


class GroupRequest(BaseModel):
    """A quota group: limits per pool, a cap per member, what it may lend, its cohort."""

    model_config = ConfigDict(extra="forbid")

    cohort: str | None = None
    limits: dict[str, MachineOrAmount] = {}
    member_cap: MachineOrAmount | None = None
    member_caps: dict[str, MachineOrAmount] = {}
    lend_limit: dict[str, MachineOrAmount] = {}


class PoolSettings(Response):
    capacity: Resources
    priority: int
    requires_promotion: bool


class PoolList(Response):
    pools: dict[str, PoolSettings]


class PoolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: MachineOrAmount = "machine"
    priority: int = 0
    requires_promotion: bool = False


class Changed(Response):
    preempted: list[str] = Field(description="holders (jobs) preempted by the change")


class Expansion(Response):
    id: str
    group: str
    pool: str
    amount: Resources
    start: Timestamp
    expiry: Timestamp
    reason: str
    granted_by: str
    state: Literal["scheduled", "active", "expired", "revoked"] | None = None


class ExpansionList(Response):
    expansions: list[Expansion]


class ExpansionRequest(BaseModel):
    """A temporary addition to a group's quota in a pool; it expires by itself."""

    model_config = ConfigDict(extra="forbid")

    group: str
    pool: str = "default"
    amount: Amount
    duration: Annotated[float | str, WithJsonSchema(DURATION_SCHEMA)]
    start_in: Annotated[
        float | str,
        WithJsonSchema(
            {"oneOf": [{"type": "number", "minimum": 0}, DURATION_SCHEMA["oneOf"][1]]}
        ),
    ] = 0
    reason: Annotated[str, Field(min_length=1, pattern=r"\S")]


class Revoked(Changed):
    revoked: str


class Promotion(Response):
    user: str
    name: str
    promoted_by: str
    at: Timestamp


class PromotionList(Response):
    promotions: list[Promotion]


class PromotionRequest(BaseModel):
    """A model (a user's job name) whose jobs run in the production pool from now on."""

    model_config = ConfigDict(extra="forbid")

    user: Annotated[str, Field(min_length=1)]
    name: Name


class Promoted(Response):
    user: str
    name: str
    promoted_by: str
    moved_to_production: list[int]


class Demoted(Response):
    user: str
    name: str
    promoted: bool


class Usage(Response):
    now: Timestamp
    pools: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    users: dict[str, Resources]
    cohorts: dict[str, dict[str, Resources]]



# ----------------------------------------------------------------------------- models (serving)
CpuAmount = Annotated[float | str, WithJsonSchema(CPU_SCHEMA)]
MemoryAmount = Annotated[int | str, WithJsonSchema(MEMORY_SCHEMA)]


class TensorSpec(Response):
    dtype: str
    shape: list[int | None]


class Signature(Response):
    key: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


class Model(Response):
    name: str
    owner: str
    group: str | None = Field(description="the hub group the model is shared with")
    description: str
    created_at: Timestamp
    versions: int
    latest_version: int | None
    production_version: int | None
    live_deployments: list[int]


class ModelList(Response):
    models: list[Model]


class ModelVersion(Response):
    model: str
    version: int
    job_id: int | None
    source: str = Field(description="the export folder, relative to the owner's home")
    params: dict[str, Any]
    metrics: dict[str, Any] = Field(description="the job's final metrics per task")
    signature: Signature
    stage: Literal["none", "production", "archived"]
    created_at: Timestamp
    created_by: str


class ModelVersionList(Response):
    versions: list[ModelVersion]


class RegisterRequest(BaseModel):
    """A new version from a job's export folder (`job_id`, `path` relative to the job folder,
    default `export`) or from a folder in your home (`path` alone)."""

    model_config = ConfigDict(extra="forbid")

    job_id: Annotated[int, Field(ge=1, le=2**62)] | None = None
    path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    group: Annotated[str, Field(min_length=1, max_length=255)] | None = Field(
        None, description="share the model with this hub group (yours)")
    description: Annotated[str, Field(max_length=2000)] = ""


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: Literal["none", "production", "archived"]


class ModelDeleted(Response):
    name: str
    deleted: bool
    stopped_deployments: list[int]


class DeploymentMetrics(Response):
    requests: int
    errors: int
    window_s: float
    latency_ms: dict[str, float | None]
    requests_per_s: float


class Deployment(Response):
    id: int
    model: str
    version: int
    user: str
    state: Literal["starting", "running", "rolling", "failed", "stopped"]
    reason: str
    resources: dict[str, float]
    group: str
    pool: str
    restarts: int
    created_at: Timestamp
    updated_at: Timestamp
    endpoint: str = Field(description="path through the hub's proxy")
    replicas: list[dict[str, Any]]
    events: list[dict[str, Any]]
    metrics: DeploymentMetrics
    logs: dict[str, str] | None = Field(None, description="log tail per replica (details)")


class DeploymentList(Response):
    deployments: list[Deployment]


class DeployRequest(BaseModel):
    """Serve a version (default: the production version, else the latest)."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=2**62)] | None = None
    cpu: CpuAmount | None = None
    memory: MemoryAmount | None = None
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    group: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=2**62)]


class Manifest(Response):
    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: dict[str, Any]

Error.model_rebuild()

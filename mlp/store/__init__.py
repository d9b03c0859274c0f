"""The job store: SQLAlchemy models and the one class that reads and writes them.

The mlp service is the store's only writer (see docs/architecture.md, "One ledger"); every state
change goes through `Store.transition`, which checks the state machine and records a timestamped
event with its reason in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from mlp.core.states import JobState, check_transition


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(63))
    batch: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # Where the job is charged and how it queues (resolved at submit; see mlp/scheduling).
    group: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pool: Mapped[str | None] = mapped_column(String(63), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # What the backend needs to find the job's processes again after a restart (pids, ports...).
    backend_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[float] = mapped_column(Float)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[Job] = relationship(back_populates="events")


class HolderRow(Base):
    """Resources a running job or a notebook server holds in the quota ledger."""

    __tablename__ = "holders"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    user: Mapped[str] = mapped_column(String(255), index=True)
    group: Mapped[str] = mapped_column(String(255))
    pool: Mapped[str] = mapped_column(String(63))
    amount: Mapped[dict[str, Any]] = mapped_column(JSON)
    borrowed: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    admitted_at: Mapped[float] = mapped_column(Float)
    until: Mapped[float | None] = mapped_column(Float, nullable=True)
    # GPU device ids the ledger allocated (CUDA_VISIBLE_DEVICES); None in rows from before
    devices: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class QuotaGroupRow(Base):
    """A quota group set through the admin API (wins over configuration)."""

    __tablename__ = "quota_groups"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(255))


class PoolRow(Base):
    """A pool set through the admin API (wins over configuration)."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(255))


class ExpansionRow(Base):
    """A temporary quota expansion granted by an admin."""

    __tablename__ = "expansions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group: Mapped[str] = mapped_column(String(255))
    pool: Mapped[str] = mapped_column(String(63))
    amount: Mapped[dict[str, Any]] = mapped_column(JSON)
    start: Mapped[float] = mapped_column(Float)
    expiry: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    granted_by: Mapped[str] = mapped_column(String(255))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class PromotionRow(Base):
    """A model (a user's job name) promoted to the production pool by an admin."""

    __tablename__ = "promotions"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    promoted_by: Mapped[str] = mapped_column(String(255))
    at: Mapped[float] = mapped_column(Float)


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema with Alembic."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


class Store:
    """Jobs and their events in one SQLAlchemy database (SQLite by default)."""

    def __init__(self, url: str, *, upgrade: bool = True):
        self.url = url
        if upgrade:
            migrate(url)
        self.engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            # WAL lets readers (the CLI, tests) look while the service writes.
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def create_job(
        self, user: str, name: str, spec: dict[str, Any], reason: str, batch: str | None = None
    ) -> Job:
        now = time.time()
        with self.session() as s:
            job = Job(
                user=user,
                name=name,
                batch=batch,
                state=JobState.QUEUED.value,
                reason=reason,
                spec=spec,
                created_at=now,
                updated_at=now,
                attempt=1,
            )
            s.add(job)
            s.flush()
            s.add(
                JobEvent(job_id=job.id, at=now, from_state=None, to_state=job.state, reason=reason)
            )
        return job

    def get_job(self, job_id: int) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def list_jobs(
        self,
        user: str | None = None,
        states: Iterable[JobState] | None = None,
        limit: int | None = None,
        batch: str | None = None,
    ) -> list[Job]:
        with self.session() as s:
            q = select(Job).order_by(Job.id.desc())
            if user is not None:
                q = q.where(Job.user == user)
            if batch is not None:
                q = q.where(Job.batch == batch)
            if states is not None:
                q = q.where(Job.state.in_([st.value for st in states]))
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def events(self, job_id: int) -> list[JobEvent]:
        with self.session() as s:
            return list(
                s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            )

    def transition(self, job_id: int, target: JobState, reason: str, **fields: Any) -> Job:
        """Move a job to `target` (checked against the state machine) and record why."""
        now = time.time()
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise KeyError(job_id)
            current = JobState(job.state)
            check_transition(current, target)
            job.state = target.value
            job.reason = reason
            job.updated_at = now
            if target == JobState.RUNNING and job.started_at is None:
                job.started_at = now
            if target.terminal:
                job.finished_at = now
            for key, value in fields.items():
                setattr(job, key, value)
            s.add(
                JobEvent(
                    job_id=job.id,
                    at=now,
                    from_state=current.value,
                    to_state=target.value,
                    reason=reason,
                )
            )
        return job

    def update(self, job_id: int, **fields: Any) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise KeyError(job_id)
            for key, value in fields.items():
                setattr(job, key, value)
            job.updated_at = time.time()
        return job

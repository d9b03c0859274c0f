"""The model registry: named models, each with immutable numbered versions copied from a job's
SavedModel export, with the job id, its parameters, its final metrics and the serving signature.

Ownership: a model belongs to the user who registered its first version; the owner may share it
with one hub group (its members may read it, deploy it and query its deployments). Admins see
and may change everything. Promotion of a version (admins) marks it `production` and promotes
the model's name in the quota service, so its deployments and its training jobs run in the
production pool.

Copies are made with the owner's rights (a `tar` run as the owner's account streams the export
folder; the service unpacks regular files and folders only, refusing links), so nothing a user
cannot read can enter the registry; the signature is read by the serving environment's Python,
also as the owner's account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from tornado import web

from mlp.core.fields import NAME_RE
from mlp.core.metrics import metrics_path, read_metrics
from mlp.core.paths import job_dir, user_home
from mlp.isolation import MLPIsolation
from mlp.isolation.accounts import Account
from mlp.isolation.process import make_preexec, run_as_env
from mlp.serving.rows import DeploymentRow, ModelRow, ModelVersionRow
from mlp.store import Store

SERVER_SCRIPT = Path(__file__).with_name("kserve_server.py")
LIVE_STATES = ("starting", "running", "rolling")


class RegistryError(web.HTTPError):
    """A refused registry operation: HTTP status, error code, message (what to do), field."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None):
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.status = status
        self.error = error
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Caller:
    name: str
    groups: tuple[str, ...]
    admin: bool


def model_dict(row: ModelRow, versions: list[ModelVersionRow], live: list[int]) -> dict[str, Any]:
    return {
        "name": row.name,
        "owner": row.owner,
        "group": row.group,
        "description": row.description,
        "created_at": row.created_at,
        "versions": len(versions),
        "latest_version": max((v.version for v in versions), default=None),
        "production_version": max(
            (v.version for v in versions if v.stage == "production"), default=None
        ),
        "live_deployments": live,
    }


def version_dict(v: ModelVersionRow) -> dict[str, Any]:
    return {
        "model": v.model,
        "version": v.version,
        "job_id": v.job_id,
        "source": v.source,
        "params": v.params,
        "metrics": v.metrics,
        "signature": v.signature,
        "stage": v.stage,
        "created_at": v.created_at,
        "created_by": v.created_by,
    }


class ModelRegistry:
    def __init__(
        self,
        store: Store,
        data_dir: str,
        isolation: MLPIsolation,
        python: str,
        inspect_timeout: float = 120.0,
    ):
        self.store = store
        self.data_dir = Path(data_dir)
        self.isolation = isolation
        self.python = python
        self.inspect_timeout = inspect_timeout
        self.root = self.data_dir / "models"
        self.root.mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.root, 0o711)

    # ------------------------------------------------------------------ reading
    def account(self, user: str) -> Account | None:
        return self.isolation.account(user)

    def get(self, name: str) -> ModelRow:
        with self.store.session() as s:
            row = s.get(ModelRow, name)
        if row is None:
            raise RegistryError(404, "not_found", f"model {name!r} does not exist")
        return row

    def may_read(self, row: ModelRow, caller: Caller) -> bool:
        return (
            caller.admin or row.owner == caller.name
            or (row.group is not None and row.group in caller.groups)
        )

    def readable(self, name: str, caller: Caller) -> ModelRow:
        row = self.get(name)
        if not self.may_read(row, caller):
            raise RegistryError(
                403, "forbidden",
                f"model {name!r} belongs to {row.owner} and is not shared with your groups",
            )
        return row

    def owned(self, name: str, caller: Caller) -> ModelRow:
        row = self.get(name)
        if not (caller.admin or row.owner == caller.name):
            raise RegistryError(403, "forbidden", f"only {row.owner} (the owner) or an admin "
                                f"may change model {name!r}")
        return row

    def versions(self, name: str) -> list[ModelVersionRow]:
        with self.store.session() as s:
            return list(s.scalars(
                select(ModelVersionRow).where(ModelVersionRow.model == name)
                .order_by(ModelVersionRow.version)
            ))

    def version(self, name: str, version: int | None) -> ModelVersionRow:
        versions = self.versions(name)
        if not versions:
            raise RegistryError(404, "not_found", f"model {name!r} has no versions")
        if version is None:
            return versions[-1]
        for v in versions:
            if v.version == version:
                return v
        raise RegistryError(404, "not_found", f"model {name!r} has no version {version} "
                            f"(versions: {', '.join(str(v.version) for v in versions)})")

    def live_deployments(self, name: str) -> list[int]:
        with self.store.session() as s:
            return list(s.scalars(
                select(DeploymentRow.id).where(
                    DeploymentRow.model == name, DeploymentRow.state.in_(LIVE_STATES)
                ).order_by(DeploymentRow.id)
            ))

    def describe(self, row: ModelRow) -> dict[str, Any]:
        return model_dict(row, self.versions(row.name), self.live_deployments(row.name))

    def visible(self, caller: Caller) -> list[dict[str, Any]]:
        with self.store.session() as s:
            rows = list(s.scalars(select(ModelRow).order_by(ModelRow.name)))
        return [self.describe(r) for r in rows if self.may_read(r, caller)]

    # ------------------------------------------------------------------ registering
    def resolve_source(
        self, caller: Caller, job: Any | None, path: str | None
    ) -> tuple[Path, str]:
        """The export folder (inside the owner's home) and how the source is recorded."""
        home = user_home(self.data_dir, caller.name)
        if job is not None:
            base = job_dir(self.data_dir, job.user, job.id, job.name)
            home = user_home(self.data_dir, job.user)
            rel = path or "export"
        else:
            if not path:
                raise RegistryError(400, "bad_request",
                                    "give job_id (the job's export folder) or path", "path")
            base, rel = home, path
        if "\x00" in rel:
            raise RegistryError(400, "bad_request", "path contains a NUL character", "path")
        folder = Path(os.path.normpath(base / rel))
        if folder != home and home not in folder.parents:
            raise RegistryError(400, "bad_request",
                                f"path {rel!r} leaves the user's folder; give a folder inside "
                                "it (relative to the job folder or your home)", "path")
        return folder, str(folder.relative_to(home))

    async def register(
        self,
        caller: Caller,
        name: str,
        *,
        job: Any | None,
        path: str | None,
        group: str | None,
        description: str,
    ) -> ModelVersionRow:
        if not NAME_RE.match(name):
            raise RegistryError(400, "bad_request", f"model name {name!r}: use lowercase "
                                "letters, digits and '-' (at most 63)", "name")
        with self.store.session() as s:
            existing = s.get(ModelRow, name)
        if existing is not None and not (caller.admin or existing.owner == caller.name):
            raise RegistryError(403, "forbidden", f"model {name!r} belongs to {existing.owner}; "
                                "pick another name")
        if group is not None and not caller.admin and group not in caller.groups:
            raise RegistryError(400, "bad_request", f"you are not in the hub group {group!r}; "
                                "share a model with one of your groups", "group")
        owner = existing.owner if existing is not None else (job.user if job else caller.name)
        folder, source = self.resolve_source(caller, job, path)
        account = self.account(owner)
        stage = self.root / f".incoming-{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            await self._copy(folder, stage, account)
            signature = await self._inspect(stage, account)
            metrics = self._final_metrics(job)
            with self.store.session() as s:
                if s.get(ModelRow, name) is None:
                    s.add(ModelRow(name=name, owner=owner, group=group,
                                   description=description, created_at=time.time()))
                elif group is not None or description:
                    row = s.get(ModelRow, name)
                    assert row is not None
                    if group is not None:
                        row.group = group
                    if description:
                        row.description = description
                s.flush()
                last = s.scalar(select(func.max(ModelVersionRow.version))
                                .where(ModelVersionRow.model == name))
                number = (last or 0) + 1
                final = self.root / name / str(number)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(final.parent, 0o711)  # the service runs with umask 077
                if final.exists():  # left by a registration that failed after its rename
                    shutil.rmtree(final)
                stage.rename(final)
                v = ModelVersionRow(
                    model=name, version=number, job_id=job.id if job else None,
                    source=source, path=str(final),
                    params=dict((job.spec.get("params") if job else None) or {}),
                    metrics=metrics, signature=signature, stage="none",
                    created_at=time.time(), created_by=caller.name,
                )
                s.add(v)
            return v
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    async def _copy(self, folder: Path, target: Path, account: Account | None) -> None:
        """Stream `folder` as the owner (tar), unpack regular files and folders only."""
        target.mkdir(mode=0o750)
        if account is not None:
            os.chown(target, 0, account.gid)
        proc = await asyncio.create_subprocess_exec(
            "tar", "-C", str(folder), "-cf", "-", ".",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=run_as_env(account, {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}),
            preexec_fn=make_preexec(account, None) if account else None,
        )
        assert proc.stdout is not None and proc.stderr is not None
        data = await proc.stdout.read()
        err = (await proc.stderr.read()).decode(errors="replace").strip()
        await proc.wait()
        if proc.returncode != 0:
            reason = err.splitlines()[-1] if err else f"tar exited with {proc.returncode}"
            if not folder.exists() or "Cannot open" in err or "No such file" in err:
                reason = f"the export folder {folder} does not exist or cannot be read"
            raise RegistryError(400, "bad_request", f"{reason}; train with an export step "
                                "(vlps: trainer.export(path, signature)) and give that folder",
                                "path")
        await asyncio.to_thread(self._unpack, data, target, account)

    @staticmethod
    def _unpack(data: bytes, target: Path, account: Account | None) -> None:
        import io

        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise RegistryError(400, "bad_request", f"{m.name!r} in the export folder "
                                        "is a link or special file; a model version holds "
                                        "regular files only", "path")
            tar.extractall(target, members=members, filter="data")
        gid = account.gid if account is not None else -1
        os.chmod(target, 0o750)  # the archive's "." entry carried the export folder's mode
        if gid >= 0:
            os.chown(target, 0, gid)
        for dirpath, dirnames, filenames in os.walk(target):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                os.chmod(p, 0o750)
                if gid >= 0:
                    os.chown(p, 0, gid)
            for f in filenames:
                p = os.path.join(dirpath, f)
                os.chmod(p, 0o440)
                if gid >= 0:
                    os.chown(p, 0, gid)

    async def _inspect(self, folder: Path, account: Account | None) -> dict[str, Any]:
        if not (folder / "saved_model.pb").is_file():
            raise RegistryError(400, "bad_request", "the export folder is not a SavedModel (no "
                                "saved_model.pb in it); give the folder trainer.export() or "
                                "tf.saved_model.save() wrote", "path")
        env = run_as_env(account, {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2",
                                   "CUDA_VISIBLE_DEVICES": ""})
        proc = await asyncio.create_subprocess_exec(
            self.python, str(SERVER_SCRIPT), "--inspect", str(folder),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
            preexec_fn=make_preexec(account, None, "/") if account else None,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.inspect_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RegistryError(400, "bad_request", "reading the SavedModel's signature took "
                                f"longer than {self.inspect_timeout:g} s") from None
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RegistryError(400, "bad_request", (lines[-1] if lines else "unreadable")
                                + " (the export folder is not a loadable SavedModel)", "path")
        return dict(json.loads(out))

    def _final_metrics(self, job: Any | None) -> dict[str, Any]:
        if job is None:
            return {}
        path = metrics_path(job.backend_state)
        if path is None:
            return {}
        report = read_metrics(path)
        return {task: {"step": r["step"], **r["metrics"]} for task, r in report.latest.items()}

    # ------------------------------------------------------------------ changing
    def set_stage(self, name: str, version: int, stage: str) -> ModelVersionRow:
        with self.store.session() as s:
            v = s.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model == name, ModelVersionRow.version == version))
            if v is None:
                raise RegistryError(404, "not_found", f"model {name!r} has no version {version}")
            if stage == "production":
                for other in s.scalars(select(ModelVersionRow).where(
                        ModelVersionRow.model == name, ModelVersionRow.stage == "production")):
                    other.stage = "archived"
            v.stage = stage
        return v

    def delete(self, name: str) -> None:
        with self.store.session() as s:
            row = s.get(ModelRow, name)
            if row is not None:
                for v in s.scalars(select(ModelVersionRow).where(ModelVersionRow.model == name)):
                    s.delete(v)
                for d in s.scalars(select(DeploymentRow).where(DeploymentRow.model == name)):
                    s.delete(d)
                s.delete(row)
        shutil.rmtree(self.root / name, ignore_errors=True)

"""Fixtures of the test suite.

- `data_dir`: a fresh platform data directory (tmp).
- `manager_factory`: builds a real JobManager (SQLite store + LocalProcessBackend) on a data dir;
  calling it twice on the same dir is a service restart.
- `hub`: a real JupyterHub + configurable-http-proxy + mlp service (+ idle culler) started from
  hub_config/mlp_hub_config/jupyterhub_config.py on free loopback ports, once per session. It carries a
  `test-admin` service token for the hub API and `hub.user_token(name)` creates users/tokens.
- `alice`, `bob`, `admin`: REST clients of the mlp API (through the proxy) as those users.
- `k8s`: one real Kubernetes control plane per session (etcd, kube-apiserver with RBAC,
  controller-manager, scheduler, kwok; binaries from scripts/k8s-build.sh), shared by tests/k8s
  and tests/spawners, started only when a test asks for it. Nodes (kwok, run nothing): `cpu-0`,
  `cpu-1` with 8 cpu / 32Gi, `gpu-0` with 16 cpu / 64Gi and 4 `nvidia.com/gpu`; tests that need
  other shapes add nodes with `k8s.add_node(name, NodeShape(...))`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlptest import Api, Hub, start_hub, stop_hub

from mlp.backends.local import LocalProcessBackend
from mlp.core.alerts import AlertNotifier
from mlp.core.manager import JobManager, ManagerSettings
from mlp.core.quota import QuotaService
from mlp.core.spec import TaskSpec
from mlp.core.states import JobState
from mlp.devcluster import Cluster, NodeShape, start_cluster
from mlp.scheduling import QuotaConfig, ScorePolicy
from mlp.store import Store


# --------------------------------------------------------------------------- manager level
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
async def manager_factory(data_dir: Path) -> AsyncIterator[Callable[..., JobManager]]:
    managers: list[JobManager] = []

    def make(
        quota: dict[str, Any] | None = None, alerts: dict[str, Any] | None = None, **overrides: Any
    ) -> JobManager:
        quota = quota or {
            "pools": {
                "default": {"capacity": {"cpu": 64, "memory": "256Gi"}},
                "production": {
                    "capacity": {"cpu": 64, "memory": "256Gi"},
                    "priority": 100,
                    "requires_promotion": True,
                },
            },
            "default_group_quota": {"limits": {"default": {"cpu": 64, "memory": "256Gi"}}},
        }
        alerts = alerts or {}
        store = Store(f"sqlite:///{data_dir / 'mlp.sqlite'}")
        backend = LocalProcessBackend(data_dir=str(data_dir), stop_grace_period=2.0)
        settings = ManagerSettings(
            runtimes={"default": [sys.executable]},
            default_runtime="default",
            poll_interval=0.1,
            default_task=TaskSpec(1, 1.0, 2**30, 0),
            default_max_runtime=600.0,
            max_runtime_limit=None,
        )
        for k, v in overrides.items():
            setattr(settings, k, v)
        quota_config = QuotaConfig(**quota)
        qs = QuotaService(store, quota_config, ScorePolicy())
        m = JobManager(store, backend, settings, qs, notifier=AlertNotifier(**alerts))
        m.start()
        managers.append(m)
        return m

    yield make
    for m in managers:
        await m.stop()
        for job in m.store.list_jobs(states=[JobState.STARTING, JobState.RUNNING]):
            if job.backend_state:
                await m.backend.stop(job.id, job.backend_state)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = start_hub(
        tmp_path_factory.mktemp("hub"),
        [
            "--LocalProcessBackend.stop_grace_period=2",
            "--MLPService.poll_interval=0.2",
            "--MLPService.sse_keepalive_interval=1",
        ],
    )
    yield h
    stop_hub(h)


@pytest.fixture(scope="session")
def alice(hub: Hub) -> Api:
    return Api(hub, hub.user_token("alice"))


@pytest.fixture(scope="session")
def bob(hub: Hub) -> Api:
    return Api(hub, hub.user_token("bob"))


@pytest.fixture(scope="session")
def admin(hub: Hub) -> Api:
    return Api(hub, hub.user_token("admin"))


# --------------------------------------------------------------------------- Kubernetes
K8S_NODES = {
    "cpu-0": NodeShape(cpu="8", memory="32Gi"),
    "cpu-1": NodeShape(cpu="8", memory="32Gi"),
    "gpu-0": NodeShape(cpu="16", memory="64Gi", gpu=4, labels={"mlp.jupyter.org/gpu": "true"}),
}


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("k8s"), K8S_NODES)
    yield cluster
    cluster.stop()

"""Fixtures of the magics tests (the hub-level ones come from tests/conftest.py).

- `shell`: an IPython InteractiveShell with `%load_ext mlp_magics`, talking to the session's
  real hub + mlp service as alice (MLP_URL and JUPYTERHUB_API_TOKEN in the environment, as a
  spawned user server has them); its TrainMagics polls fast.
- `magics`: that shell's TrainMagics instance.
- `client`: a MagicsClient of the mlp API as alice.
- `closed_url`: an mlp URL on which nothing listens (the service unreachable).
- `alice_server`: alice's notebook server spawned through the hub API (LocalMLPSpawner, in her
  folder) and a `kernel_manager()` that starts kernels *inside that server* through its kernels
  REST API and websocket (jupyter_server's gateway client), so a notebook run by nbclient has
  exactly the environment the spawner gives users: MLP_URL, the server's own
  JUPYTERHUB_API_TOKEN, her folder as working directory.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from user_server import UserServer, spawned_alice_server

from mlp_magics.client import MagicsClient


@pytest.fixture
def alice_env(hub: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"MLP_URL": hub.service_url, "JUPYTERHUB_API_TOKEN": hub.user_token("alice")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLP_TOKEN", raising=False)
    return env


@pytest.fixture
def client(alice_env: dict[str, str]) -> MagicsClient:
    return MagicsClient(timeout=10)


@pytest.fixture
def shell(alice_env: dict[str, str]) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("mlp_magics")
    magics = ip._mlp_magics
    magics.poll_interval = 0.2
    magics.max_poll_interval = 0.5
    magics.service_url = None
    yield ip
    ip.extension_manager.unload_extension("mlp_magics")


@pytest.fixture
def magics(shell: InteractiveShell) -> Any:
    return shell._mlp_magics


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/mlp/"


@pytest.fixture
def alice_server(hub: Any) -> Iterator[UserServer]:
    with spawned_alice_server(hub) as server:
        yield server

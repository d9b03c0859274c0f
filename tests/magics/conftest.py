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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from threading import Thread
from typing import Any

import pytest
import websocket
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager

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


class ServerKernelClient(GatewayKernelClient):
    """GatewayKernelClient whose websocket carries the token: jupyter_server's own client opens
    the channels without headers, which a hub-authenticated server answers with 403."""

    async def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True,
                             hb: bool = True, control: bool = True) -> None:
        gw = GatewayClient.instance()
        url = f"{gw.ws_url}{gw.kernels_endpoint}/{self.kernel_id}/channels"
        self.channel_socket = websocket.create_connection(
            url, timeout=gw.KERNEL_LAUNCH_TIMEOUT, enable_multithread=True,
            header=[f"Authorization: token {gw.auth_token}"],
        )
        await ensure_async(AsyncKernelClient.start_channels(
            self, shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control))
        self.response_router = Thread(target=self._route_responses, daemon=True)
        self.response_router.start()


@dataclass
class UserServer:
    url: str
    token: str
    kernel_manager: Callable[[], GatewayKernelManager]


@pytest.fixture
def alice_server(hub: Any) -> Iterator[UserServer]:
    token = hub.user_token("alice")
    r = hub.hub_api("POST", "/users/alice/server")
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 120
    while True:
        server = hub.hub_api("GET", "/users/alice").json()["servers"].get("")
        if server and server["ready"]:
            break
        assert time.monotonic() < deadline, f"alice's server not ready:\n{hub.log_tail()}"
        time.sleep(0.3)
    gw = GatewayClient.instance()
    gw.url = f"{hub.url}/user/alice"
    gw.ws_url = gw.url.replace("http://", "ws://", 1)
    gw.auth_token = token
    gw.auth_scheme = "token"
    gw.request_timeout = gw.connect_timeout = 120.0
    gw.init_connection_args()

    def kernel_manager() -> GatewayKernelManager:
        return GatewayKernelManager(kernel_name="python3", client_factory=ServerKernelClient)

    try:
        yield UserServer(url=gw.url, token=token, kernel_manager=kernel_manager)
    finally:
        GatewayClient.clear_instance()
        hub.hub_api("DELETE", "/users/alice/server")
        deadline = time.monotonic() + 60
        while hub.hub_api("GET", "/users/alice").json()["servers"].get("") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.3)

"""alice's notebook server spawned through the hub API (LocalMLPSpawner, in her folder), and
kernels started *inside that server* through its kernels REST API and websocket (jupyter_server's
gateway client): a kernel there has exactly the environment the spawner gives users (MLP_URL,
the server's own JUPYTERHUB_API_TOKEN, her folder as working directory)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from threading import Thread
from typing import Any

import websocket
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager

__all__ = ["ServerKernelClient", "UserServer", "spawned_alice_server"]


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


@contextmanager
def spawned_alice_server(hub: Any) -> Iterator[UserServer]:
    """Spawn alice's server through the hub API; stop it (and wait for that) on exit."""
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

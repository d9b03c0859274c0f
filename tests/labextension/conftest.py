"""Fixtures of the JupyterLab panel's tests.

- `panel_server`: a real Jupyter server (pytest-jupyter's `jp_serverapp`) with the panel's server
  extension enabled, pointed at the session's real hub + mlp service with alice's hub token; tests
  may repoint `panel_config` (the extension's MLPPanelConfig) at another URL or token.
- `fetch`: pytest-jupyter's `jp_fetch` run to completion on the server's own event loop (the
  tests are plain functions: pytest-asyncio would run coroutines on another loop than the
  server's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"mlp_magics.serverext": True}}}


@pytest.fixture
def panel_config(jp_serverapp: Any, hub: Any) -> Any:
    config = jp_serverapp.web_app.settings["mlp_panel_config"]
    config.service_url = hub.service_url
    config.token = hub.user_token("alice")
    config.request_timeout = 10.0
    return config


@pytest.fixture
def fetch(jp_fetch: Any, jp_asyncio_loop: Any) -> Callable[..., Any]:
    def run(*parts: str, **kw: Any) -> Any:
        return jp_asyncio_loop.run_until_complete(jp_fetch(*parts, **kw))

    return run

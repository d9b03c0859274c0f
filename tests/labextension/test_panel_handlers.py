"""The panel's server-extension handlers (a real Jupyter server) against the session's real hub +
mlp service: calls are forwarded with the server's token and the service's answers, errors
included, come back unchanged; an absent or unconfigured service gives a reason.

pytest-jupyter's fixtures are imported here, not registered as a plugin: its autouse event loop
and its coroutine-test hooks would otherwise apply to the whole suite (pytest-asyncio runs the
other async tests). The tests are plain functions; `fetch` runs `jp_fetch` on the server's loop.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403 (the jp_* fixtures)

pytestmark = pytest.mark.integration

SHORT = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.1)\n"
SLEEPY = "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n"


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"mlp_magics.serverext": True}}}


@pytest.fixture
def panel_config(jp_serverapp: Any, hub: Any) -> Any:
    """The extension's MLPPanelConfig, pointed at the session's service with alice's token."""
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


def call(fetch: Any, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    if body is not None:
        kw["body"] = json.dumps(body)
    elif method in ("POST", "PUT"):
        kw["body"] = "{}"
    return fetch("mlp", "panel", "api", *path.split("/"), method=method, raise_error=False, **kw)


def test_extension_is_loaded_and_configured(fetch, panel_config, hub):
    r = fetch("mlp", "panel", "config")
    body = json.loads(r.body)
    assert body["configured"] is True and body["service_url"] == hub.service_url
    assert body["problem"] is None


def test_submit_list_and_cancel_through_the_server(fetch, panel_config, alice):
    r = call(fetch, "POST", "jobs", {"name": "via-panel", "source": {"inline": SLEEPY}})
    assert r.code == 201, r.body
    job = json.loads(r.body)
    assert job["user"] == "alice" and job["state"] in ("Queued", "Starting", "Running")
    listed = json.loads((call(fetch, "GET", "jobs", params={"limit": 50})).body)
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    alice.wait(job["id"], {"Running"})
    r = call(fetch, "DELETE", f"jobs/{job['id']}")
    assert r.code == 200, r.body
    cancelled = alice.wait(job["id"], {"Cancelled"})
    assert "alice" in cancelled["reason"]


def test_service_errors_come_back_unchanged(fetch, panel_config, alice):
    bad = {"name": "Bad Name", "source": {"inline": "x"}}
    direct = alice("POST", "/jobs", json=bad)
    r = call(fetch, "POST", "jobs", bad)
    assert r.code == direct.status_code == 400
    assert json.loads(r.body) == direct.json()
    assert json.loads(r.body)["field"] == "name"
    worker = {"name": "w", "source": {"inline": "x"}, "tasks": {"worker": {"cpu": -1}}}
    r = call(fetch, "POST", "jobs", worker)
    assert r.code == 400 and json.loads(r.body)["field"] == "tasks.worker.cpu"
    r = call(fetch, "GET", "jobs/999999")
    assert r.code == 404 and json.loads(r.body) == alice("GET", "/jobs/999999").json()
    r = call(fetch, "GET", "admin/usage")  # alice is no admin
    assert r.code == 403 and "admins only" in json.loads(r.body)["message"]


def test_admin_calls_with_an_admin_server_token(fetch, panel_config, hub):
    panel_config.token = hub.user_token("admin")
    r = call(fetch, "GET", "admin/usage")
    assert r.code == 200 and "pools" in json.loads(r.body)
    r = call(fetch, "GET", "queue", params={"user": "*"})
    assert r.code == 200 and "queue" in json.loads(r.body)


def test_logs_follow_is_streamed_to_the_end(fetch, panel_config, alice):
    job = alice.submit({"name": "streamed", "source": {"inline": SHORT}})
    r = call(fetch, "GET", f"jobs/{job['id']}/logs",
                   params={"follow": "true", "tail": 100}, request_timeout=60)
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    text = r.body.decode()
    assert "event: log" in text and "line 2" in text
    assert "event: end" in text and "Succeeded" in text
    r = call(fetch, "GET", "jobs/999999/logs", params={"follow": "true"})
    assert r.code == 404 and "does not exist" in json.loads(r.body)["message"]


def test_unreachable_service_names_the_url_and_cause(fetch, panel_config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    panel_config.service_url = f"http://127.0.0.1:{port}/services/mlp/"
    r = call(fetch, "GET", "jobs")
    body = json.loads(r.body)
    assert r.code == 502 and body["error"] == "unreachable"
    assert f"127.0.0.1:{port}" in body["message"] and "retries" in body["message"]


def test_unconfigured_server_says_what_is_missing(fetch, panel_config):
    panel_config.service_url = ""
    r = call(fetch, "GET", "jobs")
    assert r.code == 503 and "$MLP_URL" in json.loads(r.body)["message"]
    cfg = json.loads((fetch("mlp", "panel", "config")).body)
    assert cfg["configured"] is False and "$MLP_URL" in cfg["problem"]


def test_token_without_the_mlp_scope_gets_the_service_answer(fetch, panel_config, hub):
    hub.user_token("carol")
    r = hub.hub_api("POST", "/users/carol/tokens",
                    json={"note": "no mlp", "scopes": ["read:users:name!user=carol"]})
    assert r.status_code == 201, r.text
    panel_config.token = r.json()["token"]
    r = call(fetch, "GET", "jobs")
    assert r.code == 401
    assert json.loads(r.body)["error"] == "unauthorized"


def test_the_handlers_need_the_server_login(fetch, panel_config):
    r = fetch("mlp", "panel", "api", "jobs", headers={"Authorization": ""}, raise_error=False)
    assert r.code == 403
    r = fetch("mlp", "panel", "config", headers={"Authorization": ""}, raise_error=False)
    assert r.code == 403

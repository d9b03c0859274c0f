"""The `mlp` command line against the real service."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mlptest import Api, Hub

pytestmark = pytest.mark.integration
COMMANDS = ["up", "submit", "jobs", "show", "logs", "cancel", "login"]


def mlp(*args: str, env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlp", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def env(hub: Hub, alice: Api, tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(MLP_URL=f"{hub.url}/services/mlp/", JUPYTERHUB_API_TOKEN=hub.tokens["alice"],
             MLP_CLIENT_CONFIG=str(tmp_path / "client.json"))
    return e


def test_help_everywhere():
    r = mlp("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)
    for command in COMMANDS:
        r = mlp(command, "--help")
        assert r.returncode == 0, (command, r.stderr)
        assert "usage: mlp " + command in r.stdout
    r = mlp("serve", "--help")
    assert r.returncode == 0 and "MLPService" in r.stdout


def test_submit_follow_show_logs_jobs(env, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: cli-job\nsource:\n  inline: |\n    print('hello from the cli')\n"
                    "tasks:\n  worker:\n    count: 2\n    memory: 512Mi\n")
    r = mlp("submit", str(spec), "--follow", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("submitted job ")
    job_id = r.stdout.split()[2]
    assert "[worker:0] hello from the cli" in r.stdout
    assert "[worker:1] hello from the cli" in r.stdout
    assert f"job {job_id}: Succeeded" in r.stderr
    r = mlp("show", job_id, env=env)
    assert r.returncode == 0 and f"job {job_id} cli-job [Succeeded]" in r.stdout
    assert "Queued -> Starting" in r.stdout
    r = mlp("logs", job_id, "--task", "worker:1", env=env)
    assert r.stdout.strip() == "hello from the cli"
    r = mlp("jobs", env=env)
    assert r.returncode == 0 and "cli-job" in r.stdout


def test_cancel(env, alice: Api):
    job = alice.submit({"name": "to-cancel", "source": {"inline": "import time; time.sleep(300)"}})
    r = mlp("cancel", str(job["id"]), env=env)
    assert r.returncode == 0 and "Cancelled: cancelled by alice" in r.stdout


def test_errors_are_clear(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    r = mlp("submit", str(bad), env=env)
    assert r.returncode == 2 and "is not valid YAML" in r.stderr
    r = mlp("submit", str(tmp_path / "missing.yaml"), env=env)
    assert r.returncode == 2 and "cannot read" in r.stderr
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("name: x\nsource: {inline: 'print(1)'}\ntasks: {worker: {count: 0}}\n")
    r = mlp("submit", str(invalid), env=env)
    assert r.returncode == 1 and "tasks.worker.count: must be at least 1" in r.stderr
    r = mlp("show", "424242", env=env)
    assert r.returncode == 1 and "job 424242 does not exist (HTTP 404)" in r.stderr
    r = mlp("jobs", env={**env, "JUPYTERHUB_API_TOKEN": "wrong"})
    assert r.returncode == 1 and "missing or invalid token" in r.stderr
    r = mlp("jobs", env={**env, "MLP_URL": "http://127.0.0.1:9/services/mlp/"})
    assert r.returncode == 1 and "cannot reach the mlp service" in r.stderr
    no_creds = {k: v for k, v in env.items() if k not in ("MLP_URL", "JUPYTERHUB_API_TOKEN")}
    r = mlp("jobs", env=no_creds)
    assert r.returncode == 1 and "no mlp service URL" in r.stderr


def test_login_stores_a_private_token(env, hub: Hub, tmp_path):
    r = mlp("login", "--url", env["MLP_URL"], "--token", env["JUPYTERHUB_API_TOKEN"], env=env)
    assert r.returncode == 0, r.stderr
    stored = Path(env["MLP_CLIENT_CONFIG"])
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    bare = {k: v for k, v in env.items() if k not in ("MLP_URL", "JUPYTERHUB_API_TOKEN")}
    r = mlp("jobs", env=bare)
    assert r.returncode == 0 and "NAME" in r.stdout
    r = mlp("login", "--url", env["MLP_URL"], "--token", "wrong", env={**env, "MLP_CLIENT_CONFIG":
                                                                         str(tmp_path / "x.json")})
    assert r.returncode == 1 and not (tmp_path / "x.json").exists()


def test_service_cookie_secret_survives_a_restart(tmp_path):
    """Users stay logged in to the service across restarts: the secret is kept, 0600."""
    from mlp.app import MLPService

    first = MLPService(data_dir=str(tmp_path))
    secret = first.load_cookie_secret()
    path = tmp_path / "mlp_cookie_secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert MLPService(data_dir=str(tmp_path)).load_cookie_secret() == secret
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        MLPService(data_dir=str(tmp_path)).load_cookie_secret()

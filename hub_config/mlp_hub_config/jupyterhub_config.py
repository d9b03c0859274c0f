"""JupyterHub configuration of the embedded default (one machine, `mlp up`).

Read by JupyterHub (`jupyterhub -f`) and by the mlp service (`mlp serve --config`), so one file
configures the whole platform: `c.JupyterHub.*`, `c.LocalMLPSpawner.*`, `c.MLPService.*`,
`c.LocalProcessBackend.*`. Environment variables (all optional):

  MLP_DATA_DIR         state folder (hub database, secrets, per-user folders, job database)
  MLP_IP / MLP_PORT    public address of the hub (default 127.0.0.1:8000)
  MLP_HUB_PORT, MLP_PROXY_API_PORT, MLP_SERVICE_PORT
                       internal ports (defaults 8081, 8001, 10101)
  MLP_ADMIN_USERS      comma-separated admin user names (default "admin")
  MLP_CULL_TIMEOUT     seconds before an idle notebook server is stopped (default: a week)
"""

import json
import os
import secrets
import sys
from pathlib import Path

c = get_config()  # type: ignore[name-defined]  # noqa: F821

data_dir = Path(os.environ.get("MLP_DATA_DIR") or Path.cwd() / "data").resolve()
ip = os.environ.get("MLP_IP", "127.0.0.1")
port = int(os.environ.get("MLP_PORT", "8000"))
hub_port = int(os.environ.get("MLP_HUB_PORT", "8081"))
proxy_api_port = int(os.environ.get("MLP_PROXY_API_PORT", "8001"))
service_port = int(os.environ.get("MLP_SERVICE_PORT", "10101"))
admin_users = {
    u.strip() for u in os.environ.get("MLP_ADMIN_USERS", "admin").split(",") if u.strip()
}
cull_timeout = int(os.environ.get("MLP_CULL_TIMEOUT", str(7 * 24 * 3600)))
in_service = "JUPYTERHUB_SERVICE_NAME" in os.environ


def load_or_create_secrets(path: Path) -> dict:
    """Passwords generated at first start, kept mode 0600 beside the hub's database."""
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {
        "user_password": secrets.token_urlsafe(12),
        "admin_password": secrets.token_urlsafe(32),  # the authenticator wants >= 32 chars
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f)
    return values


# ---------------------------------------------------------------- hub, proxy, database
data_dir.mkdir(parents=True, exist_ok=True)
c.JupyterHub.bind_url = f"http://{ip}:{port}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")

# ---------------------------------------------------------------- authentication
if not in_service:
    creds = load_or_create_secrets(data_dir / "secrets.json")
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = creds["user_password"]
    c.SharedPasswordAuthenticator.admin_password = creds["admin_password"]
    c.Authenticator.admin_users = admin_users
    # Anyone who knows the shared password may log in under a name of their choice.
    c.Authenticator.allow_all = True
    print(
        f"\nmlp: log in at http://{ip}:{port}/ with any user name and the password\n"
        f"       {creds['user_password']}\n"
        f"     admins ({', '.join(sorted(admin_users))}) use the admin password\n"
        f"       {creds['admin_password']}\n"
        f"     (both kept in {data_dir / 'secrets.json'}, mode 0600)\n",
        flush=True,
    )

# ---------------------------------------------------------------- notebook servers
c.JupyterHub.spawner_class = "mlp_spawner.local.LocalMLPSpawner"
c.LocalMLPSpawner.data_dir = str(data_dir)
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Spawner.environment = {"MLP_URL": f"http://127.0.0.1:{service_port}/services/mlp/"}
# The server's own token may call the mlp service (the notebook magics use it); an admin's
# server also carries the admin scope (only scopes the user holds are granted).
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=mlp",
    "custom:mlp:admin",
]

# ---------------------------------------------------------------- roles and services
c.JupyterHub.custom_scopes = {
    "custom:mlp:admin": {
        "description": "Administer the mlp platform: see and cancel every user's jobs.",
    },
}
mlp_env = {k: v for k, v in os.environ.items() if k.startswith("MLP_")}
mlp_env["MLP_DATA_DIR"] = str(data_dir)
c.JupyterHub.services = [
    {
        "name": "mlp",
        "url": f"http://127.0.0.1:{service_port}",
        "command": [sys.executable, "-m", "mlp", "serve", "--config", str(Path(__file__))],
        "environment": mlp_env,
        "oauth_no_confirm": True,
        "display": True,
    },
    {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={cull_timeout}"],
    },
]
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", "access:services!service=mlp"]},
    {
        "name": "mlp-admin",
        "description": "mlp platform administrators",
        "scopes": ["custom:mlp:admin", "access:services!service=mlp"],
        "users": sorted(admin_users),
    },
    # Exactly what jupyterhub-idle-culler needs (its README): find idle servers, stop them.
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    },
    {
        "name": "mlp-service",
        "scopes": ["list:users", "read:users:name", "read:users:groups", "read:groups"],
        "services": ["mlp"],
    },
]

# ---------------------------------------------------------------- the mlp service
c.MLPService.data_dir = str(data_dir)
# Small defaults so a parameter-server job (chief + 2 ps + 1 worker) fits a 2-core laptop.
c.MLPService.default_task_cpu = "0.5"
c.MLPService.default_task_memory = "1Gi"
# Quotas (see docs/scheduling.md): both pools are this machine unless set here, e.g.
# c.QuotaConfig.groups = {"ads": {"cohort": "ml", "limits": {"default": {"cpu": 8}}}}

"""JupyterHub configuration of the embedded default (one machine, `mlp up`).

Read by JupyterHub (`jupyterhub -f`) and by the mlp service (`mlp serve --config`), so one file
configures the whole platform: `c.JupyterHub.*`, `c.LocalMLPSpawner.*`, `c.MLPService.*`,
`c.LocalProcessBackend.*`. Environment variables (all optional):

  MLP_DATA_DIR         state folder (hub database, secrets, per-user folders, job database)
  MLP_IP / MLP_PORT    public address of the hub (default 127.0.0.1:8000)
  MLP_HUB_PORT, MLP_PROXY_API_PORT, MLP_SERVICE_PORT, MLP_MODELS_PORT
                       internal ports (defaults 8081, 8001, 10101, 10102)
  MLP_ADMIN_USERS      comma-separated admin user names (default "admin")
  MLP_CULL_TIMEOUT     seconds before an idle notebook server is stopped (default: a week)
  MLP_AUTH             "native" (default: per-user passwords, jupyterhub-nativeauthenticator)
                       or "shared" (explicit opt-in: one shared password for every user)
  MLP_OPEN_SIGNUP      "1": new sign-ups may log in at once (default: an admin authorizes them)

Started as root, the platform runs in multi-user mode: one system account per hub user
(c.MLPIsolation.account_prefix, default "mlp-"), each notebook server and job task in its own
cgroup. Started as another user, it runs in personal mode (see docs/multiuser.md).
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
models_port = int(os.environ.get("MLP_MODELS_PORT", "10102"))
admin_users = {
    u.strip() for u in os.environ.get("MLP_ADMIN_USERS", "admin").split(",") if u.strip()
}
cull_timeout = int(os.environ.get("MLP_CULL_TIMEOUT", str(7 * 24 * 3600)))
in_service = "JUPYTERHUB_SERVICE_NAME" in os.environ


auth_mode = os.environ.get("MLP_AUTH", "native")
multi_user = os.geteuid() == 0


def load_or_create_secrets(path: Path) -> tuple[dict, bool]:
    """Secrets generated at first start, kept mode 0600 beside the hub's database; the second
    value says whether they were just created (then, and only then, they are printed)."""
    if path.exists():
        values = json.loads(path.read_text())
        created = False
    else:
        values = {}
        created = True
    wanted = {
        "admin_password": lambda: secrets.token_urlsafe(32),  # shared-password wants >= 32
        "user_password": lambda: secrets.token_urlsafe(12),
        "spawner_token": lambda: secrets.token_hex(32),
    }
    missing = {k: make() for k, make in wanted.items() if k not in values}
    if missing:
        values.update(missing)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return values, created


# ---------------------------------------------------------------- hub, proxy, database
# Everything the hub, the proxy and the mlp service write (databases, cookie secret, pid files,
# logs) is private to them; the data directory itself is 0711 in multi-user mode (accounts pass
# through it to their homes), 0700 in personal mode.
os.umask(0o077)
data_dir.mkdir(parents=True, exist_ok=True)
os.chmod(data_dir, 0o711 if multi_user else 0o700)
c.JupyterHub.bind_url = f"http://{ip}:{port}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")

# ---------------------------------------------------------------- authentication
c.Authenticator.admin_users = admin_users
creds, first_start = load_or_create_secrets(data_dir / "secrets.json")
if not in_service:
    if auth_mode == "shared":
        # Explicit opt-in: anyone who knows the shared password may log in under any name.
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = creds["user_password"]
        c.SharedPasswordAuthenticator.admin_password = creds["admin_password"]
        c.Authenticator.allow_all = True
        print(
            f"\nmlp: SHARED-PASSWORD mode (MLP_AUTH=shared): log in at http://{ip}:{port}/ "
            f"with any user name and the password\n       {creds['user_password']}\n"
            f"     admins ({', '.join(sorted(admin_users))}) use the admin password kept in "
            f"{data_dir / 'secrets.json'} (mode 0600)\n",
            flush=True,
        )
    elif auth_mode == "native":
        # Per-user passwords (jupyterhub-nativeauthenticator): users sign up at /hub/signup,
        # an admin authorizes them at /hub/authorize unless MLP_OPEN_SIGNUP=1. The admin
        # accounts are created at first start with the generated admin password.
        c.JupyterHub.authenticator_class = "mlp_spawner.auth.MLPNativeAuthenticator"
        c.MLPNativeAuthenticator.initial_admin_password = creds["admin_password"]
        c.NativeAuthenticator.open_signup = os.environ.get("MLP_OPEN_SIGNUP") == "1"
        c.NativeAuthenticator.minimum_password_length = 10
        c.NativeAuthenticator.check_common_password = True
        c.NativeAuthenticator.allowed_failed_logins = 5
        c.NativeAuthenticator.seconds_before_next_try = 60
        c.Authenticator.allow_all = True  # signed-up users; authorization is the gate
        admins = ", ".join(sorted(admin_users))
        if first_start:
            print(
                f"\nmlp: log in at http://{ip}:{port}/ as {admins} with the password\n"
                f"       {creds['admin_password']}\n"
                f"     (shown once; kept in {data_dir / 'secrets.json'}, mode 0600). Users sign "
                f"up at http://{ip}:{port}/hub/signup"
                + ("" if c.NativeAuthenticator.open_signup else " and wait for an admin to "
                   f"authorize them at http://{ip}:{port}/hub/authorize")
                + "\n",
                flush=True,
            )
        else:
            print(
                f"\nmlp: log in at http://{ip}:{port}/ (admins: {admins}; the first admin "
                f"password is in {data_dir / 'secrets.json'})\n",
                flush=True,
            )
    else:
        raise ValueError(f"MLP_AUTH={auth_mode!r}: expected 'native' or 'shared'")
    if not multi_user:
        print(
            f"mlp: PERSONAL MODE: started as {os.environ.get('USER', 'this user')} (not root): "
            "every notebook and job runs as this OS user, without isolation between hub "
            "users. Start as root for one system account per user.\n",
            flush=True,
        )

# ---------------------------------------------------------------- notebook servers
c.JupyterHub.spawner_class = "mlp_spawner.local.LocalMLPSpawner"
c.LocalMLPSpawner.data_dir = str(data_dir)
c.LocalMLPSpawner.mlp_api_url = f"http://127.0.0.1:{service_port}/services/mlp/api/v1"
c.LocalMLPSpawner.mlp_api_token = creds["spawner_token"]
c.MLPIsolation.data_dir = str(data_dir)
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.Spawner.environment = {
    "MLP_URL": f"http://127.0.0.1:{service_port}/services/mlp/",
    # The models router (%mlp_deploy's "try it" box), with the same token auth as the proxy's.
    "MLP_MODELS_URL": f"http://127.0.0.1:{models_port}/services/models/",
}
# The server's own token may call the mlp service (the notebook magics use it); an admin's
# server also carries the admin scope (only scopes the user holds are granted).
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=mlp",
    "access:services!service=models",
    "custom:mlp:admin",
]

# ---------------------------------------------------------------- roles and services
c.JupyterHub.custom_scopes = {
    "custom:mlp:admin": {
        "description": "Administer the mlp platform: see and cancel every user's jobs.",
    },
    "custom:mlp-models:query": {
        "description": "Query every model deployed on the platform through /services/models/ "
        "(without it: the models you own or that are shared with your groups).",
    },
}
mlp_env = {k: v for k, v in os.environ.items() if k.startswith("MLP_")}
mlp_env["MLP_DATA_DIR"] = str(data_dir)
mlp_env["MLP_MODELS_PORT"] = str(models_port)
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
    # Online prediction: /services/models/<name>/ is routed to the mlp service's models router
    # (mlp/serving/router.py), which authorizes per model and forwards to the model servers.
    {"name": "models", "url": f"http://127.0.0.1:{models_port}", "display": False},
    # The hub's own client of the mlp service: the spawner reserves notebook servers with it.
    {"name": "mlp-spawner", "api_token": creds["spawner_token"]},
]
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", "access:services!service=mlp",
                                "access:services!service=models"]},
    {
        "name": "mlp-admin",
        "description": "mlp platform administrators",
        "scopes": ["custom:mlp:admin", "access:services!service=mlp",
                   "access:services!service=models", "custom:mlp-models:query"],
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
        # read:servers + users:activity: reclaim reservations of servers that are gone, keep
        # the owners of running jobs active (c.MLPService.keep_servers_of_running_jobs).
        "scopes": ["list:users", "read:users:name", "read:users:groups", "read:groups",
                   "read:servers", "users:activity"],
        "services": ["mlp"],
    },
    {
        "name": "mlp-spawner",
        "scopes": ["custom:mlp:admin", "access:services!service=mlp"],
        "services": ["mlp-spawner"],
    },
]

# ---------------------------------------------------------------- the mlp service
c.MLPService.data_dir = str(data_dir)
# Small defaults so a parameter-server job (chief + 2 ps + 1 worker) fits a 2-core laptop.
c.MLPService.default_task_cpu = "0.5"
c.MLPService.default_task_memory = "1Gi"
# Quotas (see docs/scheduling.md): both pools are this machine unless set here, e.g.
# c.QuotaConfig.groups = {"ads": {"cohort": "ml", "limits": {"default": {"cpu": 8}}}}

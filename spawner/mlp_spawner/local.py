"""The embedded default's spawner: a notebook server per user as a local process, in the user's
own folder under the platform's data directory.

All servers run as the OS user that runs the hub. That is convenient on a laptop and gives no
isolation between users (see docs/architecture.md, "Running as one OS user").
"""

from __future__ import annotations

import os
import sys
from typing import Any

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Unicode, default

from mlp.core.paths import user_home


class LocalMLPSpawner(SimpleLocalProcessSpawner):
    data_dir = Unicode(
        config=True,
        help="""The platform's data directory; each user's server starts in
        <data_dir>/users/<escaped name>, the same folder their jobs run in, so files survive
        culling and come back with the next server. Default: $MLP_DATA_DIR.""",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("MLP_DATA_DIR", os.path.expanduser("~/.local/share/mlp"))

    @default("home_dir")
    def _default_home_dir(self) -> str:
        return str(user_home(self.data_dir, self.user.name))

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        # The hub's own interpreter: its environment has JupyterLab, ipywidgets and mlp_magics.
        return [sys.executable, "-m", "jupyterhub.singleuser"]

    @default("notebook_dir")
    def _default_notebook_dir(self) -> str:
        return self.home_dir

    def get_args(self) -> list[str]:
        args: list[str] = super().get_args()
        # Jupyter refuses to start as root without this flag; the hub would then report an
        # opaque 500. Running as root is what a one-machine install in a container does.
        if os.geteuid() == 0 and "--allow-root" not in args:
            args.append("--allow-root")
        return args

    def user_env(self, env: dict[str, Any]) -> dict[str, Any]:
        env = super().user_env(env)
        env["MLP_DATA_DIR"] = self.data_dir
        return env

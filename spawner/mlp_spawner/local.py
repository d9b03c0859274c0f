"""The embedded default's spawner: a notebook server per user as a local process, inside the
quota ledger, in its own cgroup, as the user's own system account.

Started as root (multi-user mode), each hub user gets a system account (`mlp.isolation`), and
the server runs as that account in the user's folder under the platform's data directory,
which is also where their jobs run, so files and the JupyterLab workspace survive culling.
Started as an ordinary user (personal mode), the server runs as that user.

Before a server starts, its size (a profile of `profile_list`) is reserved through the mlp
service (`POST /reservations`, `mlp_spawner.reservations`, shared with the Kubernetes spawner),
in the same ledger as jobs; the reservation is given back when the server stops or is culled,
and the service reclaims reservations of servers that no longer exist. The cgroup's memory limit
and CPU quota are the reservation; when the ledger allocates GPU devices to it, the server sees
those alone (`CUDA_VISIBLE_DEVICES`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from traitlets import Dict, Float, Instance, Integer, List, Unicode, default

from mlp.core.paths import user_home
from mlp.isolation import MLPIsolation
from mlp.isolation.accounts import Account, AccountError
from mlp.isolation.cgroups import Cgroup, CgroupError, Limits
from mlp.isolation.names import server_cgroup_name
from mlp.isolation.process import make_preexec
from mlp.scheduling.resources import parse_cpu, parse_memory
from mlp_spawner.profiles import check_profiles, headroom_note, render_form
from mlp_spawner.reservations import MLPUnavailable, ReservationMixin, ReservationRefused


class LocalMLPSpawner(ReservationMixin, LocalProcessSpawner):
    data_dir = Unicode(
        config=True,
        help="""The platform's data directory; each user's server starts in
        <data_dir>/users/<escaped name>, the same folder their jobs run in, so files survive
        culling and come back with the next server. Default: $MLP_DATA_DIR.""",
    )

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.environ.get("MLP_DATA_DIR", os.path.expanduser("~/.local/share/mlp"))

    profile_list = List(
        Dict(),
        config=True,
        help="""Server sizes offered on the spawn page, each reserved in the quota ledger:
        [{"slug": "small", "display_name": "Small: 1 CPU, 2 GiB", "default": True,
          "resources": {"cpu": "1", "memory": "2Gi"}}, ...].
        Sizes larger than what the user may still reserve are shown disabled with the
        numbers. A request naming another slug, or asking for anything else, is refused.""",
    )

    @default("profile_list")
    def _default_profiles(self) -> list[dict[str, Any]]:
        return [
            {
                "slug": "small",
                "display_name": "Small: 0.5 CPU, 1 GiB",
                "default": True,
                "resources": {"cpu": "0.5", "memory": "1Gi"},
            },
            {
                "slug": "medium",
                "display_name": "Medium: 1 CPU, 4 GiB",
                "resources": {"cpu": "1", "memory": "4Gi"},
            },
        ]

    kernel_cull_idle_timeout = Integer(
        24 * 3600,
        config=True,
        help="""Seconds after which an idle kernel is shut down inside a running server
        (jupyter_server's MappingKernelManager.cull_idle_timeout); 0 keeps kernels.""",
    )
    answer_wait = Float(
        10.0,
        config=True,
        help="""Seconds `start()` keeps asking the new server (every 50 ms) whether it answers
        before handing it to the hub, which then waits up to `http_timeout` for it with its
        own backoff (up to 5 s between tries). The hub records the server (pid, reservation,
        cgroup) only once `start()` returns: a longer wait hands a slow server over sooner
        but leaves it unrecorded longer if the hub dies meanwhile. 0: return at once.""",
    )

    @default("mlp_api_retries")
    def _default_retries(self) -> int:
        return 2  # the hub-managed service is local: fail the spawn page fast when it is down

    isolation = Instance(MLPIsolation)

    @default("isolation")
    def _default_isolation(self) -> MLPIsolation:
        iso = MLPIsolation(parent=self, log=self.log)
        if not iso.data_dir:
            iso.data_dir = self.data_dir
        return iso

    cgroup_name = Unicode("", help="The cgroup this server runs in.")

    _account: Account | None = None
    _cgroup: Cgroup | None = None
    _devices: list[str] | None = None

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._events: list[dict[str, Any]] = []
        self._event_added = asyncio.Event()

    # ------------------------------------------------------------------ where and who
    @default("cmd")
    def _default_cmd(self) -> list[str]:
        # The hub's own interpreter: its environment has JupyterLab, ipywidgets and mlp_magics.
        return [sys.executable, "-m", "jupyterhub.singleuser"]

    @property
    def home_dir(self) -> str:
        return str(user_home(self.data_dir, self.user.name))

    @default("notebook_dir")
    def _default_notebook_dir(self) -> str:
        return self.home_dir

    def get_args(self) -> list[str]:
        args: list[str] = super().get_args()
        if os.geteuid() == 0 and not self.isolation.multi_user and "--allow-root" not in args:
            # Personal mode forced on as root: everything runs as root, as configured.
            args.append("--allow-root")
        if self.kernel_cull_idle_timeout > 0:
            args += [
                f"--MappingKernelManager.cull_idle_timeout={self.kernel_cull_idle_timeout}",
                f"--MappingKernelManager.cull_interval={min(300, self.kernel_cull_idle_timeout)}",
            ]
        return args

    def make_preexec_fn(self, name: str) -> Any:
        return make_preexec(self._account, self._cgroup, self.home_dir, make_cwd=False)

    def user_env(self, env: dict[str, Any]) -> dict[str, Any]:
        env["HOME"] = self.home_dir
        env["SHELL"] = "/bin/bash"
        env["USER"] = self._account.name if self._account else env.get("USER", self.user.name)
        env["MLP_DATA_DIR"] = self.data_dir
        if self._devices is not None:
            # The GPUs the ledger allocated to this server, and only those ("" for none).
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self._devices)
        return env

    async def move_certs(self, paths: dict[str, str]) -> dict[str, str]:
        return paths  # internal TLS is not used by the embedded default

    # ------------------------------------------------------------------ options form
    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        unknown = set(formdata) - {"profile", "_xsrf"}
        if unknown:
            raise ValueError(
                f"the spawn form has unexpected fields {sorted(unknown)}; choose a size from "
                "the list"
            )
        return {"profile": (formdata.get("profile") or [""])[0]}

    async def _options_form(self) -> str:
        headroom = await self._headroom()
        return render_form(check_profiles(self.profile_list), headroom)

    @default("options_form")
    def _default_options_form(self) -> Any:
        async def form(spawner: LocalMLPSpawner) -> str:
            return await spawner._options_form()

        return form

    def _chosen_profile(self) -> dict[str, Any]:
        profiles = check_profiles(self.profile_list)
        slug = self.check_options(dict(self.user_options or {}), [p["slug"] for p in profiles])
        if slug is None:
            slug = next((p["slug"] for p in profiles if p.get("default")), profiles[0]["slug"])
        return next(p for p in profiles if p["slug"] == slug)

    # ------------------------------------------------------------------ the mlp service
    async def _headroom(self) -> dict[str, float] | None:
        try:
            q = await self.quota_of(self.user.name)
        except (MLPUnavailable, ReservationRefused) as e:
            self.log.warning("quota of %s unavailable for the spawn form: %s", self.user.name, e)
            return None
        return headroom_note(q, self.quota_pool)

    # ------------------------------------------------------------------ lifecycle
    def _event(self, progress: int, message: str) -> None:
        self._events.append({"progress": progress, "message": message})
        self._event_added.set()

    async def progress(self) -> Any:
        sent = 0
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._events and self._events[-1]["progress"] >= 100:
                return
            self._event_added.clear()
            await self._event_added.wait()

    async def start(self) -> Any:
        self._events.clear()
        profile = self._chosen_profile()
        resources = dict(profile["resources"])
        self._event(10, f"Reserving {profile['display_name']} in your quota")
        await self.reserve_server(resources)
        self._event(20, self.reserved_message(resources))
        try:
            self._devices = self.reserved_devices()
            if self.isolation.multi_user:
                self._event(30, "Preparing your account and home folder")
                try:
                    self._account = self.isolation.account(self.user.name)
                except AccountError as e:
                    raise web.HTTPError(500, str(e)) from None
            else:
                os.makedirs(self.home_dir, mode=0o700, exist_ok=True)
            self._cgroup = self._make_cgroup(resources)
            self._event(50, "Starting your notebook server")
            result = await super().start()
        except BaseException:
            await self._cleanup()
            raise
        await self._until_answering(*result)
        return result

    async def _until_answering(self, ip: str, port: int) -> None:
        """Return once the new server answers HTTP (or its process ended, or `answer_wait`
        passed: the hub then waits for it as it always does). The hub's own check backs off
        up to 5 s between tries, so a server that answers after 3 s is typically seen ready
        seconds later; asking every 50 ms here hands it over as soon as it answers."""
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        base = self.server.base_url if self.server is not None else "/"
        url = f"http://{ip or '127.0.0.1'}:{port}{base.rstrip('/')}/api"
        client = AsyncHTTPClient()
        loop = asyncio.get_running_loop()
        started = loop.time()
        told = 0
        self._event(60, "Server process started; waiting for it to answer")
        while loop.time() - started < min(self.answer_wait, self.http_timeout):
            if self.proc is None or self.proc.poll() is not None:
                return
            try:
                await client.fetch(url, request_timeout=2, follow_redirects=False)
            except HTTPClientError as e:
                if e.code < 500 and e.code != 599:  # any non-5xx answer: it is up
                    break
            except OSError:
                pass  # not listening yet
            else:
                break
            waited = int(loop.time() - started)
            if waited >= told + 2:
                told = waited
                self._event(60 + min(35, waited), f"Waiting for your server to answer ({waited} s)")
            await asyncio.sleep(0.05)
        self._event(100, f"Server answering after {loop.time() - started:.1f} s")

    def _make_cgroup(self, resources: dict[str, Any]) -> Cgroup | None:
        driver = self.isolation.cgroups
        if not driver.available:
            self._event(40, f"Resource limits are {driver.describe()}")
            return None
        limits = Limits(
            cpu=parse_cpu(resources["cpu"]) if "cpu" in resources else None,
            memory=parse_memory(resources["memory"]) if "memory" in resources else None,
        )
        self.cgroup_name = server_cgroup_name(self.user.name, self.name)
        try:
            return driver.create(self.cgroup_name, limits)
        except CgroupError as e:
            raise web.HTTPError(500, f"{e}; the server was not started") from None

    async def _cleanup(self) -> None:
        if self.cgroup_name and self.isolation.cgroups.available:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.isolation.cgroups.cgroup(self.cgroup_name).remove
                )
            except CgroupError as e:
                self.log.warning("%s", e)
        self.cgroup_name = ""
        self._cgroup = None
        self._devices = None
        if self.reservation_id:
            await self.release_server()

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        await self._cleanup()

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None and (self.reservation_id or self.cgroup_name):
            await self._cleanup()
        return status

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        state.update(self.reservation_state())
        if self.cgroup_name:
            state["cgroup"] = self.cgroup_name
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.load_reservation_state(state)
        if not self.reservation_id and state.get("reservation"):
            # written by earlier versions: "server:<user>/<server>"
            self.reservation_id = str(state["reservation"]).removeprefix("server:")
        self.cgroup_name = state.get("cgroup", "")

    def clear_state(self) -> None:
        super().clear_state()
        # reservation and cgroup are cleared by _cleanup once they are given back

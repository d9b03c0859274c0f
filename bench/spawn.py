"""Spawn latency: start request -> notebook server ready, for the platform's spawner against
JupyterHub's own LocalProcessSpawner, started the same way in the same run.

Two real hubs (hub_config/mlp_hub_config/jupyterhub_config.py on free loopback ports) run side
by side: one with the platform's LocalMLPSpawner (reservation in the ledger, account, cgroup),
one with `c.JupyterHub.spawner_class = "localprocess"` for system users created for the
benchmark. Each user's spawns rotate through three cases: the platform's medium size (a 1-CPU
cgroup), its small size (a 0.5-CPU cgroup: the server's start-up is held to half a core, as
reserved) and the baseline (no limits); each is timed from `POST /hub/api/users/<name>/server`
until the hub reports the server ready, then the server is stopped. As root both run servers as
system accounts; as another user the baseline cannot (it needs root to switch users) and the
script says so.

    .venv/bin/python bench/spawn.py [--spawns 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlp.devhub import Hub, start_hub, stop_hub

REPO = Path(__file__).resolve().parent.parent


def spawn_once(hub: Hub, user: str, options: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    r = hub.hub_api("POST", f"/users/{user}/server", json=options or {})
    if r.status_code not in (201, 202):
        raise RuntimeError(f"spawn of {user} failed: {r.status_code} {r.text}\n{hub.log_tail()}")
    while True:
        server = hub.hub_api("GET", f"/users/{user}").json()["servers"].get("")
        if server and server["ready"]:
            elapsed = time.perf_counter() - start
            break
        if server is None or time.perf_counter() - start > 180:
            raise RuntimeError(f"{user}'s server did not become ready\n{hub.log_tail()}")
        time.sleep(0.05)
    hub.hub_api("DELETE", f"/users/{user}/server")
    while hub.hub_api("GET", f"/users/{user}").json()["servers"]:
        time.sleep(0.1)
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/spawn.py: run as root (the baseline LocalProcessSpawner switches users)")
    tmp = Path(tempfile.mkdtemp(prefix="mlp-bench-"))
    users = [f"bench{i}" for i in range(args.spawns)]
    base_home = Path(tempfile.mkdtemp(prefix="mlp-bench-homes-", dir="/tmp"))
    os.chmod(base_home, 0o711)
    created: list[str] = []
    hubs: list[Hub] = []
    cases = [  # (row, hub, options): the platform's two default sizes and the baseline
        ("LocalMLPSpawner, medium (1 CPU cgroup)", "ours", {"profile": "medium"}),
        ("LocalMLPSpawner, small (0.5 CPU cgroup)", "ours", {"profile": "small"}),
        ("LocalProcessSpawner (no limits)", "vanilla", {}),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    try:
        for u in users:  # the baseline needs existing system users of the same names
            if subprocess.run(["id", u], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--create-home", "--home-dir", str(base_home / u), u],
                               check=True)
                created.append(u)
        ours = start_hub(tmp / "ours", [])
        hubs.append(ours)
        vanilla = start_hub(
            tmp / "vanilla", [],
            extra_hub_config="c.JupyterHub.spawner_class = 'localprocess'\n"
                             "c.Spawner.notebook_dir = '~'\n",
        )
        hubs.append(vanilla)
        for u in users:
            ours.user_token(u)
            vanilla.user_token(u)
        by_name = {"ours": ours, "vanilla": vanilla}
        for i, u in enumerate(users):  # rotate which goes first
            for name, which, options in cases[i % 3:] + cases[:i % 3]:
                times[name].append(spawn_once(by_name[which], u, options))
    finally:
        for hub in hubs:
            stop_hub(hub)
        for u in created:
            subprocess.run(["userdel", u], capture_output=True)
    base = statistics.median(times[cases[-1][0]])
    print(f"\nspawn -> ready over {args.spawns} spawns each, order rotated (seconds)\n")
    print(f"{'spawner':<42}{'p50':>8}{'p95':>8}{'min':>8}{'max':>8}{'p50 ratio':>11}")
    for name, vals in times.items():
        print(f"{name:<42}{statistics.median(vals):>8.2f}{pct(vals, 0.95):>8.2f}"
              f"{min(vals):>8.2f}{max(vals):>8.2f}{statistics.median(vals) / base:>11.2f}")


if __name__ == "__main__":
    main()

"""The `mlp` command line: start the platform (`up`), run the service (`serve`), and manage jobs
through the REST API (`submit`, `jobs`, `show`, `logs`, `cancel`, `login`) and models (`model
register|list|show|deploy|roll|undeploy`, see docs/serving.md)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from mlp.client import MLPClient, MLPError, save_credentials

REPO_ROOT = Path(__file__).resolve().parent.parent


def hub_config_path() -> Path:
    import mlp_hub_config

    return Path(mlp_hub_config.__file__).resolve().parent / "jupyterhub_config.py"


def find_proxy() -> str | None:
    """configurable-http-proxy from PATH or from the repo's own `npm install`."""
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    for root in (Path.cwd(), REPO_ROOT):
        candidate = root / "node_modules" / ".bin" / "configurable-http-proxy"
        if candidate.exists():
            return str(candidate)
    return None


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir or os.environ.get("MLP_DATA_DIR") or REPO_ROOT / "data")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    proxy = find_proxy()
    if proxy is None:
        print(
            "configurable-http-proxy not found: run `npm install` in the repository (the "
            "README's first command does) or put it on PATH",
            file=sys.stderr,
        )
        return 2
    env = dict(os.environ)
    env.update(MLP_DATA_DIR=str(data_dir), MLP_PORT=str(args.port), MLP_IP=args.ip)
    env["PATH"] = (
        f"{Path(proxy).parent}{os.pathsep}{Path(sys.executable).parent}"
        f"{os.pathsep}{env.get('PATH', '')}"
    )
    cmd = [sys.executable, "-m", "jupyterhub", "-f", str(hub_config_path())]
    print(
        f"mlp: starting JupyterHub on http://{args.ip}:{args.port} (data in {data_dir})", flush=True
    )
    os.chdir(data_dir)
    os.execvpe(cmd[0], cmd, env)


def cmd_serve(args: argparse.Namespace) -> int:
    from mlp.app import main as serve_main

    serve_main(args.rest)
    return 0


def _client(args: argparse.Namespace) -> MLPClient:
    return MLPClient(url=args.url, token=args.token)


def _print_job(job: dict[str, Any]) -> None:
    print(f"job {job['id']} {job['name']} [{job['state']}] {job['reason']}")
    queue = job.get("queue")
    if queue:
        if queue.get("waiting_for"):
            print(f"  waiting for job(s) {', '.join(map(str, queue['waiting_for']))} to succeed")
        else:
            print(
                f"  queued in {queue.get('group')}/{queue.get('pool')}: "
                f"{queue['position']} job(s) ahead, score {queue['score']:.2f}"
            )
            for b in queue.get("blocking", []):
                print(f"  blocked: {b['reason']}")
    held = job.get("reservation")
    if held and held.get("preemptible"):
        print("  preemptible: running on quota borrowed from its cohort")
    for t in job.get("tasks", []):
        code = "" if t["exit_code"] is None else f" exit={t['exit_code']}"
        print(f"  {t['name']:<10} {t['state']:<8} pid={t['pid']}{code} {t.get('address') or ''}")
    for e in job.get("events", []):
        print(f"  {e['at']}  {e['from'] or '-'} -> {e['to']}: {e['reason']}")


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        print(f"cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    except yaml.YAMLError as e:
        print(f"{path} is not valid YAML: {e}", file=sys.stderr)
        return 2
    job = _client(args).submit(spec)
    print(f"submitted job {job['id']} ({job['name']}): {job['state']}")
    if args.follow:
        # From the first line: the job may have started before the stream opened.
        return _follow(args, job["id"], None, 100_000)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = _client(args).jobs(user="*" if args.all else args.user, state=args.state)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    print(f"{'ID':>5}  {'NAME':<24} {'USER':<12} {'STATE':<10} REASON")
    for j in jobs:
        reason = j["reason"]
        queue = j.get("queue") or {}
        if queue.get("blocking"):
            reason = f"{reason}; waiting: {queue['blocking'][0]['reason']}"
        print(f"{j['id']:>5}  {j['name']:<24} {j['user']:<12} {j['state']:<10} {reason}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    job = _client(args).job(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        _print_job(job)
    return 0


def _follow(args: argparse.Namespace, job_id: Any, task: str | None, tail: int) -> int:
    final = "Unknown"
    for event, data in _client(args).follow(job_id, task=task, tail=tail):
        if event == "log":
            print(f"[{data['task']}] {data['line']}", flush=True)
        elif event in ("state", "end"):
            print(
                f"--- job {job_id}: {data['state']}: {data['reason']}", file=sys.stderr, flush=True
            )
            final = data["state"]
    return 0 if final == "Succeeded" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(args, args.job_id, args.task, args.tail)
    logs = _client(args).logs(args.job_id, task=args.task, tail=args.tail)
    for name, lines in logs.items():
        for line in lines:
            print(f"[{name}] {line}" if len(logs) > 1 else line)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    print(f"job {job['id']}: {job['state']}: {job['reason']}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    client = MLPClient(url=args.url, token=args.token)
    client.jobs()  # fails with a clear message when the URL or token is wrong
    path = save_credentials(args.url, args.token)
    print(f"stored the URL and token in {path} (mode 0600)")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    client = _client(args)
    action = args.action
    if action == "register":
        body: dict[str, Any] = {"path": args.path} if args.path else {}
        if args.job != "-":
            body["job_id"] = int(args.job)
        if args.group:
            body["group"] = args.group
        source = args.path or "export"
        where = f"job {args.job}'s folder" if args.job != "-" else "your home"
        print(f"registering {source} (in {where}) as a new version of {args.name}: the service "
              "copies it and loads it to read its signature (seconds; longer on a cold disk)",
              file=sys.stderr, flush=True)
        out = client.register_version(args.name, body)
        print(f"model {out['model']} version {out['version']} (job {out['job_id']}): inputs "
              + ", ".join(f"{k} {v['dtype']}{v['shape']}"
                          for k, v in sorted(out["signature"]["inputs"].items())))
    elif action == "list":
        for m in client._request("GET", "/models").json()["models"]:
            print(f"{m['name']:<24} owner {m['owner']:<12} versions {m['versions']:<3} "
                  f"production {m['production_version']} live {m['live_deployments']}")
    elif action == "show":
        model = client._request("GET", f"/models/{args.name}").json()
        model["versions"] = client._request(
            "GET", f"/models/{args.name}/versions").json()["versions"]
        model["deployments"] = client._request(
            "GET", f"/models/{args.name}/deployments").json()["deployments"]
        print(json.dumps(model, indent=1))
    elif action == "deploy":
        name, _, version = args.name.partition(":")
        body = {k: v for k, v in (("cpu", args.cpu), ("memory", args.memory),
                                  ("replicas", args.replicas)) if v is not None}
        if version:
            body["version"] = int(version)
        d = client._request("POST", f"/models/{name}/deployments", json=body).json()
        print(f"deployment {d['id']} of {name}:{d['version']}: {d['state']}; endpoint "
              f"{d['endpoint']}v1/models/{name}:predict")
    elif action == "roll":
        d = client._request("PATCH", f"/models/{args.name}/deployments/{args.deployment}",
                            json={"version": args.version}).json()
        print(f"deployment {d['id']}: {d['state']}: {d['reason']}")
    elif action == "undeploy":
        d = client._request("DELETE", f"/models/{args.name}/deployments/{args.deployment}")
        print(f"deployment {args.deployment}: {d.json()['state']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlp",
        description="jupyterhub-mlp: start the platform and manage training jobs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="mlp service URL (default: $MLP_URL or `mlp login`)")
        p.add_argument(
            "--token", help="hub API token (default: $JUPYTERHUB_API_TOKEN or `mlp login`)"
        )

    p = sub.add_parser("up", help="start JupyterHub with the embedded default platform")
    p.add_argument("--data-dir", help="state folder (default: $MLP_DATA_DIR or ./data)")
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MLP_PORT", 8000)),
        help="public port of the hub (default 8000)",
    )
    p.add_argument(
        "--ip",
        default=os.environ.get("MLP_IP", "127.0.0.1"),
        help="address to listen on (default 127.0.0.1)",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "serve", help="run the mlp service (JupyterHub starts it for you)", add_help=False
    )
    p.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="options of the service, e.g. --config FILE --help-all",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("submit", help="submit a job described in a YAML file")
    p.add_argument("file", help="job spec (YAML or JSON): name, source, tasks, ...")
    p.add_argument("--follow", "-f", action="store_true", help="stream logs until it ends")
    client_opts(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list your jobs")
    p.add_argument("--all", action="store_true", help="everyone's jobs (admins)")
    p.add_argument("--user", help="another user's jobs (admins)")
    p.add_argument("--state", help="comma-separated states, e.g. Running,Queued")
    p.add_argument("--json", action="store_true", help="print JSON")
    client_opts(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("show", help="a job's state, tasks and history")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    client_opts(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("logs", help="a job's task logs")
    p.add_argument("job_id")
    p.add_argument("--task", help="one task, e.g. worker:0 (default: all)")
    p.add_argument("--tail", type=int, default=200, help="lines per task (default 200)")
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    client_opts(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a job (stops all its processes)")
    p.add_argument("job_id")
    client_opts(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("model", help="the model registry and deployments (online prediction)")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = msub.add_parser("register", help="register a job's SavedModel export as a new version")
    m.add_argument("job", help="the job id ('-': a folder in your home, given as PATH)")
    m.add_argument("path", nargs="?", help="export folder (in the job folder; default export)")
    m.add_argument("--name", required=True, help="the model's name")
    m.add_argument("--group", help="share the model with this hub group")
    client_opts(m)
    m = msub.add_parser("list", help="the models you may see")
    client_opts(m)
    m = msub.add_parser("show", help="a model with its versions and deployments")
    m.add_argument("name")
    client_opts(m)
    m = msub.add_parser("deploy", help="serve MODEL[:VERSION] (KServe model server)")
    m.add_argument("name", help="MODEL or MODEL:VERSION")
    m.add_argument("--cpu")
    m.add_argument("--memory")
    m.add_argument("--replicas", type=int)
    client_opts(m)
    m = msub.add_parser("roll", help="roll a deployment to another version")
    m.add_argument("name")
    m.add_argument("deployment", type=int)
    m.add_argument("version", type=int)
    client_opts(m)
    m = msub.add_parser("undeploy", help="stop a deployment")
    m.add_argument("name")
    m.add_argument("deployment", type=int)
    client_opts(m)
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("login", help="store the service URL and a hub API token")
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/services/mlp/")
    p.add_argument("--token", required=True, help="a token from the hub's Token page")
    p.set_defaults(func=cmd_login)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        # Everything after `serve` belongs to the service's traitlets options.
        cmd_serve(argparse.Namespace(rest=argv[1:]))
        return
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except MLPError as e:
        print(f"mlp: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

"""A real Kubernetes control plane on loopback for the tests and the benchmarks
(bench/kueue_compare.py): etcd, kube-apiserver
(RBAC on, service-account keys, an admin client certificate), kube-controller-manager,
kube-scheduler and kwok (simulated nodes of a chosen shape; their pods run nothing).

The binaries come from scripts/k8s-build.sh (built once into a cache outside the checkout).
Every process runs in its own process group and is killed with it at `stop()`; readiness is
each component's health endpoint (or, for kwok, its nodes turning Ready), never a fixed sleep.

Longer than 500 lines because it is one launcher: the PKI, the kubeconfigs and the five
components' command lines belong together, and splitting them would scatter one start order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlp.core.ports import free_port

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "k8s-build.sh"

# Test pods say how kwok should end them, per task type: with SIM_<TYPE>_EXIT (an exit code)
# after SIM_<TYPE>_RUN (a Go duration, e.g. 300ms) for pods labelled with that task type,
# as a real task running tests/k8s/simtask.py with the same environment would. Pods without
# them run until deleted.
SIM_STAGE = """
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: mlp-sim-exit-{role}
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.labels["mlp.jupyter.org/task-type"]'
      operator: 'In'
      values: ['{role}']
    - key: '.spec.containers.[0].env.[] | select( .name == "SIM_{ROLE}_EXIT" ) | .name'
      operator: 'In'
      values: ['SIM_{ROLE}_EXIT']
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.spec.containers.[0].env.[] | select( .name == "SIM_{ROLE}_RUN" ) | .value'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $code := "0" }}}}
      {{{{ range (index .spec.containers 0).env }}}}{{{{ if eq .name "SIM_{ROLE}_EXIT" }}}}{{{{ $code = .value }}}}{{{{ end }}}}{{{{ end }}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: {{{{ $code }}}}
            finishedAt: {{{{ $now | Quote }}}}
            reason: {{{{ if eq $code "0" }}}}Completed{{{{ else }}}}Error{{{{ end }}}}
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: {{{{ if eq $code "0" }}}}Succeeded{{{{ else }}}}Failed{{{{ end }}}}
"""
SIM_ROLES = ("chief", "worker", "ps", "evaluator")


def bin_dir() -> Path:
    """Where scripts/k8s-build.sh keeps the binaries (building them is the script's job)."""
    out = subprocess.run(
        [str(BUILD_SCRIPT), "--print-bindir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def kserve_crd() -> Path:
    """KServe's InferenceService CRD, fetched by scripts/k8s-build.sh from KServe's Go module."""
    out = subprocess.run(
        [str(BUILD_SCRIPT), "--print-kserve-crd"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def binaries_missing(bindir: Path) -> list[str]:
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
    return [n for n in names if not (bindir / n).is_file()]


@dataclass
class NodeShape:
    cpu: str = "8"
    memory: str = "32Gi"
    gpu: int = 0
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Cluster:
    run_dir: Path
    bindir: Path
    api_port: int = 0
    etcd_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cmds: dict[str, list[str]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.run_dir / "pki" / "ca.crt"

    def log(self, name: str, lines: int = 20) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------------ raw admin requests
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.run_dir / "pki"
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """One admin request to the API server (JSON in and out); raises on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        content_type = "application/json"
        if method == "PATCH":
            content_type = "application/merge-patch+json"
        req = urllib.request.Request(
            self.server + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def apply(self, path: str, body: dict[str, Any]) -> Any:
        """Create an object at the collection `path`, or replace it if it exists."""
        try:
            return self.request("POST", path, body)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
        name = body["metadata"]["name"]
        current = self.request("GET", f"{path}/{name}")
        body = {**body, "metadata": {**body["metadata"],
                                     "resourceVersion": current["metadata"]["resourceVersion"]}}
        return self.request("PUT", f"{path}/{name}", body)

    def apply_manifest(self, doc: dict[str, Any]) -> Any:
        """Create or replace one object of the kinds our manifests use."""
        kind, ns = doc["kind"], doc["metadata"].get("namespace")
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        paths = {
            "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
            "ConfigMap": f"/api/v1/namespaces/{ns}/configmaps",
            "Role": f"{rbac}/namespaces/{ns}/roles",
            "RoleBinding": f"{rbac}/namespaces/{ns}/rolebindings",
            "ClusterRole": f"{rbac}/clusterroles",
            "ClusterRoleBinding": f"{rbac}/clusterrolebindings",
        }
        if kind not in paths:
            raise ValueError(f"apply_manifest: no path known for kind {kind}")
        return self.apply(paths[kind], doc)

    def can(self, user: str, verb: str, resource: str, namespace: str = "",
            subresource: str = "") -> bool:
        """Whether `user` may do `verb` on `resource` (a SubjectAccessReview)."""
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": ""}
        if namespace:
            attrs["namespace"] = namespace
        if subresource:
            attrs["subresource"] = subresource
        review = self.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                     "resourceAttributes": attrs},
        })
        return bool(review["status"].get("allowed"))

    # ------------------------------------------------------------------ nodes
    def add_node(self, name: str, shape: NodeShape, wait: bool = True) -> None:
        capacity = {"cpu": shape.cpu, "memory": shape.memory, "pods": str(shape.pods)}
        if shape.gpu:
            capacity["nvidia.com/gpu"] = str(shape.gpu)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **shape.labels,
                },
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        self.request("POST", "/api/v1/nodes", node)
        if wait:
            self.wait_for(lambda: _node_ready(self.request("GET", f"/api/v1/nodes/{name}")),
                          f"node {name} Ready (kwok)", "kwok")

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now (what it does periodically in a real cluster), so
        watches from older resource versions get 410 Gone. Returns the revision."""
        base = f"http://127.0.0.1:{self.etcd_port}/v3/kv"

        def post(path: str, body: dict[str, Any]) -> Any:
            req = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(),
                                         method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        rev = int(post("range", {"key": "AA=="})["header"]["revision"])
        post("compaction", {"revision": str(rev), "physical": True})
        return rev

    def delete_node(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/nodes/{name}")

    def wait_for(self, check: Any, what: str, component: str = "kube-apiserver",
                 timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}; "
                        f"its log ({self.run_dir}/logs/{name}.log) ends:\n{self.log(name)}"
                    )
            try:
                result = check()
                if result:
                    return result
            except (OSError, ValueError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out after {timeout:g} s waiting for {what}; "
                    f"{component} log ends:\n{self.log(component)}"
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ lifecycle
    def start(self, nodes: dict[str, NodeShape] | None = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        missing = binaries_missing(self.bindir)
        if missing:
            raise RuntimeError(
                f"Kubernetes test binaries missing in {self.bindir}: {', '.join(missing)}; "
                "run scripts/k8s-build.sh (scripts/test.sh does) to build them"
            )
        self._pki()
        self.etcd_port, peer_port, self.api_port = free_port(), free_port(), free_port()
        self._write_kubeconfig()
        b = self.bindir
        self._spawn("etcd", [
            str(b / "etcd"), "--name", "mlp-test", "--data-dir", str(self.run_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"mlp-test=http://127.0.0.1:{peer_port}",
            "--listen-metrics-urls", "", "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self.wait_for(lambda: _http_ok(f"http://127.0.0.1:{self.etcd_port}/health"), "etcd", "etcd")
        pki = self.run_dir / "pki"
        self._spawn("kube-apiserver", [
            str(b / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--enable-priority-and-fairness=false", "--endpoint-reconciler-type=none",
            "--profiling=false",
        ])
        self.wait_for(lambda: self._readyz(), "kube-apiserver /readyz")
        kc = str(self.kubeconfig)
        kcm_port, sched_port = free_port(), free_port()
        self._spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            "--profiling=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,"
            "-node-route-controller",
        ])
        self._spawn("kube-scheduler", [
            str(b / "kube-scheduler"), f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            "--profiling=false",
        ])
        self._spawn("kwok", [
            str(b / "kwok"), f"--kubeconfig={kc}", f"--config={self._stages()}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=",
            "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
            "--disregard-status-with-label-selector=",
            "--cidr=10.0.1.0/24", "--node-ip=10.0.1.1", "--node-lease-duration-seconds=40",
            "--server-address=127.0.0.1:0",
        ])
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
            self.wait_for(lambda p=port: _http_ok(f"https://127.0.0.1:{p}/healthz", insecure=True),
                          f"{name} /healthz", name)
        # The service-account controllers are running once the default namespace has its
        # service account (pods need it).
        self.wait_for(
            lambda: self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default"),
            "the default service account", "kube-controller-manager",
        )
        for name, shape in (nodes or {}).items():
            self.add_node(name, shape, wait=False)
        for name in nodes or {}:
            self.wait_for(lambda n=name: _node_ready(self.request("GET", f"/api/v1/nodes/{n}")),
                          f"node {name} Ready (kwok)", "kwok")

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Anything the process left in its group goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    def restart_apiserver(self) -> None:
        """Restart the API server (its watch cache starts afresh: older watches get 410)."""
        proc = self.procs["kube-apiserver"]
        os.killpg(proc.pid, signal.SIGKILL)  # a crash; a graceful stop drains for a minute
        proc.wait(30)
        self._spawn("kube-apiserver", self.cmds["kube-apiserver"])
        self.wait_for(lambda: self._readyz(), "kube-apiserver /readyz after a restart")

    # ------------------------------------------------------------------ internals
    def _spawn(self, name: str, cmd: list[str]) -> None:
        self.cmds[name] = cmd
        log = open(self.run_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            cmd, cwd=self.run_dir, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def _readyz(self) -> bool:
        req = urllib.request.Request(self.server + "/readyz")
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def _pki(self) -> None:
        pki = self.run_dir / "pki"
        if (pki / "admin.crt").exists():
            return
        pki.mkdir(parents=True)

        def ssl_cmd(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

        ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                "-subj", "/CN=mlp-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
        (pki / "san.cnf").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        )
        for name, subj, ext in (("apiserver", "/CN=kube-apiserver", True),
                                ("admin", "/O=system:masters/CN=admin", False)):
            ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-subj", subj,
                    "-keyout", f"{name}.key", "-out", f"{name}.csr")
            ssl_cmd("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "30", "-out", f"{name}.crt",
                    *(["-extfile", "san.cnf"] if ext else []))
        ssl_cmd("genrsa", "-out", "sa.key", "2048")
        ssl_cmd("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def _write_kubeconfig(self) -> None:
        pki = self.run_dir / "pki"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.server, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(pki / "admin.crt"),
                "client-key": str(pki / "admin.key")}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a service account (a TokenRequest token)."""
        r = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 86400}},
        )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": service_account, "user": {"token": r["status"]["token"]}}],
            "contexts": [{"name": "test", "context": {
                "cluster": "test", "user": service_account, "namespace": namespace}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _stages(self) -> Path:
        """kwok's own stages with their delays shortened (tests wait for events, not seconds),
        plus the stages that end pods asking for it (SIM_STAGE)."""
        docs: list[dict[str, Any]] = []
        for f in sorted((self.bindir / "kwok-stages").glob("*.yaml")):
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc or doc.get("kind") != "Stage":
                    continue
                name = doc["metadata"]["name"]
                if name == "pod-complete":
                    continue  # pods end only as SIM_STAGES says (or when deleted)
                spec = doc["spec"]
                if name.startswith("pod-") and "delay" in spec:
                    spec["delay"]["durationMilliseconds"] = 50 if name == "pod-delete" else 20
                    spec["delay"].pop("jitterDurationMilliseconds", None)
                    if name != "pod-delete":
                        spec["delay"].pop("jitterDurationFrom", None)
                docs.append(doc)
        for role in SIM_ROLES:
            docs.append(yaml.safe_load(SIM_STAGE.format(role=role, ROLE=role.upper())))
        path = self.run_dir / "kwok-stages.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        return path


def _http_ok(url: str, insecure: bool = False) -> bool:
    ctx = None
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _node_ready(node: dict[str, Any]) -> bool:
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def start_cluster(run_dir: Path, nodes: dict[str, NodeShape] | None = None) -> Cluster:
    cluster = Cluster(run_dir=run_dir, bindir=bin_dir())
    try:
        cluster.start(nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster

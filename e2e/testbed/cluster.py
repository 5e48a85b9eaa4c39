"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes). Every process is started with its own log file and stopped by
its PID. Binaries come from e2e/toolchain/build.sh (a cache outside the repository)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from notebookos import labels

from .pki import Pki, client_cert, make_pki
from .wait import until

REPO = Path(__file__).resolve().parents[2]
# Inside loopback, so processes can bind their pod IP. Two test beds on one machine need two
# ranges (pod IPs and ports would collide): NOTEBOOKOS_POD_CIDR, e.g. 127.20.0.0/16.
POD_CIDR = os.environ.get("NOTEBOOKOS_POD_CIDR") or "127.10.0.0/16"
K8S_VERSION_HINT = "v1.36"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toolchain_dir() -> Path:
    """The folder of built binaries: $NOTEBOOKOS_K8S_BIN, else build (or reuse) it now."""
    env = os.environ.get("NOTEBOOKOS_K8S_BIN")
    if env and (Path(env) / ".complete").exists():
        return Path(env)
    proc = subprocess.run(
        ["bash", str(REPO / "e2e" / "toolchain" / "build.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            "could not build the e2e control plane (e2e/toolchain/build.sh exited "
            f"{proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    bin_dir: Path
    root: Path
    # A non-loopback address of this machine for the API server (and the `kubernetes` Service's
    # endpoint), for real nodes whose pods cannot reach 127.0.0.1; empty: loopback only.
    advertise: str = ""
    pki: Pki = field(init=False)
    server: str = field(init=False, default="")
    kubeconfig: Path = field(init=False)
    logs_dir: Path = field(init=False)
    procs: dict[str, Managed] = field(init=False, default_factory=dict)
    _api: Any = field(init=False, default=None)
    _node_seq: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.logs_dir = self.root / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.root / "admin.kubeconfig"

    # ---------------------------------------------------------------------------- processes

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        ready_url: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.Popen[bytes]:
        """Run a component as a local process with its log in logs_dir/<name>.log."""
        if name in self.procs and self.procs[name].proc.poll() is None:
            raise RuntimeError(f"a process named {name} is already running")
        log = self.logs_dir / f"{name}.log"
        full_env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=self.root
            )
        self.procs[name] = Managed(name, proc, log)
        if ready_url:
            deadline = time.monotonic() + timeout
            while not self._http_ok(ready_url):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
                if time.monotonic() > deadline:
                    log_tail = self.tail(name)
                    raise RuntimeError(f"{name} did not answer {ready_url} in {timeout:.0f}s\n--- log ---\n{log_tail}")
                time.sleep(0.2)
        return proc

    def stop(self, name: str, grace: float = 10.0) -> None:
        managed = self.procs.pop(name, None)
        if managed is None:
            return
        proc = managed.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def tail(self, name: str, lines: int = 60) -> str:
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _http_ok(self, url: str) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if url.startswith(self.server or "\0"):
            ctx.load_cert_chain(self.pki.admin_cert, self.pki.admin_key)
        try:
            with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    # ---------------------------------------------------------------------------- control plane

    def start(self) -> None:
        t0 = time.monotonic()
        self.pki = make_pki(self.root / "pki", ips=(self.advertise,) if self.advertise else ())
        b = self.bin_dir / "bin"
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        host = self.advertise or "127.0.0.1"
        self.server = f"https://{host}:{api_port}"
        self._write_kubeconfig()
        self.spawn(
            "etcd",
            [
                str(b / "etcd"),
                "--name=e2e",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            ready_url=f"http://127.0.0.1:{etcd_port}/health",
        )
        p = self.pki
        self.spawn(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={host}",
                f"--advertise-address={host}",
                f"--secure-port={api_port}",
                "--service-cluster-ip-range=10.0.0.0/16",  # room for the scale benchmark's thousands of kernels
                "--allow-privileged=true",
                "--authorization-mode=Node,RBAC",
                f"--tls-cert-file={p.serving_cert}",
                f"--tls-private-key-file={p.serving_key}",
                f"--client-ca-file={p.ca_cert}",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                # Real nodes' kube-proxy routes the `kubernetes` Service to the reconciled endpoint.
                f"--endpoint-reconciler-type={'lease' if self.advertise else 'none'}",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
            ],
            ready_url=f"{self.server}/readyz",
            timeout=120,
        )
        self.spawn(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                f"--service-account-private-key-file={p.sa_key}",
                f"--root-ca-file={p.ca_cert}",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                # kwok's pod IPs are loopback addresses, which EndpointSlices may not carry.
                "--controllers=*,-node-ipam-controller,-service-lb-controller,-cloud-node-lifecycle-controller"
                + (
                    ""
                    if self.advertise
                    else ",-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller"
                ),
                "--concurrent-gc-syncs=5",
                "--terminated-pod-gc-threshold=100",
            ],
        )
        self.start_scheduler("default-scheduler", extenders=[], proc_name="kube-scheduler")
        stages = self.root / "kwok-stages.yaml"
        stages.write_text("\n---\n".join(f.read_text() for f in sorted((self.bin_dir / "kwok-stages").glob("*.yaml"))))
        self.spawn(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
                f"--config={stages}",
            ],
        )
        core = self.core()
        until(
            lambda: core.read_namespaced_service_account("default", "default"),
            60,
            "the controller-manager to create the default service account",
        )
        self.startup_seconds = time.monotonic() - t0

    def start_scheduler(self, name: str, extenders: list[dict[str, Any]], proc_name: str | None = None) -> None:
        """A kube-scheduler whose single profile is `name`, calling the given HTTP extenders."""
        proc_name = proc_name or f"scheduler-{name}"
        port = free_port()
        config = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "leaderElection": {"leaderElect": False},
            "profiles": [{"schedulerName": name}],
            "extenders": extenders,
        }
        path = self.root / f"{proc_name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.spawn(
            proc_name,
            [
                str(self.bin_dir / "bin" / "kube-scheduler"),
                f"--config={path}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez",
            ],
            ready_url=f"https://127.0.0.1:{port}/healthz",
        )

    def _write_kubeconfig(self, path: Path | None = None, cert: Path | None = None, key: Path | None = None) -> Path:
        p = self.pki
        path = path or self.kubeconfig
        user = {"client-certificate": str(cert or p.admin_cert), "client-key": str(key or p.admin_key)}
        who = "admin" if cert is None else "node"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": self.server, "certificate-authority": str(p.ca_cert)}}],
            "users": [{"name": who, "user": user}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": who}}],
            "current-context": "e2e",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def node_kubeconfig(self, node: str) -> Path:
        """A real kubelet's kubeconfig: its own certificate, for the Node authorizer."""
        directory = self.root / "nodes" / node
        cert, key = client_cert(self.pki, f"system:node:{node}", "system:nodes", directory)
        return self._write_kubeconfig(directory / "kubeconfig", cert, key)

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        if self._api is not None:
            self._api.close()

    # ---------------------------------------------------------------------------- clients

    def api(self) -> Any:
        """An admin kubernetes.client.ApiClient (shared; do not close)."""
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api())

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin_dir / "bin" / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    # ---------------------------------------------------------------------------- fake GPU nodes

    def add_gpu_nodes(
        self,
        count: int,
        gpus: int = 8,
        prefix: str = "gpu",
        model: str = "NVIDIA H100 80GB HBM3",
        memory_mib: int = 81559,
        extra_labels: dict[str, str] | None = None,
    ) -> list[str]:
        """kwok nodes in the GPU pool, with the inventory the node agent would publish.
        `extra_labels`: e.g. a test module's own slice of the pool (the operator's node selector)."""
        core = self.core()
        names = []
        for _ in range(count):
            self._node_seq += 1
            name = f"{prefix}-{self._node_seq}"
            inventory = [
                {
                    "index": i,
                    "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}.{i}')}",
                    "memoryMiB": memory_mib,
                    "model": model,
                    "healthy": True,
                }
                for i in range(gpus)
            ]
            resources = {"cpu": "64", "memory": "512Gi", "pods": "110", labels.GPU_RESOURCE: str(gpus)}
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        labels.GPU_INVENTORY_ANNOTATION: json.dumps(inventory),
                    },
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "type": "kwok",
                        labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE,
                        "nvidia.com/gpu.product": model.replace(" ", "-"),
                        **(extra_labels or {}),
                    },
                },
                "spec": {
                    "taints": [
                        {
                            "key": labels.GPU_TAINT_KEY,
                            "value": labels.GPU_TAINT_VALUE,
                            "effect": labels.GPU_TAINT_EFFECT,
                        }
                    ]
                },
                "status": {"capacity": resources, "allocatable": resources},
            }
            core.create_node(body)
            names.append(name)

        def all_ready() -> bool:
            for n in names:
                conds = core.read_node(n).status.conditions or []
                if not any(c.type == "Ready" and c.status == "True" for c in conds):
                    return False
            return True

        until(all_ready, 60, f"kwok to mark nodes {names} Ready")
        return names

    def delete_nodes(self, names: list[str]) -> None:
        from kubernetes.client.exceptions import ApiException

        core = self.core()
        for n in names:
            try:
                core.delete_node(n)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def start_cluster(root: Path, advertise: str = "") -> Cluster:
    bin_dir = toolchain_dir()
    if root.exists():
        shutil.rmtree(root)
    cluster = Cluster(bin_dir=bin_dir, root=root, advertise=advertise)
    try:
        cluster.start()
    except BaseException:
        print("\n".join(f"--- {n} ---\n{cluster.tail(n)}" for n in cluster.procs), file=sys.stderr)
        cluster.close()
        raise
    return cluster

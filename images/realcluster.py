"""The real-node tier's cluster: the e2e test bed's control plane (e2e/testbed/cluster.py) on this
machine's address (pods cannot reach its loopback), real nodes (images/realnode.py) joined to it
with their own certificates, CNI bridges and Pod subnets, kube-proxy (iptables) for the Services
(the `kubernetes` one included), and the chart installed with helm: operator, NotebookOS scheduler
with its extender, GPU broker and node agents (made-up GPUs: fake NVML) run as pods on the nodes.

All nodes share this machine's network namespace, so one kube-proxy serves them all. Only one tier
runs at a time on a machine (a lock): kube-proxy's chains and the Pod subnets are machine-wide.
stop() removes every pod, process, mount, cgroup, bridge, netns, iptables rule and kernel setting
the tier made (images/hostnet.py) and fails if something is left."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from e2e.testbed.cluster import Cluster, free_port, start_cluster
from images.containers import ROOT, image
from images.hostnet import Snapshot
from images.realnode import Join, RealNode, binary_image, pause_image, save_images, wait_until
from notebookos import labels

LOCK = Path("/tmp/notebookos-realnode.lock")
CLUSTER_CIDR = "10.244.0.0/16"  # not podman's 10.88.0.0/16, not the Service range 10.0.0.0/16
GPUS_PER_NODE = 2
CHART = ROOT / "charts" / "notebookos"
SCHEDULER_IMAGE = "localhost/notebookos/kube-scheduler"
# The chart's scheduler version, the one the test bed's binaries are built at (e2e/toolchain).
SCHEDULER_VERSION = yaml.safe_load((CHART / "values.yaml").read_text())["scheduler"]["version"]


def host_address() -> str:
    """This machine's address on its default route: reachable from every pod through its bridge."""
    out = subprocess.run(["ip", "-4", "route", "get", "198.51.100.1"], capture_output=True, text=True, check=True)
    words = out.stdout.split()
    return words[words.index("src") + 1]


class RealCluster:
    def __init__(self, root: Path, kubelet_dir: Path, nodes: int = 3) -> None:
        self.root, self.kubelet_dir, self.count = root, kubelet_dir, nodes
        self.ip = host_address()
        self.namespace = f"nbos-real-{os.getpid()}"
        self.nodes: list[RealNode] = []
        self.bridges = [f"nbos{os.getpid()}-{i}" for i in range(1, nodes + 1)]
        self.cluster: Cluster | None = None
        self.net: Snapshot | None = None
        self._lock = LOCK.open("w")
        self.timings: dict[str, float] = {}  # seconds since start(), at the end of each step

    def start(self) -> RealCluster:
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        routes = subprocess.run(["ip", "-4", "route", "show", "root", CLUSTER_CIDR], capture_output=True, text=True)
        assert not routes.stdout.strip(), (
            f"routes into {CLUSTER_CIDR} (a run killed before its stop?):\n{routes.stdout}"
        )
        self.net = Snapshot.take()
        t0 = time.monotonic()

        def lap(step: str) -> None:
            self.timings[step] = round(time.monotonic() - t0, 1)

        self.cluster = c = start_cluster(self.root / "control-plane", advertise=self.ip)
        lap("control plane")
        # The chart's kube-scheduler image (registry.k8s.io is unreachable): the test bed's binary.
        scheduler = binary_image(f"{SCHEDULER_IMAGE}:{SCHEDULER_VERSION}", c.bin_dir / "bin" / "kube-scheduler", "1000")
        folder = self.root / "images"
        archives = save_images([image("kernel"), image("control"), scheduler, pause_image(folder)], folder)
        lap("images saved")
        for i in range(1, self.count + 1):
            name = f"real-{os.getpid()}-{i}"
            join = Join(
                kubeconfig=c.node_kubeconfig(name),
                node_ip=self.ip,
                subnet=f"10.244.{i}.0/24",
                bridge=self.bridges[i - 1],
                labels={labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE},
                # The chart's Deployments tolerate no taint: the first node is left untainted for them.
                taints=[]
                if i == 1
                else [
                    {"key": labels.GPU_TAINT_KEY, "value": labels.GPU_TAINT_VALUE, "effect": labels.GPU_TAINT_EFFECT}
                ],
            )
            node = RealNode(self.root / name, self.kubelet_dir / "bin" / "kubelet", name, join)
            self.nodes.append(node)
            # Only the first node takes the chart's Deployments: the control and scheduler images go there.
            node.start([a for ref, a in archives.items() if i == 1 or ref not in (image("control"), scheduler)])
            lap(f"{name} started")
        core = c.core()
        for node in self.nodes:
            wait_until(lambda n=node: _ready(core, n.name), 120, f"node {node.name} Ready",
                       alive=lambda n=node: n.procs["kubelet"].poll() is None)  # fmt: skip
            taints = [t.key for t in core.read_node(node.name).spec.taints or []]
            assert all(t["key"] in taints for t in node.join.taints), f"{node.name}: taints {taints}"
        lap("nodes Ready")
        self._start_kube_proxy()
        self._install_chart()
        lap("chart installed, its pods running")

        def inventories() -> bool:
            return all(labels.GPU_INVENTORY_ANNOTATION in (core.read_node(n.name).metadata.annotations or {})
                       for n in self.nodes)  # fmt: skip

        wait_until(inventories, 60, "the node agents' GPU inventories")
        lap("GPU inventories published")
        print(f"real-node tier up: {self.timings}")
        return self

    def _start_kube_proxy(self) -> None:
        c = self.cluster
        assert c is not None
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(c.kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.nodes[0].name,
            "clusterCIDR": CLUSTER_CIDR,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # No NodePorts on loopback (that needs route_localnet); leave conntrack's settings alone.
            "nodePortAddresses": [f"{self.ip}/32"],
            "iptables": {"localhostNodePorts": False},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = c.root / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        c.spawn("kube-proxy", [str(self.kubelet_dir / "bin" / "kube-proxy"), f"--config={path}", "--v=2"],
                ready_url=f"http://{config['healthzBindAddress']}/healthz")  # fmt: skip

    def _install_chart(self) -> None:
        c = self.cluster
        assert c is not None
        helm = [str(c.bin_dir / "bin" / "helm"), f"--kubeconfig={c.kubeconfig}", "-n", self.namespace]
        never = {"imagePullPolicy": "Never"}  # every image is in the nodes' containerd already
        # No cluster DNS: the broker's Service name resolves nowhere, so the operator (which hands
        # the URL to kernel pods) and the node agents start once its ClusterIP is known.
        values: dict[str, Any] = {
            "gpuRuntimeClassName": "",  # no GPU, no NVIDIA runtime
            "operator": {**never, "replicas": 0},
            "scheduler": {**never, "image": SCHEDULER_IMAGE, "extender": dict(never)},
            "broker": dict(never),
            "nodeAgent": {**never, "enabled": False, "nvml": f"fake:{GPUS_PER_NODE}"},
        }
        self._helm(helm, "install", "--create-namespace", values)
        self._rollout("deployment/notebookos-broker", "deployment/notebookos-scheduler")
        broker = c.core().read_namespaced_service("notebookos-broker", self.namespace)
        port = broker.spec.ports[0].port
        values["operator"] = {**never, "replicas": 1, "brokerUrl": f"http://{broker.spec.cluster_ip}:{port}"}
        values["nodeAgent"]["enabled"] = True
        self._helm(helm, "upgrade", "", values)
        self._rollout("deployment/notebookos-operator", "daemonset/notebookos-node-agent")

    def _helm(self, helm: list[str], verb: str, flag: str, values: dict[str, Any]) -> None:
        assert self.cluster is not None
        path = self.cluster.root / f"values-{verb}.yaml"
        path.write_text(yaml.safe_dump(values))
        argv = [*helm, verb, "notebookos", str(CHART), *([flag] if flag else []), "-f", str(path)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"helm {verb}: {proc.stderr}\n{self.logs()}"

    def _rollout(self, *objects: str) -> None:
        assert self.cluster is not None
        for obj in objects:
            proc = self.cluster.kubectl("rollout", "status", obj, "-n", self.namespace, "--timeout=100s", check=False)
            assert proc.returncode == 0, f"{obj}: {proc.stdout}{proc.stderr}\n{self.logs()}"

    # --- observing -------------------------------------------------------------------------------

    def logs(self) -> str:
        """The kubelets', kube-proxy's and every container's log tails (the kubelets serve no API)."""
        out = [f"--- {n.name} kubelet\n{n.log('kubelet')[-2000:]}" for n in self.nodes]
        if self.cluster is not None:
            pods = self.cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            out += [f"--- pods\n{pods}", f"--- kube-proxy\n{self.cluster.tail('kube-proxy', 20)}"]
        for log in sorted(p for n in self.nodes for p in (n.root / "pod-logs").glob("*/*/*.log")):
            out.append(f"--- {log.parent.parent.name}/{log.parent.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)

    # --- stop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        errors: list[str] = []
        c = self.cluster
        if c is not None:
            # No controller makes pods any more; the kubelets stop the ones they run. Twice: the
            # operator and the NotebookOS scheduler may make and place one more while they stop.
            for name in ("kube-scheduler", "kube-controller-manager"):
                c.stop(name)
            for _ in range(2):
                c.kubectl("delete", "pods", "--all", "-A", "--grace-period=1", "--timeout=90s", check=False)
            try:
                net = self.net

                def stopped() -> bool:
                    return not any(n.tasks() for n in self.nodes if _alive(n)) and not (net and net.new_netns())

                wait_until(stopped, 90, "the kubelets to stop the pods and remove their network namespaces")
            except AssertionError as exc:
                errors.append(str(exc))
        for node in self.nodes:
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(f"{node.name}: {exc}")
        if c is not None:
            c.stop("kube-proxy")
            cleanup = [str(self.kubelet_dir / "bin" / "kube-proxy"), "--cleanup"]
            subprocess.run(cleanup, capture_output=True, timeout=60, check=False)
            c.close()
        if self.net is not None:
            left = self.net.undo(self.bridges)
            errors += [f"left behind: {x}" for x in left]
        self._lock.close()
        assert not errors, "\n".join(errors)


def _ready(core: Any, node: str) -> bool:
    try:
        conds = core.read_node(node).status.conditions or []
    except Exception:  # not registered yet
        return False
    return any(x.type == "Ready" and x.status == "True" for x in conds)


def _alive(node: RealNode) -> bool:
    p = node.procs.get("containerd")
    return p is not None and p.poll() is None

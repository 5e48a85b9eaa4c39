"""The real-node tier's cluster: the e2e test bed's control plane (e2e/testbed/cluster.py) on this
machine's address (pods cannot reach its loopback), real nodes (images/realnode.py) joined to it
with their own certificates, CNI bridges and Pod subnets, kube-proxy (iptables) for the Services
(the `kubernetes` one included), the NotebOS scheduler with its extender and the GPU broker as host
processes (e2e/testbed/stack.py), and the chart's operator installed with helm, running on a node.

All nodes share this machine's network namespace, so one kube-proxy serves them all. Only one tier
runs at a time on a machine (a lock): kube-proxy's chains and the Pod subnets are machine-wide.
stop() removes every pod, process, mount, cgroup, bridge, netns, iptables rule and kernel setting
the tier made (images/hostnet.py) and fails if something is left."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from e2e.testbed.cluster import Cluster, free_port, gpu_inventory, start_cluster
from e2e.testbed.stack import Stack
from images.containers import ROOT, image
from images.hostnet import Snapshot
from images.realnode import Join, RealNode, save_images, wait_until
from notebookos import labels

LOCK = Path("/tmp/notebookos-realnode.lock")
CLUSTER_CIDR = "10.244.0.0/16"  # not podman's 10.88.0.0/16, not the Service range 10.0.0.0/24
GPUS_PER_NODE = 2
CHART = ROOT / "charts" / "notebookos"


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
        self.stack: Stack | None = None
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
        kernel, control, pause = save_images([image("kernel"), image("control")], self.root / "images")
        lap("images saved")
        for i in range(1, self.count + 1):
            name = f"real-{os.getpid()}-{i}"
            join = Join(
                kubeconfig=c.node_kubeconfig(name),
                node_ip=self.ip,
                subnet=f"10.244.{i}.0/24",
                bridge=self.bridges[i - 1],
                labels={labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE},
                # The operator tolerates no taint: the first node is left untainted for it.
                taints=[]
                if i == 1
                else [
                    {"key": labels.GPU_TAINT_KEY, "value": labels.GPU_TAINT_VALUE, "effect": labels.GPU_TAINT_EFFECT}
                ],
            )
            node = RealNode(self.root / name, self.kubelet_dir / "bin" / "kubelet", name, join)
            self.nodes.append(node)
            # Only the untainted first node can take the operator: the control image goes there.
            node.start([kernel, pause, *([control] if i == 1 else [])])
            lap(f"{name} started")
        core = c.core()
        for node in self.nodes:
            wait_until(lambda n=node: _ready(core, n.name), 120, f"node {node.name} Ready",
                       alive=lambda n=node: n.procs["kubelet"].poll() is None)  # fmt: skip
            # No GPU here: the inventory the node agent would publish for made-up devices.
            inventory = gpu_inventory(node.name, GPUS_PER_NODE)
            core.patch_node(node.name, {"metadata": {"annotations": {labels.GPU_INVENTORY_ANNOTATION: inventory}}})
        lap("nodes Ready")
        self._start_kube_proxy()
        # The chart first (its CRDs), then the extender and scheduler that watch them.
        broker_port = free_port()
        self._install_chart(f"http://{self.ip}:{broker_port}")
        self.stack = Stack(c, process_pods=False, operator=False, broker_host=self.ip, broker_port=broker_port)
        self.stack.start()
        wait = ["rollout", "status", "deployment/notebookos-operator", "-n", self.namespace, "--timeout=180s"]
        proc = c.kubectl(*wait, check=False)
        assert proc.returncode == 0, f"the operator: {proc.stdout}{proc.stderr}\n{self.logs()}"
        lap("chart installed, operator running")
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
        self.kube_proxy_config = path
        c.spawn("kube-proxy", [str(self.kubelet_dir / "bin" / "kube-proxy"), f"--config={path}", "--v=2"],
                ready_url=f"http://{config['healthzBindAddress']}/healthz")  # fmt: skip

    def _install_chart(self, broker_url: str) -> None:
        c = self.cluster
        assert c is not None
        helm = [str(c.bin_dir / "bin" / "helm"), f"--kubeconfig={c.kubeconfig}"]
        values = {
            # The scheduler and broker run on the host (stack.py); no node agent: no GPU, no NVML.
            "scheduler.enabled": "false",
            "broker.enabled": "false",
            "nodeAgent.enabled": "false",
            "gpuRuntimeClassName": "",
            "operator.brokerUrl": broker_url,
            "operator.imagePullPolicy": "Never",
        }
        sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
        proc = subprocess.run([*helm, "install", "notebookos", str(CHART), "-n", self.namespace, "--create-namespace",
                               *sets], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 0, f"helm install: {proc.stderr}\n{self.logs()}"

    # --- observing -------------------------------------------------------------------------------

    def pod_log(self, pod: str) -> str:
        """A container's log from its node's pod log folder (the kubelets serve no API)."""
        found = [p for n in self.nodes for p in sorted((n.root / "pod-logs").glob(f"*_{pod}_*/*/*.log"))]
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in found)

    def logs(self) -> str:
        out = []
        for n in self.nodes:
            out.append(f"--- {n.name} kubelet\n{n.log('kubelet')[-3000:]}")
        if self.cluster is not None:
            pods = self.cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            out.append(f"--- pods\n{pods}")
            for name in ("kube-proxy", "extender", f"scheduler-{labels.SCHEDULER_NAME}", "broker"):
                out.append(f"--- {name}\n{self.cluster.tail(name, 30)}")
        return "\n".join(out)

    # --- stop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        errors: list[str] = []
        c = self.cluster
        if self.stack is not None:
            self.stack.close()
        if c is not None:
            # Nothing makes or places pods any more; the kubelets stop the ones they run.
            for name in ("kube-scheduler", "kube-controller-manager"):
                c.stop(name)
            c.kubectl("delete", "pods", "--all", "-A", "--grace-period=1", "--wait=false", check=False)
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


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)

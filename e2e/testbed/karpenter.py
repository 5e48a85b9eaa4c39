"""Karpenter with its kwok cloud provider as a real autoscaler on the test bed.

The provider (built by e2e/toolchain/karpenter.sh) runs as a local process against the test bed's
API server with the admin kubeconfig and leader election off. It "launches" an instance by
creating a Node carrying kwok's annotation (kwok.x-k8s.io/node=fake), which the test bed's kwok
manages (it is started with exactly that annotation selector), so the node turns Ready as a
kubelet would report it. Its instance types come from a JSON file (INSTANCE_TYPES_FILE_PATH):
here GPU types with a whole node's nvidia.com/gpu. The NodePool puts the GPU pool's label and
taint on every node it makes.

GPU inventory: on a cluster the node agent DaemonSet publishes it on every GPU-pool node;
`InventoryPublisher` stands in for that DaemonSet here, running the node agent's own publish step
(fake NVML, the node's nvidia.com/gpu count) for each Ready GPU-pool node that has none yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykube

from notebookos import labels
from notebookos.extender.node_agent import NodeAgent
from notebookos.extender.nvml import FakeNvml

from .cluster import REPO, Cluster, free_port

Manifest = dict[str, Any]

KARPENTER_GROUP = "karpenter.sh"
KWOK_GROUP = "karpenter.kwok.sh"
NODEPOOL_LABEL = f"{KARPENTER_GROUP}/nodepool"  # on every node and NodeClaim Karpenter makes
NODE_CLASS = "notebookos-e2e"
ZONE = "test-zone-a"


def karpenter_dir() -> Path:
    """The folder of Karpenter's kwok provider: $NOTEBOOKOS_KARPENTER_BIN, else build (or reuse) it now."""
    env = os.environ.get("NOTEBOOKOS_KARPENTER_BIN")
    if env and (Path(env) / ".complete").exists():
        return Path(env)
    proc = subprocess.run(
        ["bash", str(REPO / "e2e" / "toolchain" / "karpenter.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not build Karpenter (e2e/toolchain/karpenter.sh exited {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Pure builders
# ------------------------------------------------------------------------------------------------


def gpu_instance_type(name: str, gpus: int = 8, cpu: int = 64, memory_gi: int = 512, price: float = 10.0) -> Manifest:
    """One entry of the kwok provider's instance-types file (kwok/cloudprovider InstanceTypeOptions)."""
    return {
        "name": name,
        "offerings": [
            {
                "Price": price,
                "Available": True,
                "Requirements": [
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [ZONE]},
                ],
            }
        ],
        "architecture": "amd64",
        "operatingSystems": ["linux"],
        "resources": {
            "cpu": str(cpu),
            "memory": f"{memory_gi}Gi",
            "ephemeral-storage": "1Ti",
            "pods": "110",
            labels.GPU_RESOURCE: str(gpus),
        },
    }


def gpu_instance_types(gpus: int = 8) -> list[Manifest]:
    """A cheaper and a larger GPU type of the same GPU count (Karpenter picks the cheapest that fits)."""
    return [
        gpu_instance_type(f"gpu-{gpus}x-64c", gpus, cpu=64, memory_gi=512, price=10.0),
        gpu_instance_type(f"gpu-{gpus}x-128c", gpus, cpu=128, memory_gi=1024, price=14.0),
    ]


def node_class(name: str = NODE_CLASS) -> Manifest:
    return {"apiVersion": f"{KWOK_GROUP}/v1alpha1", "kind": "KWOKNodeClass", "metadata": {"name": name}}


def node_pool(
    name: str,
    extra_labels: Mapping[str, str] | None = None,
    consolidate_after: str = "10s",
    gpu_limit: int = 64,
    node_class_name: str = NODE_CLASS,
) -> Manifest:
    """A NodePool of GPU-pool nodes: the pool's label and taint, empty nodes removed after `consolidate_after`."""
    return {
        "apiVersion": f"{KARPENTER_GROUP}/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE, **(extra_labels or {})}},
                "spec": {
                    "nodeClassRef": {"group": KWOK_GROUP, "kind": "KWOKNodeClass", "name": node_class_name},
                    "requirements": [
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                    ],
                    "taints": [
                        {
                            "key": labels.GPU_TAINT_KEY,
                            "value": labels.GPU_TAINT_VALUE,
                            "effect": labels.GPU_TAINT_EFFECT,
                        }
                    ],
                    "expireAfter": "Never",
                },
            },
            "limits": {labels.GPU_RESOURCE: str(gpu_limit)},
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": consolidate_after},
        },
    }


def karpenter_env(instance_types_file: Path, metrics_port: int, health_port: int) -> dict[str, str]:
    """What the provider reads from its environment (sigs.k8s.io/karpenter/pkg/operator/options)."""
    return {
        "INSTANCE_TYPES_FILE_PATH": str(instance_types_file),
        # One Karpenter, outside the cluster: no lease to win first.
        "DISABLE_LEADER_ELECTION": "true",
        # Both bind all interfaces on fixed defaults (8080, 8081) otherwise.
        "METRICS_PORT": str(metrics_port),
        "HEALTH_PROBE_PORT": str(health_port),
        "LOG_LEVEL": "debug",
    }


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


@dataclass
class Karpenter:
    cluster: Cluster
    gpus_per_node: int = 8
    health_url: str = ""
    metrics_url: str = ""
    instance_types: list[Manifest] = field(default_factory=list)

    @property
    def proc_name(self) -> str:
        return "karpenter"

    def start(self) -> Karpenter:
        c = self.cluster
        home = karpenter_dir()
        # Established before Karpenter starts: its informers need every kind it watches.
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(home / "crds"))
        # File names are <group>_<plural>.yaml (controller-gen's).
        crds = [p.stem.split("_", 1) for p in sorted((home / "crds").glob("*.yaml"))]
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}.{g}" for g, n in crds))
        self.instance_types = gpu_instance_types(self.gpus_per_node)
        types_file = c.root / "karpenter-instance-types.json"
        types_file.write_text(json.dumps(self.instance_types, indent=1))
        metrics, health = free_port(), free_port()
        self.health_url = f"http://127.0.0.1:{health}/readyz"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        c.spawn(
            self.proc_name,
            [str(home / "bin" / "karpenter-kwok")],
            env=karpenter_env(types_file, metrics, health),
            ready_url=self.health_url,
            timeout=120,
        )
        self.ensure_node_class()
        return self

    def ensure_node_class(self, name: str = NODE_CLASS) -> None:
        """The KWOKNodeClass, marked Ready: no controller of the kwok provider sets it (Karpenter's
        own e2e suite sets it the same way), and NodePools of a class that is not Ready launch nothing."""
        c = self.cluster
        c.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(node_class(name)))
        status = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Ready",
                        "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                        "observedGeneration": 1,
                    }
                ]
            }
        }
        c.kubectl(
            "patch", "kwoknodeclasses.karpenter.kwok.sh", name, "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip

    def close(self) -> None:
        self.cluster.stop(self.proc_name)


class InventoryPublisher:
    """Stands in for the node agent DaemonSet on nodes that appear while the test bed runs: for each
    Ready GPU-pool node without an inventory, the node agent's own publish step with fake NVML
    devices, one per nvidia.com/gpu the node has."""

    def __init__(self, cluster: Cluster, selector: str = "", interval: float = 0.3) -> None:
        self._api = pykube.HTTPClient(pykube.KubeConfig.from_file(str(cluster.kubeconfig)))
        self.core = cluster.core()
        # Default: the GPU-pool nodes Karpenter makes (the fake GPU nodes of add_gpu_nodes get theirs at creation).
        self.selector = selector or f"{labels.GPU_POOL_LABEL}={labels.GPU_POOL_VALUE},{NODEPOOL_LABEL}"
        self.interval = interval
        self.published: dict[str, float] = {}  # node -> time.monotonic() when its inventory was written
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inventory-publisher", daemon=True)

    def start(self) -> InventoryPublisher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                nodes = self.core.list_node(label_selector=self.selector).items
                for node in nodes:
                    name = node.metadata.name
                    if (node.metadata.annotations or {}).get(labels.GPU_INVENTORY_ANNOTATION) or name in self.published:
                        continue
                    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
                    gpus = int((node.status.allocatable or {}).get(labels.GPU_RESOURCE, "0"))
                    if not ready or gpus < 1:
                        continue
                    NodeAgent(self._api, name, FakeNvml.uniform(gpus, name)).publish()
                    self.published[name] = time.monotonic()
            except Exception as exc:  # a node deleted mid-way, the API briefly away: retry next round
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)

"""The scale benchmark's peering takeover (`python -m benchmarks.scale --takeover`): two operators
with kopf peering in the benchmark's namespace; the active one is killed (SIGKILL, no goodbye)
during the churn, the standby takes over once the active one's peering record expires, and at the
end every kernel is counted for objects made twice."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

from kubernetes import client

from e2e.testbed.cluster import Cluster
from e2e.testbed.stack import Stack
from notebookos import labels
from notebookos.api import GROUP, VERSION, KernelReplica
from notebookos.operator import naming

PEERING = "notebookos"
STANDBY = "operator-standby"
RESUMED = "Resuming operations after the pause"  # kopf, at INFO
TERMINAL = {"Succeeded", "Failed"}


def start_peers(stack: Stack, ns: str, env: dict[str, str]) -> None:
    """The active operator (priority 100) and a standby (priority 1), both watching `ns`."""
    custom = client.CustomObjectsApi(stack.cluster.api())
    body = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": ns}}
    custom.create_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", body)
    stack.start_operator(args=["-n", ns], env=env, peering=(PEERING, 100))
    stack.start_operator(STANDBY, args=["-n", ns], env=env, peering=(PEERING, 1))


class Takeover:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.killed_at: float | None = None
        self.resumed_after: float | None = None

    def kill_active(self) -> None:
        managed = self.cluster.procs.pop("operator")
        os.killpg(managed.proc.pid, signal.SIGKILL)  # a crash: its peering record stays until it expires
        managed.proc.wait()
        self.killed_at = time.monotonic()

    def poll(self) -> None:
        """Notes when the standby resumed (its log says so)."""
        if self.killed_at is None or self.resumed_after is not None:
            return
        log = (self.cluster.logs_dir / f"{STANDBY}.log").read_text(errors="replace")
        if RESUMED in log:
            self.resumed_after = time.monotonic() - self.killed_at


def duplicates(cluster: Cluster, ns: str, replicas: int = 3) -> Counter[str]:
    """Objects made twice: live replica pods beyond one per replica, routers beyond one per kernel,
    KernelReplicas beyond `replicas` per kernel. A pod on a removed node does not count as live."""
    core, custom = cluster.core(), client.CustomObjectsApi(cluster.api())
    nodes = {n.metadata.name for n in core.list_node().items}
    per_replica: Counter[tuple[str, str]] = Counter()
    routers: Counter[str] = Counter()
    for p in core.list_namespaced_pod(ns).items:
        lab = p.metadata.labels or {}
        live = not p.metadata.deletion_timestamp and p.status.phase not in TERMINAL
        if not live or (p.spec.node_name and p.spec.node_name not in nodes):
            continue
        kernel, component = lab.get(labels.KERNEL_LABEL, ""), lab.get(labels.COMPONENT_LABEL)
        if component == naming.COMPONENT_REPLICA:
            per_replica[(kernel, lab.get(labels.REPLICA_ID_LABEL, ""))] += 1
        elif component == naming.COMPONENT_ROUTER:
            routers[kernel] += 1
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, ns, KernelReplica.crd_plural)["items"]
    per_kernel = Counter(r["spec"]["kernelName"] for r in listed)
    out: Counter[str] = Counter()
    out["replica pods"] = sum(n - 1 for n in per_replica.values() if n > 1)
    out["routers"] = sum(n - 1 for n in routers.values() if n > 1)
    out["KernelReplicas"] = sum(n - replicas for n in per_kernel.values() if n > replicas)
    return out

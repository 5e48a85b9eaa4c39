"""Capacity-request pods: how the operator makes an autoscaler add a GPU node.

Replica pods do not request nvidia.com/gpu (GPUs are bound per cell), so neither
cluster-autoscaler nor Karpenter can see that a kernel needs a GPU node. When no node can take a
placement or a migration, the operator creates capacity-request pods: pause containers on the
default scheduler that ask for a whole GPU-pool node's nvidia.com/gpu, at a priority both
autoscalers act on and every real pod preempts. They are owned by the kernel (the garbage
collector removes them with it) and removed once capacity has arrived.

Pure builders; no I/O. The handlers create what these return; docs/autoscaling.md says why each
field is set as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from notebookos import labels
from notebookos.api import NotebookKernel

from . import naming
from .builders import _container_security, _pod_security
from .config import ConfigError, _parse_int, _parse_json_list, _parse_selector

Manifest = dict[str, Any]

# cluster-autoscaler treats pending pods below --expendable-pods-priority-cutoff (default -10) as
# expendable and never scales up for them; Karpenter acts on every pending pod.
CLUSTER_AUTOSCALER_EXPENDABLE_CUTOFF = -10
# Above the cutoff (with room for a cluster that raises it a little), below every real pod (0 by
# default) and below the -1 of cluster-autoscaler's overprovisioning example, so real pods and
# overprovisioning placeholders both win.
DEFAULT_PRIORITY = -5
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
DEFAULT_SCHEDULER = "default-scheduler"
CONTAINER_NAME = "pause"
# cluster-autoscaler keeps a node whose pods have custom (non-workload) controllers; this lets it
# remove a node that only holds capacity requests, as it may evict them.
SAFE_TO_EVICT_ANNOTATION = labels.CA_SAFE_TO_EVICT


@dataclass(frozen=True)
class CapacityConfig:
    """Shape and bounds of capacity requests (operator environment, set by the chart's values)."""

    # What one request asks for: a whole node of the GPU pool.
    gpus_per_node: int = 8
    # Bounds: at most this many outstanding requests for one kernel (a kernel's replicas each want
    # their own node) and in the whole cluster (a runaway loop cannot buy a fleet).
    max_per_kernel: int = 3
    max_per_cluster: int = 10
    priority: int = DEFAULT_PRIORITY
    priority_class: str = labels.CAPACITY_PRIORITY_CLASS
    image: str = PAUSE_IMAGE
    node_selector: Mapping[str, str] = field(default_factory=lambda: {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE})
    extra_tolerations: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.gpus_per_node < 1:
            raise ConfigError(f"gpus_per_node: {self.gpus_per_node} must be at least 1")
        if self.max_per_kernel < 0 or self.max_per_cluster < 0:
            raise ConfigError("max_per_kernel and max_per_cluster must not be negative")
        if not CLUSTER_AUTOSCALER_EXPENDABLE_CUTOFF <= self.priority < 0:
            raise ConfigError(
                f"priority: {self.priority} must be in {CLUSTER_AUTOSCALER_EXPENDABLE_CUTOFF}..-1: at least "
                "cluster-autoscaler's expendable cutoff, below real pods"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CapacityConfig:
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for var, key, lo, hi in (
            ("NOTEBOOKOS_CAPACITY_GPUS_PER_NODE", "gpus_per_node", 1, 1024),
            ("NOTEBOOKOS_CAPACITY_MAX_PER_KERNEL", "max_per_kernel", 0, 100),
            ("NOTEBOOKOS_CAPACITY_MAX_PER_CLUSTER", "max_per_cluster", 0, 10000),
            ("NOTEBOOKOS_CAPACITY_PRIORITY", "priority", CLUSTER_AUTOSCALER_EXPENDABLE_CUTOFF, -1),
        ):
            if v := env.get(var):
                kw[key] = _parse_int(var, v, lo, hi)
        if v := env.get("NOTEBOOKOS_CAPACITY_PRIORITY_CLASS"):
            kw["priority_class"] = v
        if v := env.get("NOTEBOOKOS_CAPACITY_IMAGE"):
            kw["image"] = v
        # The same pool selection as replica pods: a request must land where the replica would.
        if v := env.get("NOTEBOOKOS_NODE_SELECTOR"):
            kw["node_selector"] = {
                labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE,
                **_parse_selector("NOTEBOOKOS_NODE_SELECTOR", v),
            }
        if v := env.get("NOTEBOOKOS_EXTRA_TOLERATIONS"):
            kw["extra_tolerations"] = tuple(_parse_json_list("NOTEBOOKOS_EXTRA_TOLERATIONS", v))
        return cls(**kw)


def pod_name(kernel: str, index: int) -> str:
    """Deterministic, so a create repeated after an operator restart finds the pod."""
    return f"{kernel}-capacity-{index}"


def selector(kernel: str | None = None) -> str:
    """Label selector of the capacity requests of one kernel, or of all of them."""
    terms = {labels.CAPACITY_REQUEST_LABEL: labels.CAPACITY_REQUEST_VALUE}
    if kernel is not None:
        terms[labels.KERNEL_LABEL] = kernel
    return ",".join(f"{k}={v}" for k, v in terms.items())


def allowed(wanted: int, of_kernel: int, in_cluster: int, cfg: CapacityConfig) -> int:
    """How many more requests a kernel that wants `wanted` in all may create now, within both bounds."""
    return max(0, min(min(wanted, cfg.max_per_kernel) - of_kernel, cfg.max_per_cluster - in_cluster))


def priority_class(cfg: CapacityConfig) -> Manifest:
    """The PriorityClass of capacity requests (also rendered by the chart, from the same values)."""
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": cfg.priority_class, "labels": {"app.kubernetes.io/managed-by": labels.MANAGED_BY}},
        "value": cfg.priority,
        "globalDefault": False,
        # A capacity request waits for a new node; it never evicts anything to get one.
        "preemptionPolicy": "Never",
        "description": "NotebookOS capacity requests: autoscalers add nodes for them; every real pod preempts them.",
    }


def capacity_pod(kernel: NotebookKernel, owner: Manifest, index: int, cfg: CapacityConfig) -> Manifest:
    """One capacity request of `kernel`: a pause pod asking for a whole GPU-pool node.

    Replica pods request no nvidia.com/gpu, so to a scheduler the GPUs of a node full of replicas
    look free: the request keeps off every node with a NotebookOS replica or another request on it
    (required pod anti-affinity by hostname, which cluster-autoscaler simulates and Karpenter
    honours; Karpenter refuses node affinity on the hostname label), so only a new node fits."""
    kname = kernel.metadata.name
    if not kname:
        raise ValueError("the NotebookKernel has no metadata.name")
    gpus = {labels.GPU_RESOURCE: str(cfg.gpus_per_node)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(kname, index),
            "namespace": kernel.metadata.namespace,
            "labels": {
                **naming.kernel_labels(kname),
                labels.CAPACITY_REQUEST_LABEL: labels.CAPACITY_REQUEST_VALUE,
            },
            "annotations": {SAFE_TO_EVICT_ANNOTATION: "true"},
            "ownerReferences": [owner],
        },
        "spec": {
            # The default scheduler, which both autoscalers simulate; not the NotebookOS scheduler,
            # whose extender autoscalers cannot run.
            "schedulerName": DEFAULT_SCHEDULER,
            # The admission plugin fills priority and preemptionPolicy from the class.
            "priorityClassName": cfg.priority_class,
            "nodeSelector": dict(cfg.node_selector),
            "affinity": {"podAntiAffinity": _apart()},
            "tolerations": [
                {
                    "key": labels.GPU_TAINT_KEY,
                    "operator": "Equal",
                    "value": labels.GPU_TAINT_VALUE,
                    "effect": labels.GPU_TAINT_EFFECT,
                },
                *(dict(t) for t in cfg.extra_tolerations),
            ],
            "containers": [
                {
                    "name": CONTAINER_NAME,
                    "image": cfg.image,
                    # An extended resource: limits must equal requests.
                    "resources": {"requests": dict(gpus), "limits": dict(gpus)},
                    "securityContext": _container_security(),
                }
            ],
            "securityContext": _pod_security(),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            # Preempted or removed at once: nothing runs in it.
            "terminationGracePeriodSeconds": 0,
            "restartPolicy": "Always",
        },
    }


def _apart() -> Manifest:
    def away_from(match: dict[str, str]) -> Manifest:
        return {"labelSelector": {"matchLabels": match}, "topologyKey": "kubernetes.io/hostname"}

    return {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            away_from({labels.COMPONENT_LABEL: naming.COMPONENT_REPLICA}),
            away_from({labels.CAPACITY_REQUEST_LABEL: labels.CAPACITY_REQUEST_VALUE}),
        ]
    }

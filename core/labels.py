"""Names shared by every component: labels, annotations, taints, the scheduler's name.

One place, so the operator's builders, the extender, the broker, the node agent, the e2e test bed
and the chart cannot disagree.
"""

from __future__ import annotations

DOMAIN = "notebookos.io"

# GPU node pool: nodes NotebookOS may place replicas on carry this label and taint.
GPU_POOL_LABEL = f"{DOMAIN}/gpu-pool"
GPU_POOL_VALUE = "true"
GPU_TAINT_KEY = f"{DOMAIN}/gpu"
GPU_TAINT_VALUE = "present"
GPU_TAINT_EFFECT = "NoSchedule"
GPU_RESOURCE = "nvidia.com/gpu"

# Published by the node agent on each GPU node: JSON list of
# {"index": int, "uuid": str, "memoryMiB": int, "model": str, "healthy": bool}.
GPU_INVENTORY_ANNOTATION = f"{DOMAIN}/gpu-inventory"

# The second scheduler that calls the extender.
SCHEDULER_NAME = "notebookos-scheduler"

# Labels on everything the operator makes.
KERNEL_LABEL = f"{DOMAIN}/kernel"  # value: kernel name
REPLICA_ID_LABEL = f"{DOMAIN}/replica-id"  # value: Raft id
COMPONENT_LABEL = f"{DOMAIN}/component"  # replica | router
REPLICA_GPUS_ANNOTATION = f"{DOMAIN}/gpus"  # per-cell GPUs of the kernel, read by the extender
REPLICA_GPU_MEMORY_ANNOTATION = f"{DOMAIN}/gpu-memory"  # bytes each GPU must have (spec.resources.gpuMemory)
MANAGED_BY = "notebookos-operator"
# A migration, decided by the operator's kernel reconcile and carried out by its replica reconcile:
# on the KernelReplica (the node it moves to, why, since when); the new pod carries the target too.
MIGRATE_TO_ANNOTATION = f"{DOMAIN}/migrate-to"
MIGRATE_REASON_ANNOTATION = f"{DOMAIN}/migrate-reason"
MIGRATE_SINCE_ANNOTATION = f"{DOMAIN}/migrate-since"
# Scale-in chosen by the operator: a GPU node it is emptying for the autoscaler to remove
# (NoSchedule; value: when it was set, in Unix seconds). Drains treat it like a removal taint.
SCALE_IN_TAINT_KEY = f"{DOMAIN}/scale-in"
# What autoscalers may evict: a replica pod while it executes a cell, never; an idle one, always.
KARPENTER_DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
CA_SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"

# Capacity-request pods (operator/capacity.py): placeholders that ask an autoscaler for a GPU node.
# The operator lists them by this label (and KERNEL_LABEL for one kernel's).
CAPACITY_REQUEST_LABEL = f"{DOMAIN}/capacity-request"
CAPACITY_REQUEST_VALUE = "true"
CAPACITY_PRIORITY_CLASS = "notebookos-capacity-request"

# e2e only: pods with this label on kwok nodes are started as local processes by the process runner.
RUNNER_LABEL = f"{DOMAIN}/runner"
RUNNER_VALUE = "process"


# The five Jupyter channels, in the order of their ports: a kernel's (or a router's) ports are a
# block starting at a base port.
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


def channel_ports(base: int) -> dict[str, int]:
    return {name: base + i for i, name in enumerate(CHANNELS)}


def replica_name(kernel: str, replica_id: int) -> str:
    """The KernelReplica of a kernel's Raft member `replica_id` (the operator makes it, the
    replica and the broker write its status)."""
    return f"{kernel}-{replica_id}"

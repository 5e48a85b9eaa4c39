"""Scale-out from the kernel reconcile: when no node can take a kernel's replica (a placement the
scheduler refused, or a move with no target), the operator asks the autoscaler for GPU nodes with
capacity-request pods (capacity.py), and removes them once the demand is met or gone. Level-
triggered: the requests that exist are listed each time, their names are fixed per kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from notebookos.api import ConditionStatus, ConditionType, KernelReplica, NotebookKernel
from notebookos.api.models import parse_quantity
from notebookos.policy.autoscale import scale_out_demand
from notebookos.policy.placement import ReplicaRequest, format_bytes

from .capacity import CapacityConfig
from .status import get_condition


@dataclass(frozen=True)
class Demand:
    nodes: int  # GPU nodes wanted now
    why: str  # for the condition: what needs them
    impossible: str | None = None  # set when no node of the pool's shape can help


def unplaced(replicas: Sequence[KernelReplica]) -> list[int]:
    """The replicas the scheduler refused to place (their Scheduled condition is False)."""
    out = []
    for r in replicas:
        cond = get_condition(r.status.conditions, ConditionType.SCHEDULED)
        if not r.status.node_name and cond is not None and cond.status == ConditionStatus.FALSE:
            out.append(r.spec.replica_id)
    return out


def demand(
    kernel: NotebookKernel,
    replicas: Sequence[KernelReplica],
    no_target: str | None,
    cfg: CapacityConfig,
    pool_gpu_memory: int | None = None,
) -> Demand:
    """How many new GPU nodes the kernel needs (notebookos.policy.autoscale.scale_out_demand): for
    each replica the scheduler cannot place, and for a move that has no node to go to
    (`no_target`: why); two replicas of a kernel never share a node. `pool_gpu_memory`: the most
    memory a GPU of the pool's nodes has (bytes), when known: a kernel that needs more per GPU
    gets no request (a capacity request cannot ask for GPU memory, and a node like the others
    would not help)."""
    gpus = kernel.spec.resources.gpus
    unplaced_ids = unplaced(replicas)
    why = []
    if unplaced_ids:
        why.append(f"replica {', '.join(map(str, unplaced_ids))} cannot be placed")
    if no_target:
        why.append(f"a cell waits for {gpus} GPU(s) and {no_target}")
    name = f"{kernel.metadata.namespace}/{kernel.metadata.name}"
    wanted = [ReplicaRequest(name, gpus, kernel.spec.replicas)] * (len(unplaced_ids) + (1 if no_target else 0))
    d = scale_out_demand(wanted, cfg.gpus_per_node)
    need = kernel.spec.resources.gpu_memory
    need_bytes = int(parse_quantity(need) or 0) if need is not None else 0
    if wanted and pool_gpu_memory is not None and need_bytes > pool_gpu_memory:
        return Demand(
            0,
            "; ".join(why),
            f"the kernel needs {format_bytes(need_bytes)} of memory per GPU and the GPU pool's nodes have at most "
            f"{format_bytes(pool_gpu_memory)}: a node like them would not help",
        )
    if d.impossible:
        return Demand(
            0,
            "; ".join(why),
            f"the kernel needs {gpus} GPUs per cell and the GPU pool's nodes have {cfg.gpus_per_node} "
            "(NOTEBOOKOS_CAPACITY_GPUS_PER_NODE): no new node can provide them",
        )
    return Demand(d.nodes, "; ".join(why))


def held(requests: Sequence[Mapping[str, Any]], move_targets: Iterable[str]) -> list[Mapping[str, Any]]:
    """The capacity requests to keep once the demand is met: those on a node a replica is moving
    to. Until the replica's pod is there, the request is all the node holds; without it the node
    looks empty and the autoscaler takes it back (Karpenter's WhenEmpty consolidation) while the
    replica is on its way."""
    targets = set(move_targets)
    return [p for p in requests if (p.get("spec") or {}).get("nodeName") in targets]

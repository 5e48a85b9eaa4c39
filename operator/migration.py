"""Migration in the operator, decided from what the API server holds (nothing in memory), so an
operator restarted at any step finishes or rolls back the move.

The kernel reconcile decides (`decide`): when the router reports that no replica's node can grant
a cell's GPUs (the GPUUnavailable condition), or a replica's node is being drained, it marks one
KernelReplica with the node it moves to (annotations, see notebookos.labels). The replica reconcile
carries it out (`plan`): a pod of the next incarnation, held to the target node, is made while the
old one runs; once the scheduler has placed it there, the old pod goes, and the new container starts
with the new membership and catches up from its peers (two processes with one Raft id must never
run at once, so the old one stops before the new one starts; the other two keep the majority). Once
it is Ready the marks are removed and the move is counted. A new pod the scheduler cannot place on
the target within the timeout is deleted again: the replica stays where it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notebookos import labels
from notebookos.api import ConditionStatus, ConditionType, KernelReplica, NotebookKernel, ReplicaPhase
from notebookos.extender.cluster_state import (
    ClusterState,
    binding_from_replica,
    node_info_from_object,
    object_key,
    pod_entry_from_object,
)
from notebookos.policy import migration as policy
from notebookos.policy.drain import Resident, drain_plan
from notebookos.policy.placement import NodeView, ReplicaRequest

from . import naming
from .status import PodPlan, get_condition, parse_time, plan_replica_pods, pod_incarnation, pod_is_live

# After a move completes, the router needs a moment to reach the new replica and get its GPUs:
# no second move of the same kernel for an overload before then.
COOLDOWN_SECONDS = 10.0


@dataclass(frozen=True)
class Move:
    """A migration under way: where the replica goes, why, since when."""

    target: str
    reason: str
    since: datetime | None


@dataclass(frozen=True)
class Decision:
    replica: int
    source: str
    target: str
    reason: str


def move_of(obj: Mapping[str, Any]) -> Move | None:
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    target = ann.get(labels.MIGRATE_TO_ANNOTATION)
    if not target:
        return None
    return Move(
        str(target),
        str(ann.get(labels.MIGRATE_REASON_ANNOTATION) or ""),
        parse_time(ann.get(labels.MIGRATE_SINCE_ANNOTATION)),
    )


def move_annotations(d: Decision | None, now: datetime) -> dict[str, str | None]:
    """The merge patch that marks (or, with None, unmarks) a KernelReplica."""
    if d is None:
        keys = (labels.MIGRATE_TO_ANNOTATION, labels.MIGRATE_REASON_ANNOTATION, labels.MIGRATE_SINCE_ANNOTATION)
        return dict.fromkeys(keys)
    return {
        labels.MIGRATE_TO_ANNOTATION: d.target,
        labels.MIGRATE_REASON_ANNOTATION: d.reason[:1024],
        labels.MIGRATE_SINCE_ANNOTATION: now.isoformat().replace("+00:00", "Z"),
    }


def replica_pods_selector() -> str:
    """Every replica pod the operator made (what node_views counts)."""
    return naming.label_selector(
        {"app.kubernetes.io/managed-by": labels.MANAGED_BY, labels.COMPONENT_LABEL: naming.COMPONENT_REPLICA}
    )


def node_views(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], replicas: Iterable[Mapping[str, Any]]
) -> dict[str, NodeView]:
    """GPU nodes as the extender sees them (inventory, what is placed and bound), from API objects."""
    state = ClusterState()
    # A GPU node whose devices all failed stays in view (with 0 GPUs), so a refusal can name it.
    gpu_nodes = [
        n for n in nodes if labels.GPU_INVENTORY_ANNOTATION in ((n.get("metadata") or {}).get("annotations") or {})
    ]
    infos = {str(n["metadata"]["name"]): node_info_from_object(n) for n in nodes}
    named = {str(n["metadata"]["name"]) for n in gpu_nodes}
    state.replace_nodes({k: v for k, v in infos.items() if v.gpus > 0 or k in named})
    state.replace_pods({object_key(p): e for p in pods if (e := pod_entry_from_object(p)) is not None})
    state.replace_bindings({object_key(r): b for r in replicas if (b := binding_from_replica(r)) is not None})
    return {k: v for k, v in state.views(state.node_names()).items() if v is not None}


def draining(node: Mapping[str, Any]) -> bool:
    """Cordoned, or tainted for removal by cluster-autoscaler or Karpenter."""
    return not node_info_from_object(node).schedulable


def member(r: KernelReplica) -> policy.Member:
    """A replica as the migration and drain rules see it."""
    live = r.status.phase == ReplicaPhase.READY
    return policy.Member(r.spec.replica_id, r.status.node_name, live, r.status.gpu_binding is not None)


def decide(
    kernel: NotebookKernel,
    replicas: Sequence[tuple[KernelReplica, Move | None, datetime | None]],
    nodes: Mapping[str, NodeView],
    ratio: float,
    now: datetime,
) -> Decision | str | None:
    """The move to make now (a Decision), why none can be made (a message), or None (nothing to do).
    `replicas`: each with its move under way and when it last completed one."""
    if any(move is not None for _, move, _ in replicas):
        return None  # one member of a kernel in motion at a time
    name = f"{kernel.metadata.namespace}/{kernel.metadata.name}"
    req = ReplicaRequest(name, kernel.spec.resources.gpus, kernel.spec.replicas)
    members = [member(r) for r, _, _ in replicas]
    # Drain: a replica on a node being removed moves off, once the kernel runs no cell.
    for r, _, _ in replicas:
        node = nodes.get(r.status.node_name or "")
        if node is None or node.schedulable:
            continue
        moves = drain_plan(node, [Resident(req, tuple(members))], nodes.values(), ratio)
        if moves:
            _, rid, to = moves[0]
            return Decision(rid, node.name, to, f"node {node.name} is being drained")
        if not policy.movable(members) or any(m.executing for m in members):
            return None  # not now: a cell runs, or a member is not up
        return f"replica {r.spec.replica_id} must leave node {node.name} (being drained), and no node can take it"
    cond = get_condition(kernel.status.conditions, ConditionType.GPU_UNAVAILABLE)
    if cond is None or cond.status != ConditionStatus.TRUE or req.gpus == 0:
        return None
    last = max((t for _, _, t in replicas if t is not None), default=None)
    if last is not None and (now - last).total_seconds() < COOLDOWN_SECONDS:
        return None
    v = policy.victim(members, nodes)
    if v is None:
        return None  # a member is not live, or each one runs a cell: wait
    t = policy.target(nodes.values(), req, ratio)
    if t is None:
        why = policy.why_no_target(nodes.values(), req, ratio)
        return f"no node can take a replica with {req.gpus} GPU(s) free now: {why}"
    source = next(m.node for m in members if m.replica == v) or "?"
    return Decision(v, source, t.name, f"no replica's node had {req.gpus} GPU(s) free ({cond.message})")


def plan(
    status: Any,
    pods: Sequence[Mapping[str, Any]],
    existing: set[str] | None,
    now: datetime,
    move: Move | None,
    timeout: float,
) -> tuple[PodPlan, str | None]:
    """The replica's pods during a move, and the move's state: "started" (make the pod on the
    target), "pending" (made, not placed yet), "placed" (on the target; the old pod goes),
    "failed: why" (roll back), or None (no move)."""
    base = plan_replica_pods(status, pods, existing, now)
    if move is None:
        return base, None
    live = sorted((p for p in pods if pod_is_live(p, existing)), key=pod_incarnation)
    if not live:
        if base.create_incarnation is None:
            return base, None  # backing off a crash loop
        # Lost during the move: its replacement goes to the target.
        return PodPlan(None, base.delete, base.create_incarnation, base.lost, create_on=move.target), "started"
    newest = live[-1]
    pinned = ((newest.get("metadata") or {}).get("annotations") or {}).get(labels.MIGRATE_TO_ANNOTATION) == move.target
    node = (newest.get("spec") or {}).get("nodeName")
    if node == move.target:
        return base, "placed"
    if not pinned:
        return PodPlan(
            newest, base.delete, base.create_incarnation or _next(status, pods), None, create_on=move.target
        ), "started"
    if len(live) < 2:
        return base, "pending"  # the old pod is gone already: the new one is all there is
    older, dead = live[-2], [n for n in base.delete if n != live[-2]["metadata"]["name"]]
    started = parse_time((newest.get("metadata") or {}).get("creationTimestamp")) or move.since or now
    if (now - started).total_seconds() > timeout:
        why = _unplaced_reason(newest)
        return PodPlan(older, (*dead, newest["metadata"]["name"]), None, None), f"failed: {why}"
    return PodPlan(older, tuple(dead), None, None), "pending"


def _next(status: Any, pods: Sequence[Mapping[str, Any]]) -> int:
    return max([status.incarnation, *(pod_incarnation(p) for p in pods)]) + 1


def _unplaced_reason(pod: Mapping[str, Any]) -> str:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return str(c.get("message") or c.get("reason") or "the scheduler did not place it")
    return "the scheduler did not place it in time"

"""Pure status computation: what the cluster says (pods, replicas, Services) in, status models and
the events worth telling a user out. Everything is derived from objects in the API server and the
previous status, never from operator memory, so a restarted operator computes the same thing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from notebookos.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    ConnectionInfo,
    KernelPhase,
    KernelReplica,
    KernelReplicaStatus,
    NotebookKernel,
    NotebookKernelStatus,
    ReplicaPhase,
)

from . import naming
from .config import OperatorConfig

TERMINAL_POD_PHASES = ("Failed", "Succeeded")


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the object whose status changed."""

    type: str  # Normal | Warning
    reason: str
    message: str


# ------------------------------------------------------------------------------------------------
# Conditions
# ------------------------------------------------------------------------------------------------


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Replace the condition of this type; lastTransitionTime moves only when status changes."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    return [*(c for c in conditions if c.type != type_), new]


def get_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def pod_condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


# ------------------------------------------------------------------------------------------------
# Pods
# ------------------------------------------------------------------------------------------------


def pod_incarnation(pod: Mapping[str, Any]) -> int:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(naming.INCARNATION_LABEL, "0")
    return int(value) if str(value).isdigit() else 0


def pod_is_live(pod: Mapping[str, Any], existing_nodes: set[str] | None = None) -> bool:
    """A pod that is (or can still become) the replica: not deleted, not finished, its node exists."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") in TERMINAL_POD_PHASES:
        return False
    node = (pod.get("spec") or {}).get("nodeName")
    return not (existing_nodes is not None and node and node not in existing_nodes)


def loss_reason(pod: Mapping[str, Any] | None, existing_nodes: set[str] | None = None) -> str:
    """Why a replica's pod no longer counts, in words for an event."""
    if pod is None:
        return "its pod was deleted"
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    if existing_nodes is not None and node and node not in existing_nodes:
        return f"node {node} of pod {name} is gone"
    if status.get("phase") in TERMINAL_POD_PHASES:
        why = status.get("reason") or status.get("message") or "its container exited"
        return f"pod {name} {status['phase'].lower()} ({why})"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return f"pod {name} is being deleted"
    return f"pod {name} is not usable"


# A pod that fails this soon after it was made is crash-looping: its replacement waits, doubling
# with each incarnation, so a broken image or configuration does not churn pods as fast as it can.
FAST_FAILURE_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0


@dataclass(frozen=True)
class PodPlan:
    """What to do with a replica's pods: which one is current, which to delete, whether to create."""

    current: Mapping[str, Any] | None
    delete: tuple[str, ...]
    create_incarnation: int | None
    lost: str | None  # why a replacement is made, when it is one
    backoff: float = 0.0  # seconds until the replacement may be made (the failed pod is kept till then)
    failed: Mapping[str, Any] | None = None  # the crash-looping pod, while backing off
    create_on: str | None = None  # the node the new pod is held to (a migration, see migration.py)


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _failed_at(pod: Mapping[str, Any]) -> datetime | None:
    """When the pod failed: its container's finish time, else its last condition change (a time
    taken from the pod, never from the clock, so that the backoff has an end)."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        finished = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if finished is not None:
            return finished
    changes = [t for c in status.get("conditions") or [] if (t := parse_time(c.get("lastTransitionTime")))]
    return max(changes, default=None)


def replacement_backoff(pod: Mapping[str, Any], incarnation: int, now: datetime) -> float:
    """Seconds to wait before replacing this dead pod: none unless it failed soon after creation."""
    if (pod.get("status") or {}).get("phase") != "Failed":
        return 0.0
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    failed = _failed_at(pod) or created
    if created is None or failed is None or (failed - created).total_seconds() >= FAST_FAILURE_SECONDS:
        return 0.0
    delay = min(BACKOFF_BASE_SECONDS * 2 ** min(max(incarnation - 1, 0), 10), BACKOFF_MAX_SECONDS)
    return max(0.0, (failed - now).total_seconds() + delay)


def plan_replica_pods(
    status: KernelReplicaStatus,
    pods: Sequence[Mapping[str, Any]],
    existing_nodes: set[str] | None,
    now: datetime | None = None,
) -> PodPlan:
    """Keep the newest live pod; delete dead and duplicate ones; make a new incarnation if none lives.

    The next incarnation is one above any seen (in status or among the pods), so a pod created just
    before an operator restart is found, not made twice, and a replacement never reuses a name.
    A pod that failed right after it started is replaced only after a backoff (given `now`).
    """
    live = sorted((p for p in pods if pod_is_live(p, existing_nodes)), key=pod_incarnation)
    dead = [p for p in pods if not pod_is_live(p, existing_nodes)]
    current = live[-1] if live else None
    delete = [p["metadata"]["name"] for p in live[:-1]]
    seen = max([status.incarnation, *(pod_incarnation(p) for p in pods)])
    newest_dead = max(dead, key=pod_incarnation, default=None)
    if current is None and newest_dead is not None and now is not None:
        wait = replacement_backoff(newest_dead, pod_incarnation(newest_dead), now)
        if wait > 0:
            return PodPlan(None, tuple(delete), None, None, wait, newest_dead)
    # Dead pods are deleted unless already on their way out; pods on vanished nodes are removed
    # even if marked deleted, since no kubelet will ever finish that.
    for p in dead:
        node = (p.get("spec") or {}).get("nodeName")
        gone = existing_nodes is not None and node and node not in existing_nodes
        if gone or not p["metadata"].get("deletionTimestamp"):
            delete.append(p["metadata"]["name"])
    if current is not None:
        # Made by an earlier try of this reconcile whose status write conflicted: the reason the
        # recorded pod went still goes with the replacement's event.
        old = next((p for p in pods if p["metadata"]["name"] == status.pod_name), None)
        replaced = pod_incarnation(current) > status.incarnation > 0 and not (old and pod_is_live(old, existing_nodes))
        return PodPlan(current, tuple(delete), None, loss_reason(old, existing_nodes) if replaced else None)
    lost = loss_reason(newest_dead, existing_nodes) if seen > 0 else None
    return PodPlan(None, tuple(delete), seen + 1, lost)


def replica_status(
    replica: KernelReplica,
    pod: Mapping[str, Any] | None,
    incarnation: int,
    now: datetime,
) -> KernelReplicaStatus:
    """The replica's status from its current pod. Raft, GPU binding and heartbeat are the replica's
    and the broker's to write; they are carried over untouched."""
    old = replica.status
    gen = replica.metadata.generation
    conds = list(old.conditions)
    if pod is None:
        phase = ReplicaPhase.PENDING
        conds = set_condition(
            conds, ConditionType.SCHEDULED, ConditionStatus.UNKNOWN, "NoPod", "the pod is being created", now, gen
        )
        conds = set_condition(conds, ConditionType.READY, ConditionStatus.FALSE, "NoPod", "no pod", now, gen)
        return old.model_copy(
            update={
                "phase": phase,
                "pod_name": None,
                "node_name": None,
                "pod_ip": None,
                "incarnation": incarnation,
                "conditions": conds,
                "observed_generation": gen,
            }
        )
    meta, spec, pstatus = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    node = spec.get("nodeName")
    pod_phase = pstatus.get("phase") or "Pending"
    scheduled = pod_condition(pod, "PodScheduled")
    ready = pod_condition(pod, "Ready")
    if node:
        conds = set_condition(
            conds, ConditionType.SCHEDULED, ConditionStatus.TRUE, "Scheduled", f"on node {node}", now, gen
        )
    elif scheduled is not None and scheduled.get("status") == "False":
        conds = set_condition(
            conds,
            ConditionType.SCHEDULED,
            ConditionStatus.FALSE,
            scheduled.get("reason") or "Unschedulable",
            scheduled.get("message") or "the scheduler found no node",
            now,
            gen,
        )
    else:
        conds = set_condition(
            conds, ConditionType.SCHEDULED, ConditionStatus.UNKNOWN, "Pending", "waiting for the scheduler", now, gen
        )
    is_ready = pod_phase == "Running" and ready is not None and ready.get("status") == "True"
    if pod_phase in TERMINAL_POD_PHASES:
        phase = ReplicaPhase.FAILED
    elif is_ready:
        phase = ReplicaPhase.READY
    elif pod_phase == "Running":
        phase = ReplicaPhase.RUNNING
    elif node:
        phase = ReplicaPhase.SCHEDULED
    else:
        phase = ReplicaPhase.PENDING
    if is_ready:
        conds = set_condition(
            conds, ConditionType.READY, ConditionStatus.TRUE, "PodReady", "the pod is ready", now, gen
        )
    else:
        conds = set_condition(
            conds,
            ConditionType.READY,
            ConditionStatus.FALSE,
            (ready or {}).get("reason") or f"Pod{pod_phase}",
            (ready or {}).get("message") or f"pod {meta.get('name')} is {pod_phase}",
            now,
            gen,
        )
    return old.model_copy(
        update={
            "phase": phase,
            "pod_name": meta.get("name"),
            "node_name": node,
            "pod_ip": pstatus.get("podIP"),
            "incarnation": incarnation,
            "conditions": conds,
            "observed_generation": gen,
        }
    )


def backoff_status(
    replica: KernelReplica, failed: Mapping[str, Any], incarnation: int, wait: float, now: datetime
) -> KernelReplicaStatus:
    """The replica while its crash-looping pod waits to be replaced."""
    base = replica_status(replica, failed, incarnation, now)
    name = (failed.get("metadata") or {}).get("name")
    conds = set_condition(
        base.conditions,
        ConditionType.READY,
        ConditionStatus.FALSE,
        "BackOff",
        f"{loss_reason(failed)} soon after it started; the next pod is made at "
        f"{(now + timedelta(seconds=round(wait))).isoformat()}",
        now,
        replica.metadata.generation,
    )
    return base.model_copy(update={"conditions": conds, "pod_name": name})


def replacement_event(
    replica: str, old: KernelReplicaStatus, new: KernelReplicaStatus, lost: str | None
) -> Event | None:
    """The replacement of a replica's pod, naming the replica and the cause; posted on the replica
    and on its kernel (where `kubectl describe nbk` shows it). From the incarnation, not the moment
    of creation: a write retried after a conflict (or after a restart) reports it exactly once."""
    if not new.incarnation > old.incarnation > 0:
        return None
    why = lost or f"pod {old.pod_name or '?'} was lost"
    where = f" on node {new.node_name}" if new.node_name else ""
    return Event(
        "Warning", "ReplicaReplaced", f"replica {replica}: {why}; replaced by pod {new.pod_name or '?'}{where}"
    )


def replica_events(
    old: KernelReplicaStatus, new: KernelReplicaStatus, lost: str | None, replica: str = "?"
) -> list[Event]:
    events: list[Event] = []
    replaced = replacement_event(replica, old, new, lost)
    if replaced is not None:
        events.append(replaced)
    if new.node_name and new.node_name != old.node_name:
        events.append(Event("Normal", "Scheduled", f"pod {new.pod_name} placed on node {new.node_name}"))
    old_s, new_s = get_condition(old.conditions, "Scheduled"), get_condition(new.conditions, "Scheduled")
    changed = old_s is None or new_s is None or (old_s.status, old_s.message) != (new_s.status, new_s.message)
    if new_s is not None and new_s.status == ConditionStatus.FALSE and changed:
        events.append(Event("Warning", new_s.reason or "Unschedulable", new_s.message))
    if new.phase != old.phase and new.phase in (ReplicaPhase.READY, ReplicaPhase.FAILED):
        kind = "Normal" if new.phase == ReplicaPhase.READY else "Warning"
        events.append(Event(kind, f"Replica{new.phase}", f"replica pod {new.pod_name} is {new.phase}"))
    return events


# ------------------------------------------------------------------------------------------------
# Kernel
# ------------------------------------------------------------------------------------------------


def connection_info(kernel_name: str, service: Mapping[str, Any] | None, cfg: OperatorConfig) -> ConnectionInfo | None:
    if service is None:
        return None
    ns = (service.get("metadata") or {}).get("namespace")
    ip = (service.get("spec") or {}).get("clusterIP")
    host = ip if ip and ip != "None" else f"{naming.service_name(kernel_name)}.{ns}.svc"
    return ConnectionInfo(
        service_name=naming.service_name(kernel_name),
        host=host,
        secret_name=naming.secret_name(kernel_name),
        ports=cfg.router_ports,
    )


def _pod_ready(pod: Mapping[str, Any] | None) -> bool:
    if pod is None or (pod.get("status") or {}).get("phase") != "Running":
        return False
    cond = pod_condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def kernel_status(
    kernel: NotebookKernel,
    replicas: Sequence[KernelReplica],
    router_pod: Mapping[str, Any] | None,
    service: Mapping[str, Any] | None,
    cfg: OperatorConfig,
    now: datetime,
) -> NotebookKernelStatus:
    """The kernel's status from its replicas, router and Service. Fields others own (executor,
    cells, last activity, GPUUnavailable) are carried over; migrations are the replicas' sum."""
    old = kernel.status
    gen = kernel.metadata.generation
    name = kernel.metadata.name or ""
    want = kernel.spec.replicas
    by_id = {r.spec.replica_id: r for r in replicas if not (r.metadata.model_extra or {}).get("deletionTimestamp")}
    ready = [rid for rid, r in by_id.items() if r.status.phase == ReplicaPhase.READY]
    router_ready = _pod_ready(router_pod)
    conds = list(old.conditions)

    # Scheduled: every replica has a node; otherwise the first reason the scheduler gave.
    unscheduled: list[tuple[int, Condition | None]] = []
    for rid in range(1, want + 1):
        r = by_id.get(rid)
        if r is None or not r.status.node_name:
            unscheduled.append((rid, get_condition(r.status.conditions, "Scheduled") if r else None))
    refused = [(rid, c) for rid, c in unscheduled if c is not None and c.status == ConditionStatus.FALSE]
    if not unscheduled:
        nodes = ", ".join(by_id[rid].status.node_name or "" for rid in sorted(by_id))
        conds = set_condition(
            conds, "Scheduled", ConditionStatus.TRUE, "AllReplicasScheduled", f"replicas on nodes {nodes}", now, gen
        )
    elif refused:
        rid, cond = refused[0]
        assert cond is not None
        ids = ", ".join(str(r) for r, _ in refused)
        conds = set_condition(
            conds,
            "Scheduled",
            ConditionStatus.FALSE,
            cond.reason or "Unschedulable",
            f"{len(refused)} of {want} replicas cannot be placed (replica {ids}): {cond.message}",
            now,
            gen,
        )
    else:
        ids = ", ".join(str(r) for r, _ in unscheduled)
        conds = set_condition(
            conds, "Scheduled", ConditionStatus.UNKNOWN, "Scheduling", f"waiting to place replica {ids}", now, gen
        )

    all_ready = len(ready) == want and router_ready
    was_serving = old.phase in (KernelPhase.READY, KernelPhase.DEGRADED)
    not_ready = sorted(set(range(1, want + 1)) - set(ready))
    missing = ", ".join(
        f"replica {rid} is {by_id[rid].status.phase if rid in by_id else 'missing'}" for rid in not_ready
    )
    if not router_ready:
        missing = ", ".join(filter(None, [missing, "the router is not ready"]))
    if all_ready:
        phase = KernelPhase.READY
        conds = set_condition(
            conds, "Ready", ConditionStatus.TRUE, "AllReplicasReady", f"{want} of {want} replicas ready", now, gen
        )
        conds = set_condition(conds, "Degraded", ConditionStatus.FALSE, "AllReplicasReady", "", now, gen)
    else:
        if was_serving:
            phase = KernelPhase.DEGRADED
        elif unscheduled:
            phase = KernelPhase.PENDING
        else:
            phase = KernelPhase.STARTING
        reason = "ReplicasNotReady" if not_ready else "RouterNotReady"
        conds = set_condition(
            conds, "Ready", ConditionStatus.FALSE, reason, f"{len(ready)} of {want} replicas ready; {missing}", now, gen
        )
        if was_serving:
            quorum = len(ready) >= want // 2 + 1
            conds = set_condition(
                conds,
                "Degraded",
                ConditionStatus.TRUE,
                "ReplicaLost" if quorum else "NoQuorum",
                f"{len(ready)} of {want} replicas ready ({'a majority remains' if quorum else 'no Raft majority'}); "
                + missing,
                now,
                gen,
            )
        else:
            conds = set_condition(conds, "Degraded", ConditionStatus.FALSE, "NotStarted", "", now, gen)

    migrations = max(old.migrations, sum(r.status.migrations for r in by_id.values()))
    # A replica in motion has a new pod that is no replacement (its move is counted when it ends).
    moving = sum(1 for r in by_id.values() if r.status.phase == ReplicaPhase.MIGRATING)
    replacements = sum(max(0, r.status.incarnation - 1) for r in by_id.values()) - migrations - moving
    return old.model_copy(
        update={
            "phase": phase,
            "conditions": conds,
            "replicas": len(by_id),
            "ready_replicas": len(ready),
            "ready": f"{len(ready)}/{want}",
            # Each replica's total only grows (the broker adds each released grant); a replica object
            # made anew starts at 0 again, so the kernel's total never goes back.
            "gpu_seconds_bound": max(
                old.gpu_seconds_bound, round(sum(r.status.gpu_seconds_bound for r in by_id.values()), 3)
            ),
            "connection": connection_info(name, service, cfg) or old.connection,
            "replacements": max(old.replacements, replacements),
            "migrations": migrations,
            "observed_generation": gen,
        }
    )


def invalid_kernel_status(kernel: NotebookKernel, problem: str, now: datetime) -> NotebookKernelStatus:
    """A kernel the operator cannot make (e.g. a name too long for its Services)."""
    gen = kernel.metadata.generation
    conds = set_condition(kernel.status.conditions, "Ready", ConditionStatus.FALSE, "InvalidKernel", problem, now, gen)
    return kernel.status.model_copy(
        update={"phase": KernelPhase.FAILED, "conditions": conds, "observed_generation": gen}
    )


def kernel_events(old: NotebookKernelStatus, new: NotebookKernelStatus) -> list[Event]:
    """Transitions a user would want to see, from the old and new status alone."""
    events: list[Event] = []
    old_s, new_s = get_condition(old.conditions, "Scheduled"), get_condition(new.conditions, "Scheduled")
    if new_s is not None and (old_s is None or old_s.status != new_s.status or old_s.message != new_s.message):
        if new_s.status == ConditionStatus.FALSE:
            events.append(Event("Warning", new_s.reason or "Unschedulable", new_s.message))
        elif new_s.status == ConditionStatus.TRUE and (old_s is None or old_s.status != ConditionStatus.TRUE):
            events.append(Event("Normal", "Scheduled", new_s.message))
    if new.phase != old.phase:
        ready = get_condition(new.conditions, "Ready")
        degraded = get_condition(new.conditions, "Degraded")
        if new.phase == KernelPhase.READY:
            events.append(Event("Normal", "Ready", ready.message if ready else "kernel ready"))
        elif new.phase == KernelPhase.DEGRADED:
            events.append(Event("Warning", "Degraded", degraded.message if degraded else "kernel degraded"))
        elif new.phase == KernelPhase.FAILED:
            events.append(Event("Warning", "Failed", ready.message if ready else "kernel failed"))
        elif new.phase == KernelPhase.STARTING:
            events.append(Event("Normal", "Starting", "all replicas placed; waiting for them to be ready"))
    return events

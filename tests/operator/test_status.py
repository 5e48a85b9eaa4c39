"""Status computation and the events it implies: from what the cluster says, nothing remembered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from notebookos.api import (
    ConditionStatus,
    KernelPhase,
    KernelReplica,
    KernelReplicaStatus,
    NotebookKernel,
    ReplicaPhase,
)
from notebookos.operator import status as st
from notebookos.operator.config import OperatorConfig
from tests.operator.factories import kernel_obj, pod_obj, replica_model, replica_obj

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
UNSCHEDULABLE = {
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.",
}


def cond(conds: list, type_: str):  # type: ignore[no-untyped-def]
    return st.get_condition(conds, type_)


# ------------------------------------------------------------------------------------------------ conditions


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    c1 = st.set_condition([], "Ready", ConditionStatus.FALSE, "A", "a", T0, 1)
    c2 = st.set_condition(c1, "Ready", ConditionStatus.FALSE, "B", "b", T1, 2)
    assert len(c2) == 1 and c2[0].reason == "B" and c2[0].last_transition_time == T0
    assert c2[0].observed_generation == 2
    c3 = st.set_condition(c2, "Ready", ConditionStatus.TRUE, "C", "c", T1, 2)
    assert c3[0].last_transition_time == T1
    c4 = st.set_condition(c3, "Scheduled", ConditionStatus.TRUE, "D", "", T1, 2)
    assert [c.type for c in c4] == ["Ready", "Scheduled"]


# ------------------------------------------------------------------------------------------------ pods


def test_live_pods() -> None:
    assert st.pod_is_live(pod_obj("p"))
    assert st.pod_is_live(pod_obj("p", phase="Pending", node=None))
    assert not st.pod_is_live(pod_obj("p", phase="Failed"))
    assert not st.pod_is_live(pod_obj("p", phase="Succeeded"))
    assert not st.pod_is_live(pod_obj("p", deleting=True))
    assert not st.pod_is_live(pod_obj("p", node="gone"), existing_nodes={"n1"})
    assert st.pod_is_live(pod_obj("p", node="n1"), existing_nodes={"n1"})


def test_plan_keeps_the_newest_live_pod_and_deletes_the_rest() -> None:
    pods = [pod_obj("a", 1), pod_obj("b", 3), pod_obj("c", 2), pod_obj("d", 4, phase="Failed")]
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=3), pods, {"n1"})
    assert plan.current is not None and plan.current["metadata"]["name"] == "b"
    assert sorted(plan.delete) == ["a", "c", "d"]
    assert plan.create_incarnation is None and plan.lost is None


def test_plan_first_pod_is_incarnation_one_and_not_a_replacement() -> None:
    plan = st.plan_replica_pods(KernelReplicaStatus(), [], set())
    assert plan == st.PodPlan(None, (), 1, None)


def test_plan_replaces_a_deleted_pod_with_the_next_incarnation() -> None:
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=2, pod_name="k-1-i2"), [], set())
    assert plan.create_incarnation == 3 and plan.lost == "its pod was deleted"


def test_plan_replaces_a_failed_pod_and_deletes_it() -> None:
    failed = pod_obj("k-1-i1", 1, phase="Failed")
    failed["status"]["reason"] = "Error"
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=1), [failed], {"n1"})
    assert plan.delete == ("k-1-i1",) and plan.create_incarnation == 2
    assert plan.lost == "pod k-1-i1 failed (Error)"


def test_plan_replaces_a_pod_whose_node_is_gone_and_deletes_it_even_if_terminating() -> None:
    stuck = pod_obj("k-1-i1", 1, node="n9", deleting=True)
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=1), [stuck], {"n1"})
    assert plan.delete == ("k-1-i1",) and plan.create_incarnation == 2
    assert plan.lost == "node n9 of pod k-1-i1 is gone"


def test_plan_leaves_a_terminating_pod_to_finish() -> None:
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=1), [pod_obj("a", 1, deleting=True)], {"n1"})
    assert plan.delete == () and plan.create_incarnation == 2


def test_plan_after_restart_adopts_a_pod_the_status_does_not_know_yet() -> None:
    # The operator made incarnation 3 and stopped before writing status: no fourth pod is made.
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=2), [pod_obj("k-1-i3", 3)], {"n1"})
    assert plan.current is not None and plan.current["metadata"]["name"] == "k-1-i3"
    assert plan.create_incarnation is None


def test_plan_after_a_conflicting_write_still_says_why_the_pod_was_replaced() -> None:
    # The try that made k-1-i2 lost its status write to a conflict; the next try finds i2 made.
    status = KernelReplicaStatus(incarnation=1, pod_name="k-1-i1")
    plan = st.plan_replica_pods(status, [pod_obj("k-1-i2", 2)], {"n1"})
    assert plan.create_incarnation is None and plan.lost == "its pod was deleted"
    failed = pod_obj("k-1-i1", 1, phase="Failed")
    plan = st.plan_replica_pods(status, [failed, pod_obj("k-1-i2", 2)], {"n1"})
    assert plan.lost is not None and plan.lost.startswith("pod k-1-i1 failed")


@given(
    hs.integers(0, 5),
    hs.lists(
        hs.tuples(hs.integers(1, 8), hs.sampled_from(["Running", "Pending", "Failed"]), hs.booleans(), hs.booleans()),
        max_size=6,
    ),
)
def test_plan_invariants(status_inc: int, specs: list[tuple[int, str, bool, bool]]) -> None:
    pods = [
        pod_obj(f"p{i}", inc, phase=phase, deleting=deleting, node="n1" if on_node else "gone")
        for i, (inc, phase, deleting, on_node) in enumerate(specs)
    ]
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=status_inc), pods, {"n1"})
    live = [p for p in pods if st.pod_is_live(p, {"n1"})]
    # Exactly one of: keep a live pod, or create a new one with a never-used incarnation.
    assert (plan.current is None) == (plan.create_incarnation is not None)
    if plan.create_incarnation is not None:
        assert not live
        assert plan.create_incarnation > max([status_inc, *(st.pod_incarnation(p) for p in pods)])
    else:
        assert plan.current is not None
        assert st.pod_incarnation(plan.current) == max(st.pod_incarnation(p) for p in live)
        assert plan.current["metadata"]["name"] not in plan.delete
    # Every other live pod is deleted: a replica never runs twice.
    kept = {plan.current["metadata"]["name"]} if plan.current else set()
    assert {p["metadata"]["name"] for p in live} - kept <= set(plan.delete)


# ------------------------------------------------------------------------------------------------ replica status


def test_replica_status_ready_pod() -> None:
    r = replica_model(raft={"role": "Leader", "term": 3}, gpuBinding=None)
    s = st.replica_status(r, pod_obj("k-1-i1", ip="10.0.0.7"), 1, T0)
    assert s.phase == ReplicaPhase.READY
    assert (s.pod_name, s.node_name, s.pod_ip, s.incarnation) == ("k-1-i1", "n1", "10.0.0.7", 1)
    assert cond(s.conditions, "Scheduled").status == ConditionStatus.TRUE
    assert cond(s.conditions, "Ready").status == ConditionStatus.TRUE
    assert s.raft is not None and s.raft.role == "Leader" and s.raft.term == 3  # the replica's own report stays
    assert s.observed_generation == 1


@pytest.mark.parametrize(
    ("pod", "phase"),
    [
        (pod_obj("p", phase="Pending", node=None, ip=None), ReplicaPhase.PENDING),
        (pod_obj("p", phase="Pending", node="n1", ip=None), ReplicaPhase.SCHEDULED),
        (pod_obj("p", ready=False), ReplicaPhase.RUNNING),
        (pod_obj("p", phase="Failed"), ReplicaPhase.FAILED),
    ],
)
def test_replica_phase_from_pod(pod: dict, phase: ReplicaPhase) -> None:
    assert st.replica_status(replica_model(), pod, 1, T0).phase == phase


def test_unschedulable_pod_gives_the_schedulers_reason() -> None:
    pod = pod_obj("p", phase="Pending", node=None, ip=None, scheduled=UNSCHEDULABLE)
    s = st.replica_status(replica_model(), pod, 1, T0)
    c = cond(s.conditions, "Scheduled")
    assert (c.status, c.reason, c.message) == (ConditionStatus.FALSE, "Unschedulable", UNSCHEDULABLE["message"])


def test_replica_without_pod_keeps_the_gpu_binding() -> None:
    binding = {"node": "n1", "devices": ["GPU-1"], "executionId": "e", "since": "2026-01-01T00:00:00Z"}
    r = replica_model(podName="old", nodeName="n1", podIP="1.2.3.4", incarnation=2, gpuBinding=binding)
    s = st.replica_status(r, None, 3, T0)
    assert s.phase == ReplicaPhase.PENDING and s.pod_name is None and s.node_name is None and s.pod_ip is None
    assert s.incarnation == 3
    assert s.gpu_binding is not None and s.gpu_binding.devices == ["GPU-1"]


def test_replica_events() -> None:
    old = KernelReplicaStatus()
    new = st.replica_status(replica_model(), pod_obj("k-1-i1"), 1, T0)
    reasons = [e.reason for e in st.replica_events(old, new, None)]
    assert reasons == ["Scheduled", "ReplicaReady"]
    # A replacement is reported once, from the incarnation, with the cause when known.
    replaced = new.model_copy(update={"incarnation": 2, "pod_name": "k-1-i2", "node_name": "n3"})
    events = st.replica_events(new, replaced, "its pod was deleted", "k-1")
    want = st.Event("Warning", "ReplicaReplaced", "replica k-1: its pod was deleted; replaced by pod k-1-i2 on node n3")
    assert events[0] == want
    # The same Event goes to the kernel, where `kubectl describe nbk` shows which replica and why.
    assert st.replacement_event("k-1", new, replaced, "its pod was deleted") == want
    assert st.replacement_event("k-1", replaced, replaced, None) is None
    assert st.replica_events(replaced, replaced, None) == []
    unsched = st.replica_status(
        replica_model(), pod_obj("p", phase="Pending", node=None, ip=None, scheduled=UNSCHEDULABLE), 1, T0
    )
    assert [e.reason for e in st.replica_events(old, unsched, None)] == ["Unschedulable"]
    assert st.replica_events(unsched, unsched, None) == []


# ------------------------------------------------------------------------------------------------ kernel status


def ready_replica(rid: int, node: str | None = None, inc: int = 1) -> KernelReplica:
    r = KernelReplica.model_validate(replica_obj(rid=rid))
    return r.model_copy(
        update={"status": st.replica_status(r, pod_obj(f"k-{rid}", inc, node=node or f"n{rid}"), inc, T0)}
    )


def pending_replica(rid: int) -> KernelReplica:
    r = KernelReplica.model_validate(replica_obj(rid=rid))
    pod = pod_obj(f"k-{rid}", phase="Pending", node=None, ip=None, scheduled=UNSCHEDULABLE)
    return r.model_copy(update={"status": st.replica_status(r, pod, 1, T0)})


ROUTER = pod_obj("k-router")
SERVICE = {"metadata": {"name": "k", "namespace": "ns"}, "spec": {"clusterIP": "10.0.0.9"}}


def compute(kernel: NotebookKernel, replicas: list[KernelReplica], router: dict | None = ROUTER):  # type: ignore[no-untyped-def]
    return st.kernel_status(kernel, replicas, router, SERVICE, OperatorConfig(), T1)


def test_kernel_ready_with_connection_info() -> None:
    s = compute(NotebookKernel.model_validate(kernel_obj()), [ready_replica(i) for i in (1, 2, 3)])
    assert s.phase == KernelPhase.READY and s.replicas == 3 and s.ready_replicas == 3
    assert cond(s.conditions, "Scheduled").status == ConditionStatus.TRUE
    assert cond(s.conditions, "Scheduled").message == "replicas on nodes n1, n2, n3"
    assert cond(s.conditions, "Ready").status == ConditionStatus.TRUE
    assert cond(s.conditions, "Degraded").status == ConditionStatus.FALSE
    assert s.connection is not None
    assert s.connection.to_wire() == {
        "serviceName": "k",
        "host": "10.0.0.9",
        "transport": "tcp",
        "signatureScheme": "hmac-sha256",
        "secretName": "k-key",
        "ports": {"shell": 5555, "iopub": 5556, "stdin": 5557, "control": 5558, "hb": 5559},
    }
    assert s.observed_generation == 1 and s.replacements == 0


def test_kernel_pending_says_which_replica_and_why() -> None:
    s = compute(NotebookKernel.model_validate(kernel_obj()), [ready_replica(1), ready_replica(2), pending_replica(3)])
    assert s.phase == KernelPhase.PENDING and s.ready_replicas == 2
    c = cond(s.conditions, "Scheduled")
    assert c.status == ConditionStatus.FALSE and c.reason == "Unschedulable"
    assert c.message.startswith("1 of 3 replicas cannot be placed (replica 3): 0/2 nodes are available")
    assert cond(s.conditions, "Ready").message == "2 of 3 replicas ready; replica 3 is Pending"
    events = st.kernel_events(NotebookKernel.model_validate(kernel_obj()).status, s)
    assert events == [st.Event("Warning", "Unschedulable", c.message)]


def test_kernel_starting_while_replicas_or_router_come_up() -> None:
    k = NotebookKernel.model_validate(kernel_obj())
    replicas = [ready_replica(1), ready_replica(2), ready_replica(3)]
    assert compute(k, replicas, router=None).phase == KernelPhase.STARTING
    s = compute(k, replicas, router=pod_obj("k-router", ready=False))
    assert s.phase == KernelPhase.STARTING and cond(s.conditions, "Ready").reason == "RouterNotReady"
    assert compute(k, replicas[:2]).phase == KernelPhase.PENDING  # the third is not even made yet
    s = compute(k, replicas[:2])
    assert cond(s.conditions, "Scheduled").status == ConditionStatus.UNKNOWN


def test_kernel_degraded_after_losing_a_replica_then_no_quorum() -> None:
    k = NotebookKernel.model_validate(kernel_obj(phase="Ready"))
    lost = KernelReplica.model_validate(replica_obj(rid=3, incarnation=2))
    s = compute(k, [ready_replica(1), ready_replica(2), lost])
    assert s.phase == KernelPhase.DEGRADED
    d = cond(s.conditions, "Degraded")
    assert d.status == ConditionStatus.TRUE and d.reason == "ReplicaLost" and "a majority remains" in d.message
    assert s.replacements == 1
    events = st.kernel_events(k.status, s)
    # The replacement itself is reported by the replica's reconcile, naming it (test_replica_events).
    assert [(e.type, e.reason) for e in events] == [("Warning", "Degraded")]
    assert s.ready == "2/3"
    s2 = compute(k, [ready_replica(1), lost, KernelReplica.model_validate(replica_obj(rid=2))])
    assert cond(s2.conditions, "Degraded").reason == "NoQuorum"


def test_kernel_status_keeps_fields_owned_by_others() -> None:
    k = NotebookKernel.model_validate(
        kernel_obj(executor="k-2", cells=7, migrations=1, lastActivity="2026-01-01T00:00:00Z")
    )
    k.status.conditions = st.set_condition([], "GPUUnavailable", ConditionStatus.TRUE, "NoGPU", "m", T0, 1)
    s = compute(k, [ready_replica(1), ready_replica(2, inc=2), ready_replica(3, inc=2)])
    assert (s.executor, s.cells, s.migrations) == ("k-2", 7, 1)
    assert s.last_activity == T0
    assert cond(s.conditions, "GPUUnavailable") is not None
    assert s.replacements == 1  # two extra incarnations, one of them a migration


def test_kernel_events_on_transitions_only() -> None:
    k = NotebookKernel.model_validate(kernel_obj())
    ready = compute(k, [ready_replica(i) for i in (1, 2, 3)])
    assert [e.reason for e in st.kernel_events(k.status, ready)] == ["Scheduled", "Ready"]
    assert st.kernel_events(ready, ready) == []
    starting = compute(k, [ready_replica(i) for i in (1, 2, 3)], router=None)
    assert [e.reason for e in st.kernel_events(k.status, starting)] == ["Scheduled", "Starting"]


def test_invalid_kernel() -> None:
    k = NotebookKernel.model_validate(kernel_obj())
    s = st.invalid_kernel_status(k, "name too long", T0)
    assert s.phase == KernelPhase.FAILED
    c = cond(s.conditions, "Ready")
    assert (c.reason, c.message) == ("InvalidKernel", "name too long")
    assert [e.reason for e in st.kernel_events(k.status, s)] == ["Failed"]


def test_connection_info_without_cluster_ip_uses_the_dns_name() -> None:
    svc = {"metadata": {"namespace": "ns"}, "spec": {"clusterIP": "None"}}
    info = st.connection_info("k", svc, OperatorConfig())
    assert info is not None and info.host == "k.ns.svc"
    assert st.connection_info("k", None, OperatorConfig()) is None


# ------------------------------------------------------------------------------------------------ backoff


def failed_pod(name: str, inc: int, created: datetime, failed: datetime | None) -> dict:
    pod = pod_obj(name, inc, phase="Failed")
    pod["metadata"]["creationTimestamp"] = created.isoformat().replace("+00:00", "Z")
    pod["status"]["reason"] = "Error"
    if failed is not None:
        pod["status"]["containerStatuses"] = [
            {"name": "replica", "state": {"terminated": {"finishedAt": failed.isoformat().replace("+00:00", "Z")}}}
        ]
    return pod


@pytest.mark.parametrize(("inc", "delay"), [(1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (30, 300.0)])
def test_backoff_doubles_per_incarnation_up_to_a_cap(inc: int, delay: float) -> None:
    pod = failed_pod("p", inc, T0, T0 + timedelta(seconds=2))
    assert st.replacement_backoff(pod, inc, T0 + timedelta(seconds=2)) == delay
    # Time already waited counts.
    assert st.replacement_backoff(pod, inc, T0 + timedelta(seconds=4)) == delay - 2


def test_no_backoff_for_a_pod_that_lived_or_was_deleted() -> None:
    lived = failed_pod("p", 3, T0, T0 + timedelta(seconds=st.FAST_FAILURE_SECONDS + 1))
    assert st.replacement_backoff(lived, 3, T1 + timedelta(minutes=5)) == 0.0
    assert st.replacement_backoff(pod_obj("p", deleting=True), 3, T0) == 0.0
    no_times = pod_obj("p", 3, phase="Failed")
    assert st.replacement_backoff(no_times, 3, T0) == 0.0


def test_plan_keeps_a_crash_looping_pod_until_the_backoff_is_over() -> None:
    pod = failed_pod("k-1-i2", 2, T0, T0 + timedelta(seconds=1))
    plan = st.plan_replica_pods(KernelReplicaStatus(incarnation=2), [pod], {"n1"}, T0 + timedelta(seconds=3))
    assert plan.create_incarnation is None and plan.delete == () and plan.failed is pod
    assert plan.backoff == 8.0
    later = st.plan_replica_pods(KernelReplicaStatus(incarnation=2), [pod], {"n1"}, T0 + timedelta(seconds=12))
    assert later.create_incarnation == 3 and later.delete == ("k-1-i2",) and later.backoff == 0.0
    assert later.lost == "pod k-1-i2 failed (Error)"


def test_backoff_status_says_when_the_next_pod_comes() -> None:
    pod = failed_pod("k-1-i2", 2, T0, T0 + timedelta(seconds=1))
    s = st.backoff_status(replica_model(incarnation=2), pod, 2, 8.0, T0 + timedelta(seconds=3))
    assert s.phase == ReplicaPhase.FAILED and s.pod_name == "k-1-i2"
    c = cond(s.conditions, "Ready")
    assert c.reason == "BackOff"
    assert c.message == (
        "pod k-1-i2 failed (Error) soon after it started; the next pod is made at 2026-01-01T00:00:11+00:00"
    )


def test_backoff_without_a_finish_time_uses_the_pods_last_condition_change() -> None:
    pod = failed_pod("p", 1, T0, None)
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:03Z"}]
    assert st.replacement_backoff(pod, 1, T0 + timedelta(seconds=4)) == 4.0
    assert st.replacement_backoff(pod, 1, T0 + timedelta(seconds=9)) == 0.0  # over: it ends
    bare = failed_pod("p", 1, T0, None)
    assert st.replacement_backoff(bare, 1, T0 + timedelta(seconds=6)) == 0.0


def test_kernel_sums_the_gpu_seconds_its_replicas_were_bound() -> None:
    k = NotebookKernel.model_validate(kernel_obj())
    reps = [ready_replica(i) for i in (1, 2, 3)]
    reps[0].status.gpu_seconds_bound, reps[2].status.gpu_seconds_bound = 2.5, 3.0
    s = compute(k, reps)
    assert s.gpu_seconds_bound == 5.5 and s.ready == "3/3"
    # A replica object made anew starts again at 0: the kernel's total does not go back.
    k2 = k.model_copy(update={"status": s})
    reps[2].status.gpu_seconds_bound = 0
    assert compute(k2, reps).gpu_seconds_bound == 5.5

"""The reconciler against an in-memory Kube (fake_kube.py): each writer's status fields are its
own (core/api/owners.py). The operator never writes, drops or overwrites another writer's field, or
a field it does not know, even when that writer writes between the operator's read and its write."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from notebookos.api import owners
from notebookos.operator.config import OperatorConfig
from notebookos.operator.reconcile import Reconciler
from tests.operator.factories import kernel_obj, pod_obj
from tests.operator.fake_kube import FakeKube

NS = "ns"
ROUTER_FIELDS = {
    "executor": "k-2",
    "cells": 7,
    "lastActivity": "2026-12-06T10:00:00Z",
    "conditions": [{"type": "GPUUnavailable", "status": "False", "reason": "Granted", "message": "ok"}],
    "aFieldOfANewerVersion": {"kept": True},  # the models do not know it; nobody may drop it
}


def _reconciler(kube: FakeKube, cfg: OperatorConfig) -> tuple[Reconciler, list[Any]]:
    posted: list[Any] = []
    clock = lambda: datetime(2026, 12, 6, 10, 0, tzinfo=UTC)  # noqa: E731
    return Reconciler(kube, cfg, lambda obj, event: posted.append(event), clock), posted  # type: ignore[arg-type]


def _run_pods(kube: FakeKube, ready: bool) -> None:
    """What the scheduler and the kubelet do: place and run each replica pod the operator made."""
    for n, pod in enumerate(kube.of_kind("Pod", NS)):
        if not kube.node_exists(f"gpu-{n}"):
            kube.put({"kind": "Node", "metadata": {"name": f"gpu-{n}"}})
        placed = pod_obj(pod["metadata"]["name"], node=f"gpu-{n}", ready=ready, ip=f"10.0.0.{n + 1}")
        pod["spec"] = {**pod["spec"], **placed["spec"]}
        pod["status"] = placed["status"]
        kube.put(pod)


def _reconcile_all(rec: Reconciler, kube: FakeKube) -> None:
    for r in kube.of_kind("KernelReplica", NS):
        rec.replica(NS, r["metadata"]["name"])
    rec.kernel(NS, "k")


def _bring_up(rec: Reconciler, kube: FakeKube) -> None:
    """Replicas, their pods running, then the router (made once the replicas have addresses)."""
    rec.kernel(NS, "k")
    for _ in range(2):
        _reconcile_all(rec, kube)
        _run_pods(kube, ready=True)
    _reconcile_all(rec, kube)


def test_the_operator_sends_only_its_own_fields(cfg: OperatorConfig) -> None:
    kube = FakeKube()
    kube.put(kernel_obj())
    rec, posted = _reconciler(kube, cfg)
    _bring_up(rec, kube)
    assert len(kube.of_kind("KernelReplica", NS)) == 3
    assert kube.get_custom("NotebookKernel", NS, "k")["status"]["phase"] == "Ready"  # type: ignore[index]
    assert posted, "transitions post Events"
    for kind, name, status in kube.status_patches:
        foreign = {k for k in status if owners.STATUS[kind].get(k) != owners.OPERATOR}
        assert not foreign, f"the operator wrote {foreign} of {kind} {name}"


def test_other_writers_fields_and_unknown_fields_survive_the_operators_writes(cfg: OperatorConfig) -> None:
    kube = FakeKube()
    kube.put(kernel_obj())
    rec, _ = _reconciler(kube, cfg)
    rec.kernel(NS, "k")
    _reconcile_all(rec, kube)
    kube.merge("NotebookKernel", NS, "k", {"status": ROUTER_FIELDS})
    kube.merge("KernelReplica", NS, "k-1", {"status": {"raft": {"role": "Leader", "term": 3}, "futureField": 1}})
    before = len(kube.status_patches)
    _bring_up(rec, kube)  # the phases change: the operator writes
    assert len(kube.status_patches) > before, "the operator wrote something"
    status = kube.get_custom("NotebookKernel", NS, "k")["status"]  # type: ignore[index]
    assert status["phase"] == "Ready"
    for key in ("executor", "cells", "lastActivity", "aFieldOfANewerVersion"):
        assert status[key] == ROUTER_FIELDS[key], key
    kinds = [c["type"] for c in status["conditions"]]
    assert "GPUUnavailable" in kinds and "Ready" in kinds, kinds
    replica = kube.get_custom("KernelReplica", NS, "k-1")["status"]  # type: ignore[index]
    assert replica["raft"]["role"] == "Leader" and replica["futureField"] == 1
    assert replica["phase"] == "Ready"


def test_a_write_between_the_operators_read_and_write_is_kept(cfg: OperatorConfig) -> None:
    """The router reports a cell while the operator decides: the operator's write conflicts, it
    reads again and decides again, and both changes are in the object."""
    kube = FakeKube()
    kube.put(kernel_obj())
    rec, _ = _reconciler(kube, cfg)
    _bring_up(rec, kube)
    _run_pods(kube, ready=False)  # the replicas' pods stop being ready
    for r in kube.of_kind("KernelReplica", NS):
        rec.replica(NS, r["metadata"]["name"])

    def router_writes(obj: dict[str, Any]) -> None:
        assert obj["kind"] == "NotebookKernel"
        kube.merge("NotebookKernel", NS, "k", {"status": {"cells": 1, "executor": "k-1"}})

    kube.before_status_write = router_writes
    rec.kernel(NS, "k")
    assert kube.before_status_write is None, "the router wrote between the operator's read and write"
    status = kube.get_custom("NotebookKernel", NS, "k")["status"]  # type: ignore[index]
    assert status["phase"] == "Degraded" and status["cells"] == 1 and status["executor"] == "k-1"


@pytest.mark.parametrize("kind", sorted(owners.STATUS))
def test_status_patch_leaves_out_what_is_not_the_writers(kind: str) -> None:
    old = {"phase": "Pending", "cells": 1, "raft": {"role": "Leader"}, "unknown": 1, "podName": "p"}
    new = {"phase": "Ready", "cells": 2, "raft": {"role": "Follower"}, "unknown": 2}
    patch = owners.status_patch(kind, owners.OPERATOR, old, new)
    assert patch["phase"] == "Ready"
    assert "cells" not in patch and "raft" not in patch and "unknown" not in patch
    if kind == "KernelReplica":
        assert patch["podName"] is None  # removed: a merge patch's null
    assert owners.status_patch(kind, owners.OPERATOR, old, old) == {}


@pytest.mark.parametrize("kind", sorted(owners.STATUS))
def test_every_status_field_has_one_writer(kind: str) -> None:
    from notebookos.api import KernelReplicaStatus, NotebookKernelStatus

    model = {"NotebookKernel": NotebookKernelStatus, "KernelReplica": KernelReplicaStatus}[kind]
    wire = {f.alias or name for name, f in model.model_fields.items()}
    assert wire == set(owners.STATUS[kind]), wire ^ set(owners.STATUS[kind])


def test_event_reconciles_skip_the_fixed_children_and_the_resync_makes_a_deleted_one_again(
    cfg: OperatorConfig,
) -> None:
    class Counting(FakeKube):
        reads = 0

        def exists(self, kind: str, ns: str, name: str) -> bool:
            Counting.reads += kind != "Node"
            return super().exists(kind, ns, name)

    kube = Counting()
    kube.put(kernel_obj())
    rec, _ = _reconciler(kube, cfg)
    _bring_up(rec, kube)
    Counting.reads = 0
    rec.kernel(NS, "k")
    assert Counting.reads == 0, "a kernel's events do not read its Secret, Services, PDB and RBAC again"
    del kube.objects[("Secret", NS, "k-key")]
    rec.kernel(NS, "k")
    assert not kube.exists("Secret", NS, "k-key"), "until the resync"
    rec.kernel(NS, "k", verify=True)
    assert kube.exists("Secret", NS, "k-key"), "the resync reads them all and makes the missing one"


def test_a_refused_capacity_request_still_writes_the_kernels_status(cfg: OperatorConfig) -> None:
    """No PriorityClass for capacity requests (the API server's 403): the kernel's status still
    says why it waits, and what refused the request, instead of the reconcile stopping there."""
    from notebookos.operator.kube import Refused

    class NoPriorityClass(FakeKube):
        def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
            if "capacity" in manifest["metadata"]["name"]:
                raise Refused("no PriorityClass with name notebookos-capacity-request was found")
            return super().create(manifest)

    kube = NoPriorityClass()
    kube.put(kernel_obj())
    rec, posted = _reconciler(kube, cfg)
    rec.kernel(NS, "k")
    unschedulable = {"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes"}
    kube.merge("KernelReplica", NS, "k-3", {"status": {"conditions": [unschedulable]}})
    rec.kernel(NS, "k")
    status = kube.get_custom("NotebookKernel", NS, "k")["status"]  # type: ignore[index]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["CapacityRequested"]["reason"] == "Refused", conds["CapacityRequested"]
    assert "no PriorityClass" in conds["CapacityRequested"]["message"]
    assert any(e.reason == "CapacityRequestRefused" for e in posted)


def test_a_burst_of_reconciles_of_one_kernel_runs_at_most_two(cfg: OperatorConfig) -> None:
    """While one reconcile of a kernel runs, one more waits (it reads the cluster after every event
    so far); a further caller waits for that one's run instead of queueing the same work."""
    import threading

    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    class Slow(FakeKube):
        def get_custom(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
            if kind == "NotebookKernel":
                runs.append(name)
                started.set()
                release.wait(10)
            return super().get_custom(kind, ns, name)

    kube = Slow()
    kube.put(kernel_obj())
    rec, _ = _reconciler(kube, cfg)
    first = threading.Thread(target=rec.kernel, args=(NS, "k"))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=rec.kernel, args=(NS, "k"))
    second.start()
    while (("kernel", NS, "k"), False) not in rec._waiting:  # the second waits for the first
        second.join(0.01)
    joined = threading.Event()

    class Spy(dict):  # type: ignore[type-arg]
        def get(self, k: Any, default: Any = None) -> Any:
            turn = super().get(k, default)
            if turn is not None:
                joined.set()  # a caller found the waiting one's turn
            return turn

    rec._waiting = Spy(rec._waiting)
    third = threading.Thread(target=rec.kernel, args=(NS, "k"))
    third.start()
    assert joined.wait(10)
    release.set()
    for t in (first, second, third):
        t.join(10)
        assert not t.is_alive()
    assert runs == ["k", "k"], "the waiting one ran, for the third too"

"""The operator's migration steps (operator/migration.py), from API objects alone: which replica
moves where, and what happens to its pods at each step, after a restart too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from notebookos import labels
from notebookos.api import KernelReplica, NotebookKernel
from notebookos.operator import builders, migration
from notebookos.operator.config import OperatorConfig
from notebookos.policy.placement import NodeView
from tests.operator.factories import kernel_obj, pod_obj, replica_model

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MOVE = migration.Move("n4", "no GPUs", NOW - timedelta(seconds=5))


def _pinned(name: str, incarnation: int, node: str | None, target: str = "n4", **kw: Any) -> dict[str, Any]:
    p = pod_obj(name, incarnation=incarnation, node=node, **kw)
    p["metadata"]["annotations"] = {labels.MIGRATE_TO_ANNOTATION: target}
    p["metadata"]["creationTimestamp"] = (NOW - timedelta(seconds=5)).isoformat()
    return p


def _status(incarnation: int = 1) -> Any:
    return replica_model(incarnation=incarnation).status


def test_a_move_starts_with_a_pod_on_the_target_while_the_old_one_runs() -> None:
    old = pod_obj("k-1-i1", incarnation=1, node="n1")
    plan, state = migration.plan(_status(), [old], {"n1", "n4"}, NOW, MOVE, 120)
    assert state == "started"
    assert plan.current is old and plan.delete == ()
    assert plan.create_incarnation == 2 and plan.create_on == "n4"


def test_a_made_pod_not_yet_placed_keeps_the_old_one() -> None:
    old, new = pod_obj("k-1-i1", incarnation=1, node="n1"), _pinned("k-1-i2", 2, None, phase="Pending")
    plan, state = migration.plan(_status(), [old, new], {"n1", "n4"}, NOW, MOVE, 120)
    assert state == "pending" and plan.current is old and plan.delete == () and plan.create_incarnation is None


def test_once_placed_the_old_pod_goes() -> None:
    old, new = pod_obj("k-1-i1", incarnation=1, node="n1"), _pinned("k-1-i2", 2, "n4", phase="Pending")
    plan, state = migration.plan(_status(), [old, new], {"n1", "n4"}, NOW, MOVE, 120)
    assert state == "placed" and plan.current is new and plan.delete == ("k-1-i1",)


def test_a_pod_never_placed_is_rolled_back_after_the_timeout() -> None:
    old = pod_obj("k-1-i1", incarnation=1, node="n1")
    new = _pinned("k-1-i2", 2, None, phase="Pending", scheduled={"status": "False", "message": "0/4 nodes fit"})
    plan, state = migration.plan(_status(), [old, new], {"n1", "n4"}, NOW + timedelta(seconds=200), MOVE, 120)
    assert state == "failed: 0/4 nodes fit"
    assert plan.current is old and plan.delete == ("k-1-i2",) and plan.create_incarnation is None


def test_after_an_operator_restart_the_pod_made_before_is_found_not_made_twice() -> None:
    """The same objects give the same step: no second pod for the move."""
    old, new = pod_obj("k-1-i1", incarnation=1, node="n1"), _pinned("k-1-i2", 2, None, phase="Pending")
    for _ in range(2):
        plan, state = migration.plan(_status(), [old, new], {"n1", "n4"}, NOW, MOVE, 120)
        assert state == "pending" and plan.create_incarnation is None


def test_a_replica_lost_during_its_move_is_replaced_on_the_target() -> None:
    dead = pod_obj("k-1-i1", incarnation=1, node="n1", phase="Failed")
    plan, state = migration.plan(_status(), [dead], {"n1", "n4"}, NOW, MOVE, 120)
    assert state == "started" and plan.create_on == "n4" and plan.create_incarnation == 2


def test_the_pod_of_a_move_is_held_to_its_node_through_the_scheduler() -> None:
    cfg = OperatorConfig(runner=labels.RUNNER_VALUE)
    kernel = NotebookKernel.model_validate(kernel_obj())
    pod = builders.replica_pod(kernel, replica_model().model_dump(by_alias=True, mode="json"), 2, cfg, node="n4")
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n4"]}]}
    ]
    assert pod["spec"]["schedulerName"] == cfg.scheduler_name and "nodeName" not in pod["spec"]
    assert pod["metadata"]["annotations"][labels.MIGRATE_TO_ANNOTATION] == "n4"


def _kernel(gpu_unavailable: bool = True) -> NotebookKernel:
    conds = [{"type": "GPUUnavailable", "status": "True" if gpu_unavailable else "False", "reason": "Overloaded",
              "message": "full", "lastTransitionTime": NOW.isoformat()}]  # fmt: skip
    return NotebookKernel.model_validate(kernel_obj(spec={"resources": {"gpus": 2}}, conditions=conds))


def _replicas(nodes: list[str], bound: int | None = None, **kw: Any) -> list[tuple[KernelReplica, Any, Any]]:
    out = []
    for i, n in enumerate(nodes, 1):
        status: dict[str, Any] = {"phase": "Ready", "nodeName": n, **kw}
        if bound == i:
            status["gpuBinding"] = {"node": n, "devices": ["a", "b"], "executionId": "e", "since": NOW.isoformat()}
        out.append((replica_model(rid=i, **status), None, None))
    return out


def _views(free: dict[str, int], schedulable: dict[str, bool] | None = None) -> dict[str, NodeView]:
    mine = {"n1", "n2", "n3"}
    return {
        n: NodeView(n, 8, subscribed=8, bound=8 - idle, kernels=frozenset({"ns/k"} if n in mine else set()),
                    schedulable=(schedulable or {}).get(n, True))
        for n, idle in free.items()
    }  # fmt: skip


def _decide(rows: list[tuple[KernelReplica, Any, Any]], free: dict[str, int]) -> migration.Decision | str | None:
    return migration.decide(_kernel(), rows, _views(free), 7.0, NOW)


def test_an_overloaded_kernel_moves_one_replica_to_the_node_with_free_gpus() -> None:
    d = migration.decide(
        _kernel(), _replicas(["n1", "n2", "n3"]), _views({"n1": 0, "n2": 0, "n3": 1, "n4": 8}), 7.0, NOW
    )
    assert isinstance(d, migration.Decision)
    assert d.target == "n4" and d.replica == 1 and d.source == "n1"  # the most loaded node, lowest id on ties


def test_never_the_executor_of_a_running_cell_and_one_move_at_a_time() -> None:
    d = migration.decide(
        _kernel(), _replicas(["n1", "n2", "n3"], bound=1), _views({"n1": 0, "n2": 0, "n3": 0, "n4": 8}), 7.0, NOW
    )
    assert isinstance(d, migration.Decision) and d.replica != 1
    rows = _replicas(["n1", "n2", "n3"])
    rows[1] = (rows[1][0], MOVE, None)
    assert migration.decide(_kernel(), rows, _views({"n1": 0, "n2": 0, "n3": 0, "n4": 8}), 7.0, NOW) is None


def test_no_node_with_free_gpus_says_why_for_each_node() -> None:
    d = migration.decide(
        _kernel(), _replicas(["n1", "n2", "n3"]), _views({"n1": 0, "n2": 0, "n3": 0, "n4": 1}), 7.0, NOW
    )
    assert isinstance(d, str) and "n4: 1 of 8 GPUs idle, the kernel needs 2" in d
    assert "n1: node already hosts a replica of kernel ns/k" in d


def test_nothing_moves_while_the_kernel_has_its_gpus_or_right_after_a_move() -> None:
    views = _views({"n1": 0, "n2": 0, "n3": 0, "n4": 8})
    assert migration.decide(_kernel(False), _replicas(["n1", "n2", "n3"]), views, 7.0, NOW) is None
    recent = [(r, None, NOW - timedelta(seconds=5)) for r, _, _ in _replicas(["n1", "n2", "n3"])]
    assert migration.decide(_kernel(), recent, views, 7.0, NOW) is None


def test_a_replica_on_a_drained_node_moves_off_once_it_is_not_executing() -> None:
    views = _views({"n1": 8, "n2": 8, "n3": 8, "n4": 8}, schedulable={"n2": False})
    d = migration.decide(_kernel(False), _replicas(["n1", "n2", "n3"]), views, 7.0, NOW)
    assert isinstance(d, migration.Decision) and (d.replica, d.source, d.target) == (2, "n2", "n4")
    assert "drained" in d.reason
    d = migration.decide(_kernel(False), _replicas(["n1", "n2", "n3"], bound=2), views, 7.0, NOW)
    assert d is None, "the executor finishes its cell first"

"""Scale-in chosen by the operator (notebookos.operator.scale_in): which node it empties, when it
waits, when it gives a node back. The e2e test (e2e/test_scale_out.py) runs it with Karpenter."""

from __future__ import annotations

from typing import Any

import pytest

from notebookos import labels
from notebookos.operator.config import ConfigError
from notebookos.operator.scale_in import ScaleInConfig, decide, tainted_at, taints_with, taints_without
from notebookos.policy.drain import Resident
from notebookos.policy.migration import Member
from notebookos.policy.placement import NodeView, ReplicaRequest

CFG = ScaleInConfig(selector="karpenter.sh/nodepool", idle_seconds=60, release_seconds=600)
NOW = 1_000_000.0


def node(name: str, tainted: float | None = None) -> dict[str, Any]:
    taints = [{"key": "notebookos.io/gpu", "value": "present", "effect": "NoSchedule"}]
    if tainted is not None:
        taints.append({"key": labels.SCALE_IN_TAINT_KEY, "value": str(int(tainted)), "effect": "NoSchedule"})
    return {"metadata": {"name": name}, "spec": {"taints": taints}}


def kernel_on(nodes: list[str], name: str = "ns/k") -> Resident:
    members = tuple(Member(i + 1, n) for i, n in enumerate(nodes))
    return Resident(ReplicaRequest(name, 1, len(nodes)), members)


def views(**placed: list[str]) -> dict[str, NodeView]:
    """Nodes a..e of 8 GPUs; `placed`: node -> kernels with a replica there."""
    return {n: NodeView(n, 8, len(placed.get(n, [])), 0, frozenset(placed.get(n, []))) for n in "abcde"}


def test_the_added_node_with_one_idle_replica_is_emptied_when_its_replica_fits_elsewhere() -> None:
    k = kernel_on(["a", "b", "e"])
    v = views(a=["ns/k"], b=["ns/k"], e=["ns/k"])
    # a..d are the fixed pool; only e is the autoscaler's
    step = decide({"e": node("e")}, v, {"a": [k], "b": [k], "e": [k]}, {"a": 90, "b": 90, "e": 90}, False, CFG, NOW)
    assert step.taint == "e" and "ran no cell for 90 s" in step.why


def test_nothing_is_emptied_while_its_kernels_are_active_or_a_cell_holds_gpus() -> None:
    k = kernel_on(["a", "b", "e"])
    res = {"a": [k], "b": [k], "e": [k]}
    v = views(a=["ns/k"], b=["ns/k"], e=["ns/k"])
    assert decide({"e": node("e")}, v, res, {"e": 30}, False, CFG, NOW).taint is None
    v["e"] = NodeView("e", 8, 1, 1, frozenset({"ns/k"}))
    assert decide({"e": node("e")}, v, res, {"e": 90}, False, CFG, NOW).taint is None


def test_a_node_whose_replicas_have_no_home_is_kept() -> None:
    # three replicas on three nodes, the only other node already holds a sibling: nowhere to go
    k = kernel_on(["a", "b", "e"])
    v = {n: NodeView(n, 8, 1, 0, frozenset({"ns/k"})) for n in "abe"}
    assert decide({"e": node("e")}, v, {"a": [k], "b": [k], "e": [k]}, {"e": 90}, False, CFG, NOW).taint is None


def test_fewest_replicas_first_and_one_node_at_a_time() -> None:
    k1, k2 = kernel_on(["a", "d"], "ns/k1"), kernel_on(["b", "e"], "ns/k2")
    k3 = kernel_on(["c", "e"], "ns/k3")
    v = views(a=["ns/k1"], d=["ns/k1"], b=["ns/k2"], e=["ns/k2", "ns/k3"], c=["ns/k3"])
    eligible = {"d": node("d"), "e": node("e")}
    res = {"a": [k1], "d": [k1], "b": [k2], "e": [k2, k3], "c": [k3]}
    idle = {n: 90.0 for n in "abcde"}
    assert decide(eligible, v, res, idle, False, CFG, NOW).taint == "d"
    # d is being emptied (tainted, a replica still there): no second node meanwhile
    eligible["d"] = node("d", tainted=NOW - 5)
    v["d"] = NodeView("d", 8, 1, 0, frozenset({"ns/k1"}), schedulable=False)
    step = decide(eligible, v, res, idle, False, CFG, NOW)
    assert step.taint is None and step.untaint == ()


def test_a_waiting_kernel_takes_the_room_back() -> None:
    eligible = {"d": node("d", tainted=NOW - 5), "e": node("e")}
    step = decide(eligible, views(), {}, {}, True, CFG, NOW)
    assert step.untaint == ("d",) and step.taint is None and "waits for GPUs" in step.why


def test_a_node_being_emptied_whose_kernel_became_active_is_given_back() -> None:
    k = kernel_on(["a", "b", "d"])
    v = views(a=["ns/k"], b=["ns/k"])
    v["d"] = NodeView("d", 8, 1, 0, frozenset({"ns/k"}), schedulable=False)
    step = decide({"d": node("d", tainted=NOW - 5)}, v, {"d": [k]}, {"d": 3}, False, CFG, NOW)
    assert step.untaint == ("d",)


def test_an_emptied_node_the_autoscaler_keeps_is_given_back_after_a_while() -> None:
    v = views()
    v["d"] = NodeView("d", 8, 0, 0, frozenset(), schedulable=False)
    fresh = decide({"d": node("d", tainted=NOW - 30)}, v, {}, {}, False, CFG, NOW)
    assert fresh.untaint == () and fresh.taint is None
    old = decide({"d": node("d", tainted=NOW - 601)}, v, {}, {}, False, CFG, NOW)
    assert old.untaint == ("d",)


def test_taints_keep_everyone_elses() -> None:
    n = node("d")
    n["spec"]["taints"].append({"key": "karpenter.sh/disrupted", "effect": "NoSchedule"})
    added = taints_with(n, NOW)
    assert [t["key"] for t in added] == ["notebookos.io/gpu", "karpenter.sh/disrupted", labels.SCALE_IN_TAINT_KEY]
    assert tainted_at({"spec": {"taints": added}}) == NOW
    assert taints_without({"spec": {"taints": added}}) == n["spec"]["taints"]
    assert tainted_at(n) is None


def test_config() -> None:
    assert not ScaleInConfig.from_env({}).enabled
    c = ScaleInConfig.from_env(
        {"NOTEBOOKOS_SCALE_IN_SELECTOR": "karpenter.sh/nodepool", "NOTEBOOKOS_SCALE_IN_IDLE_SECONDS": "5"}
    )
    assert c.enabled and c.idle_seconds == 5 and c.selector == "karpenter.sh/nodepool"
    with pytest.raises(ConfigError, match="NOTEBOOKOS_SCALE_IN_IDLE_SECONDS"):
        ScaleInConfig.from_env({"NOTEBOOKOS_SCALE_IN_IDLE_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="empty term"):
        ScaleInConfig.from_env({"NOTEBOOKOS_SCALE_IN_SELECTOR": "a=b,,c"})

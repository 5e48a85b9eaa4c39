"""The extender's wire parsing and its cached cluster state."""

from __future__ import annotations

import json

import pytest

from notebookos.extender.cluster_state import (
    ClusterState,
    binding_from_replica,
    node_info_from_object,
    pod_entry_from_object,
)
from notebookos.extender.wire import WireError, filter_result, parse_extender_args, replica_request
from notebookos.labels import GPU_INVENTORY_ANNOTATION, REPLICA_GPUS_ANNOTATION
from tests.extender.helpers import node_obj, replica_pod


def test_parse_nodes_and_names_and_go_case_insensitivity() -> None:
    pod = replica_pod("k")
    a = parse_extender_args({"Pod": pod, "Nodes": {"items": [node_obj("a"), node_obj("b")]}})
    assert a.candidate_names == ["a", "b"] and a.node_names is None
    b = parse_extender_args({"pod": pod, "nodenames": ["x", "y"]})
    assert b.candidate_names == ["x", "y"] and b.nodes is None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "must be a JSON object"),
        ({"Nodes": {"items": []}}, "Pod must be a v1.Pod"),
        ({"Pod": {"metadata": []}, "NodeNames": []}, "Pod.metadata must be an object"),
        ({"Pod": {"metadata": {"labels": {"a": 1}}}, "NodeNames": []}, "labels must map strings"),
        ({"Pod": {"metadata": {}}}, "needs Nodes"),
        ({"Pod": {"metadata": {}}, "Nodes": {"items": [{"metadata": {}}]}}, "items[0].metadata.name"),
        ({"Pod": {"metadata": {}}, "NodeNames": ["a", 3]}, "NodeNames must be a list"),
    ],
)
def test_malformed_args_name_the_problem(body: object, needle: str) -> None:
    with pytest.raises(WireError, match=None) as e:
        parse_extender_args(body)
    assert needle in str(e.value)


def test_replica_request_from_pod() -> None:
    r = replica_request(replica_pod("k", gpus=2, ns="team"))
    assert r is not None and r.kernel == "team/k" and r.gpus == 2
    assert replica_request({"metadata": {"name": "plain"}}) is None
    router = {"metadata": {"name": "k-router", "labels": {"notebookos.io/kernel": "k"}}}
    assert replica_request(router) is None  # a kernel's pod without GPUs to account for
    bad = replica_pod("k")
    bad["metadata"]["annotations"][REPLICA_GPUS_ANNOTATION] = "two"
    with pytest.raises(ValueError, match="is not an integer"):
        replica_request(bad)


def test_filter_result_answers_in_the_form_asked() -> None:
    pod = replica_pod("k")
    objs = parse_extender_args({"Pod": pod, "Nodes": {"items": [node_obj("a"), node_obj("b")]}})
    res = filter_result(objs, ["b"], {"a": "full"})
    assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["b"]
    assert res["NodeNames"] is None and res["FailedNodes"] == {"a": "full"} and res["Error"] == ""
    names = parse_extender_args({"Pod": pod, "NodeNames": ["a", "b"]})
    res = filter_result(names, ["b"], {"a": "full"})
    assert res["NodeNames"] == ["b"] and res["Nodes"] is None
    assert set(res) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}


def test_node_info_from_inventory_and_fallbacks() -> None:
    info = node_info_from_object(node_obj("a", 8, healthy=6))
    assert info.gpus == 6 and info.gpu_memory_mib == 81559 and info.schedulable
    n = node_obj("b", 4)
    n["metadata"]["annotations"][GPU_INVENTORY_ANNOTATION] = "not json"
    assert node_info_from_object(n).gpus == 4  # capacity fallback
    n = node_obj("c", 2)
    n["spec"]["taints"] = [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]
    assert not node_info_from_object(n).schedulable


def test_state_aggregates_follow_pod_and_binding_events() -> None:
    s = ClusterState()
    s.replace_nodes({"a": node_info_from_object(node_obj("a", 8)), "b": node_info_from_object(node_obj("b", 8))})
    for i, node in enumerate(["a", "b", None], start=1):
        e = pod_entry_from_object(replica_pod("k", i, gpus=2, node=node))
        assert e is not None
        s.set_pod(f"ns/k-{i}", e)
    s.set_pod("ns/j-1", pod_entry_from_object(replica_pod("j", 1, gpus=4, node="a")))
    va = s.view("a")
    assert va is not None and va.subscribed == 6 and va.kernels == {"ns/k", "ns/j"}
    assert s.demand() == 6  # k needs 2 per cell, j needs 4: once per kernel
    # the pending replica gets bound to b: events replace, never double count
    s.set_pod("ns/k-3", pod_entry_from_object(replica_pod("k", 3, gpus=2, node="b")))
    vb = s.view("b")
    assert vb is not None and vb.subscribed == 4
    s.set_pod("ns/j-1", None)
    assert s.demand() == 2
    va = s.view("a")
    assert va is not None and va.subscribed == 2 and va.kernels == {"ns/k"}
    rep = {
        "metadata": {"name": "k-1", "namespace": "ns"},
        "status": {"gpuBinding": {"node": "a", "devices": ["x", "y"]}},
    }
    assert binding_from_replica(rep) == ("a", 2)
    s.set_binding("ns/k-1", binding_from_replica(rep))
    va = s.view("a")
    assert va is not None and va.bound == 2 and va.idle == 6 and s.busy() == 2
    s.set_binding("ns/k-1", None)
    assert s.busy() == 0
    assert s.view("zzz") is None


def test_finished_pods_do_not_count() -> None:
    p = replica_pod("k", node="a")
    p["status"]["phase"] = "Succeeded"
    assert pod_entry_from_object(p) is None
    assert json.loads(json.dumps(node_obj("a")))  # fixtures are plain JSON

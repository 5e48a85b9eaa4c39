"""The extender over real HTTP on loopback, in kube-scheduler's wire format."""

from __future__ import annotations

import threading
import time

import requests
from aiohttp import web

from notebookos.extender.cluster_state import ClusterState, PodEntry, node_info_from_object
from notebookos.extender.extender_app import Extender, make_app
from notebookos.policy.placement import SubscriptionRatio
from tests.extender.helpers import node_obj, replica_pod


def start(server_thread, state: ClusterState, max_ratio: float = 7.0):
    ext = Extender(state, SubscriptionRatio(max_ratio), required_syncs=frozenset({"nodes"}))

    async def factory() -> web.Application:
        return make_app(ext)

    return ext, server_thread(factory)


def cluster(n: int = 3, gpus: int = 1) -> ClusterState:
    s = ClusterState()
    s.replace_nodes({f"n{i}": node_info_from_object(node_obj(f"n{i}", gpus)) for i in range(n)})
    return s


def test_filter_with_node_objects_rejects_sibling_node_and_full_node(server_thread) -> None:
    state = cluster(3, 1)
    state.set_pod("ns/k-1", PodEntry("ns/k", 1, "n0"))  # sibling on n0
    for i in range(3):  # n1 promised 3 GPUs already: 1 GPU x 3 replicas x SR 1.0
        state.set_pod(f"ns/o{i}-1", PodEntry(f"ns/o{i}", 1, "n1"))
    _, srv = start(server_thread, state, max_ratio=1.0)
    body = {"Pod": replica_pod("k", 2), "Nodes": {"items": [node_obj("n0", 1), node_obj("n1", 1), node_obj("n2", 1)]}}
    r = requests.post(f"{srv.url}/filter", json=body, timeout=10)
    assert r.status_code == 200, r.text
    res = r.json()
    assert [n["metadata"]["name"] for n in res["Nodes"]["items"]] == ["n2"]
    assert "already hosts a replica of kernel ns/k" in res["FailedNodes"]["n0"]
    assert "GPU subscription cap reached" in res["FailedNodes"]["n1"]
    assert res["Error"] == "" and res["NodeNames"] is None


def test_filter_by_names_and_unknown_node(server_thread) -> None:
    _, srv = start(server_thread, cluster(2, 8))
    r = requests.post(
        f"{srv.url}/filter", json={"Pod": replica_pod("k"), "NodeNames": ["n0", "n1", "ghost"]}, timeout=10
    )
    res = r.json()
    assert res["NodeNames"] == ["n0", "n1"] and "not yet known" in res["FailedNodes"]["ghost"]


def test_pod_with_bad_annotation_is_unresolvable_everywhere(server_thread) -> None:
    _, srv = start(server_thread, cluster(2, 8))
    pod = replica_pod("k")
    pod["metadata"]["annotations"]["notebookos.io/gpus"] = "lots"
    res = requests.post(f"{srv.url}/filter", json={"Pod": pod, "NodeNames": ["n0", "n1"]}, timeout=10).json()
    assert res["NodeNames"] == [] and set(res["FailedAndUnresolvableNodes"]) == {"n0", "n1"}
    assert "is not an integer" in res["FailedAndUnresolvableNodes"]["n0"]


def test_prioritize_prefers_idle_gpus_then_low_subscription(server_thread) -> None:
    state = cluster(3, 8)
    state.set_binding("ns/x-1", ("n0", 6))  # n0 busy
    state.set_pod("ns/y-1", PodEntry("ns/y", 8, "n1"))  # n1 subscribed, all idle
    _, srv = start(server_thread, state)
    res = requests.post(
        f"{srv.url}/prioritize", json={"Pod": replica_pod("k"), "NodeNames": ["n0", "n1", "n2"]}, timeout=10
    ).json()
    scores = {h["Host"]: h["Score"] for h in res}
    assert set(res[0]) == {"Host", "Score"}
    assert scores["n2"] >= scores["n1"] > scores["n0"]
    assert all(0 <= s <= 10 for s in scores.values())


def test_non_replica_pods_pass_untouched(server_thread) -> None:
    _, srv = start(server_thread, cluster(2, 0))
    pod = {"metadata": {"name": "web", "namespace": "x"}}
    res = requests.post(f"{srv.url}/filter", json={"Pod": pod, "NodeNames": ["n0", "n1"]}, timeout=10).json()
    assert res["NodeNames"] == ["n0", "n1"] and res["FailedNodes"] == {}
    router = {"metadata": {"name": "k-router", "namespace": "x", "labels": {"notebookos.io/kernel": "k"}}}
    for _ in range(2):  # a kernel's router has no GPUs: passes, and nobody waits for its binding
        started = time.monotonic()
        res = requests.post(f"{srv.url}/filter", json={"Pod": router, "NodeNames": ["n0"]}, timeout=10).json()
        assert res["NodeNames"] == ["n0"] and time.monotonic() - started < 0.5


def test_bad_payloads_get_400_with_message_and_service_survives(server_thread) -> None:
    _, srv = start(server_thread, cluster(1, 8))
    r = requests.post(f"{srv.url}/filter", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = requests.post(f"{srv.url}/prioritize", json={"Pod": 3, "NodeNames": []}, timeout=10)
    assert r.status_code == 400 and "Pod must be a v1.Pod" in r.json()["error"]
    assert requests.get(f"{srv.url}/healthz", timeout=10).text == "ok"


def test_ready_and_metrics(server_thread) -> None:
    state = cluster(2, 8)
    ext, srv = start(server_thread, state)
    assert requests.get(f"{srv.url}/readyz", timeout=10).status_code == 503
    state.synced.add("nodes")
    assert requests.get(f"{srv.url}/readyz", timeout=10).status_code == 200
    state.set_binding("ns/a-1", ("n0", 2))
    state.set_pod("ns/a-1", PodEntry("ns/a", 4, "n0"))
    assert ext.update_ratio() == 2.0  # demand 4 / busy 2
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    assert 'notebookos_node_bound_gpus{node="n0"} 2.0' in text
    assert 'notebookos_node_idle_gpus{node="n0"} 6.0' in text
    assert "notebookos_subscription_ratio 2.0" in text


def test_filter_waits_for_the_previous_replica_binding_before_counting(server_thread) -> None:
    """kube-scheduler's assumed pods are invisible to extenders: a filter waits for the pods it
    passed just before to show bound, so a burst cannot all be admitted against one stale count."""
    state = cluster(1, 1)
    for i in range(2):  # n0 promised 2 of its cap of 3 (1 GPU x 3 replicas x SR 1.0)
        state.set_pod(f"ns/o{i}-1", PodEntry(f"ns/o{i}", 1, "n0"))
    ext = Extender(state, SubscriptionRatio(1.0), settle_timeout_s=5.0)

    async def factory() -> web.Application:
        return make_app(ext)

    srv = server_thread(factory)
    first = requests.post(f"{srv.url}/filter", json={"Pod": replica_pod("a"), "NodeNames": ["n0"]}, timeout=10)
    assert first.json()["NodeNames"] == ["n0"]
    state.set_pod("ns/a-1", PodEntry("ns/a", 1, None))  # the watch has seen it, not yet bound

    def bind_later() -> None:
        time.sleep(0.3)
        state.set_pod("ns/a-1", PodEntry("ns/a", 1, "n0"))  # the scheduler bound it

    t = threading.Thread(target=bind_later)
    t.start()
    started = time.monotonic()
    second = requests.post(f"{srv.url}/filter", json={"Pod": replica_pod("b"), "NodeNames": ["n0"]}, timeout=10)
    waited = time.monotonic() - started
    t.join()
    assert waited >= 0.25
    assert second.json()["NodeNames"] == [] and "cap reached" in second.json()["FailedNodes"]["n0"]


def test_filter_stops_waiting_for_a_pod_that_never_binds(server_thread) -> None:
    state = cluster(1, 8)
    ext = Extender(state, SubscriptionRatio(7.0), settle_timeout_s=0.4)

    async def factory() -> web.Application:
        return make_app(ext)

    srv = server_thread(factory)
    assert requests.post(f"{srv.url}/filter", json={"Pod": replica_pod("a"), "NodeNames": ["n0"]}, timeout=10).ok
    started = time.monotonic()
    r = requests.post(f"{srv.url}/filter", json={"Pod": replica_pod("b"), "NodeNames": ["n0"]}, timeout=10)
    assert r.json()["NodeNames"] == ["n0"] and 0.3 <= time.monotonic() - started < 3
    started = time.monotonic()  # the same pod retried does not wait for itself
    requests.post(f"{srv.url}/filter", json={"Pod": replica_pod("b"), "NodeNames": ["n0"]}, timeout=10)
    assert time.monotonic() - started < 0.3


def test_gpu_memory_requirement(server_thread) -> None:
    """The operator's notebookos.io/gpu-memory annotation (bytes per GPU) against the inventory."""
    _, srv = start(server_thread, cluster(1, 8))  # H100s of 81559 MiB

    def filt(memory: str) -> dict:
        pod = replica_pod("k")
        pod["metadata"]["annotations"]["notebookos.io/gpu-memory"] = memory
        return requests.post(f"{srv.url}/filter", json={"Pod": pod, "NodeNames": ["n0"]}, timeout=10).json()

    assert filt(str(40 * 2**30))["NodeNames"] == ["n0"]
    big = filt(str(100 * 2**30))
    assert (
        big["NodeNames"] == []
        and big["FailedNodes"]["n0"] == "node's GPUs have 79.6 GiB of memory each, the kernel needs 100 GiB"
    )
    bad = filt("40Gi")
    assert "is not a number of bytes" in bad["FailedAndUnresolvableNodes"]["n0"]

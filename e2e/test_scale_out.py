"""Scale out with a real autoscaler, through the operator: a kernel whose nodes have no GPU free
and no other node to move to waits; the operator asks for a GPU node with a capacity request;
Karpenter (its kwok provider) adds one; a replica moves there; the waiting cell runs; the request
is gone. Under CI=true nothing here skips: Karpenter is built by e2e/toolchain/karpenter.sh."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.testbed.cluster import Cluster
from e2e.testbed.karpenter import KARPENTER_GROUP, NODEPOOL_LABEL, InventoryPublisher, Karpenter, node_pool
from e2e.testbed.notebook import apply_kernel, client_for, condition, replicas_of, set_gpu_health
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until
from notebookos.operator import capacity

KERNEL = "grower"
POOL = "scale-out"
SLICE = "e2e.notebookos.io/pool"
SCALE_IN_ALLOWED = "e2e.notebookos.io/scale-in"


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[tuple[Stack, Karpenter]]:
    # This module's own slice of the GPU pool (the operator's node selector): GPU nodes other
    # modules leave behind are no place for its kernels, nor for their capacity requests.
    nodes = cluster.add_gpu_nodes(3, prefix="so", extra_labels={SLICE: POOL})
    env = {
        "NOTEBOOKOS_NODE_SELECTOR": f"{SLICE}={POOL}",
        # Scale-in: nodes Karpenter added, once a test allows it on one (the label); kernels idle 5 s.
        "NOTEBOOKOS_SCALE_IN_SELECTOR": f"{NODEPOOL_LABEL},{SCALE_IN_ALLOWED}=yes",
        "NOTEBOOKOS_SCALE_IN_IDLE_SECONDS": "5",
        "NOTEBOOKOS_SCALE_IN_INTERVAL_SECONDS": "2",
        "NOTEBOOKOS_RESYNC_SECONDS": "5",
    }
    s = Stack(cluster, extra_operator_env=env).start()
    k = Karpenter(cluster, gpus_per_node=8).start()
    pub = InventoryPublisher(cluster).start()
    crd: Any = client.CustomObjectsApi(cluster.api())
    pool = node_pool(POOL, extra_labels={SLICE: POOL}, consolidate_after="10s")
    crd.create_cluster_custom_object(KARPENTER_GROUP, "v1", "nodepools", pool)
    try:
        yield s, k
    finally:
        crd.delete_cluster_custom_object(KARPENTER_GROUP, "v1", "nodepools", POOL)
        until(lambda: not cluster.core().list_node(label_selector=f"{NODEPOOL_LABEL}={POOL}").items, 180, "pool gone")
        pub.close()
        k.close()
        s.close()
        cluster.delete_nodes(nodes)


def _requests(cluster: Cluster, ns: str) -> list[Any]:
    return list(cluster.core().list_namespaced_pod(ns, label_selector=capacity.selector(KERNEL)).items)


def test_no_node_has_room_so_a_gpu_node_is_added_and_the_waiting_cell_runs_on_it(
    cluster: Cluster, stack: tuple[Stack, Karpenter], namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = apply_kernel(cluster, namespace, KERNEL)
    kc = client_for(cluster, namespace, KERNEL)
    try:
        kc.execute_interactive("kept = 'before the move'", timeout=60)
        for node in before.values():
            set_gpu_health(cluster, node, False, stack[0].broker_url)
        t0 = time.monotonic()
        msg_id = kc.execute("import os\nprint(os.environ['NOTEBOOKOS_NODE'])")
        # The operator asks for a node: a capacity request that must not land on the kernel's nodes.
        [req] = until(lambda: _requests(cluster, namespace), 120, "a capacity request")
        assert req.spec.affinity.pod_anti_affinity is not None
        cond = until(lambda: condition(cluster, namespace, KERNEL, "CapacityRequested", "True"), 60, "the condition")
        assert "asked the autoscaler for 1 GPU node(s) of 8 GPUs" in cond["message"], cond
        reply = kc.get_shell_msg(timeout=300)
        started = time.monotonic() - t0
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok", reply["content"]
        added = {n.metadata.name for n in cluster.core().list_node(label_selector=f"{NODEPOOL_LABEL}={POOL}").items}
        assert len(added) == 1, added
        after = {r["spec"]["replicaId"]: r["status"]["nodeName"] for r in replicas_of(cluster, namespace, KERNEL)}
        assert sorted(set(after.values()) - set(before.values())) == sorted(added), (before, after)
        until(lambda: not _requests(cluster, namespace), 60, "the capacity request to be removed")
        until(lambda: condition(cluster, namespace, KERNEL, "CapacityRequested", "False"), 60, "the condition cleared")
        r = kc.execute_interactive("print(kept)", timeout=60)
        assert r["content"]["status"] == "ok"
        with capsys.disabled():
            print(f"\nscale out: cell submitted -> cell ran on the new node {started:.1f} s")
    finally:
        kc.stop_channels()
        for node in before.values():
            set_gpu_health(cluster, node, True)
        cluster.kubectl("delete", "-n", namespace, "notebookkernel", KERNEL, "--wait=false")


def test_when_load_goes_the_operator_empties_the_added_node_and_karpenter_removes_it(
    cluster: Cluster, stack: tuple[Stack, Karpenter], namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scale in chosen by NotebookOS: a kernel with a replica on a node Karpenter added, a free
    node elsewhere. Once the kernel has been idle, the operator picks the added node (its one
    replica fits elsewhere), taints it notebookos.io/scale-in and moves the replica off, caught up
    before its old pod goes; Karpenter removes the empty node (WhenEmpty). No replica is evicted or
    made anew, and no variable is lost."""

    def pool_nodes() -> list[str]:
        return [n.metadata.name for n in cluster.core().list_node(label_selector=f"{NODEPOOL_LABEL}={POOL}").items]

    until(lambda: not pool_nodes(), 180, "an earlier test's added node to be consolidated (it is empty)")
    before = apply_kernel(cluster, namespace, KERNEL)
    kc = client_for(cluster, namespace, KERNEL)
    try:
        kc.execute_interactive("kept = {'a': 1}", timeout=60)
        # First grow: the kernel's nodes have no GPU free, a node is added, a replica moves there.
        for node in before.values():
            set_gpu_health(cluster, node, False, stack[0].broker_url)
        r = kc.execute_interactive("kept['b'] = 2", timeout=300)
        assert r["content"]["status"] == "ok", r["content"]
        for node in before.values():
            set_gpu_health(cluster, node, True)
        where = {r["spec"]["replicaId"]: r["status"].get("nodeName") for r in replicas_of(cluster, namespace, KERNEL)}
        reasons = [f"{e.reason}: {e.message}" for e in cluster.core().list_namespaced_event(namespace).items]
        added_nodes = pool_nodes()
        assert len(added_nodes) == 1 and added_nodes[0] in where.values(), (added_nodes, before, where, reasons)
        [added] = added_nodes
        until(lambda: not _requests(cluster, namespace), 60, "the capacity request to be removed")
        # The load is gone. The node is one the operator may empty (the scale-in selector).
        t0 = time.monotonic()
        cluster.core().patch_node(added, {"metadata": {"labels": {SCALE_IN_ALLOWED: "yes"}}})
        until(lambda: not pool_nodes(), 240, f"the operator to empty {added} and Karpenter to remove it")
        took = time.monotonic() - t0
        until(lambda: _all_ready(cluster, namespace), 120, "every replica Ready again")
        after = {r["spec"]["replicaId"]: r["status"]["nodeName"] for r in replicas_of(cluster, namespace, KERNEL)}
        assert added not in after.values(), after
        events = cluster.core().list_namespaced_event(namespace).items
        reasons = [e.reason for e in events]
        # Moved off by the operator (two moves: the grow and the scale-in), never evicted and made anew.
        assert reasons.count("MigrationCompleted") >= 2 and "ReplicaReplaced" not in reasons, reasons
        assert any(
            e.reason == "MigrationStarted" and f"node {added} is being drained" in (e.message or "") for e in events
        ), [e.message for e in events]
        scale_in = [
            e for e in cluster.core().list_event_for_all_namespaces().items
            if e.reason == "ScaleIn" and e.involved_object.name == added
        ]  # fmt: skip
        assert scale_in and "its kernels ran no cell for" in scale_in[0].message, scale_in
        r = kc.execute_interactive("assert kept == {'a': 1, 'b': 2}, kept", timeout=60)
        assert r["content"]["status"] == "ok", r["content"]
        with capsys.disabled():
            print(f"\nscale in: node {added} allowed -> emptied by the operator and removed by Karpenter {took:.1f} s")
    finally:
        kc.stop_channels()
        for node in before.values():
            set_gpu_health(cluster, node, True)


def _all_ready(cluster: Cluster, ns: str) -> bool:
    return all((r.get("status") or {}).get("phase") == "Ready" for r in replicas_of(cluster, ns, KERNEL))

"""Scale out and in with a real autoscaler: Karpenter (its kwok cloud provider) on the real control
plane. A capacity-request pod built by notebookos.operator.capacity, created as the operator would,
makes Karpenter launch a GPU node (nvidia.com/gpu 8, the GPU pool's label and taint); kwok turns it
Ready, its GPU inventory is published, the request schedules on it; once the request is deleted,
Karpenter removes the empty node.

Under CI=true nothing here skips: Karpenter is built by e2e/toolchain/karpenter.sh when missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.testbed.cluster import Cluster
from e2e.testbed.karpenter import KARPENTER_GROUP, NODEPOOL_LABEL, InventoryPublisher, Karpenter, node_pool
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until
from notebookos import labels
from notebookos.api import NotebookKernel
from notebookos.operator import builders, capacity
from notebookos.operator.capacity import CapacityConfig

# This test's own slice of the GPU pool: other tests' fake GPU nodes must not take the request.
POOL_LABEL = "e2e.notebookos.io/pool"
GPUS = 8


@pytest.fixture(scope="module")
def karpenter(cluster: Cluster) -> Iterator[Karpenter]:
    Stack(cluster).apply_crds()  # NotebookKernel, the capacity requests' owner
    k = Karpenter(cluster, gpus_per_node=GPUS).start()
    yield k
    k.close()


@pytest.fixture(scope="module")
def inventory(cluster: Cluster) -> Iterator[InventoryPublisher]:
    pub = InventoryPublisher(cluster).start()
    yield pub
    pub.close()


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


@pytest.fixture
def pool(cluster: Cluster, karpenter: Karpenter, namespace: str) -> Iterator[str]:
    """A NodePool of this test's own: its nodes carry its own slice label. Removed afterwards,
    nodes included, while Karpenter still runs (its finalizers need it)."""
    crd: Any = client.CustomObjectsApi(cluster.api())
    name = namespace
    crd.create_cluster_custom_object(
        KARPENTER_GROUP, "v1", "nodepools", node_pool(name, extra_labels={POOL_LABEL: name}, consolidate_after="10s")
    )
    scheduling: Any = client.SchedulingV1Api(cluster.api())
    created_class = False
    try:
        scheduling.create_priority_class(capacity.priority_class(CapacityConfig()))
        created_class = True
    except ApiException as exc:
        if exc.status != 409:
            raise
    try:
        yield name
    finally:
        crd.delete_cluster_custom_object(KARPENTER_GROUP, "v1", "nodepools", name)
        until(
            lambda: not cluster.core().list_node(label_selector=f"{NODEPOOL_LABEL}={name}").items,
            120,
            f"the nodes of NodePool {name} to be removed with it",
        )
        if created_class:  # the chart's e2e test applies its own
            scheduling.delete_priority_class(labels.CAPACITY_PRIORITY_CLASS)


def test_a_capacity_request_brings_a_gpu_node_and_its_removal_takes_it_away(
    cluster: Cluster,
    inventory: InventoryPublisher,
    namespace: str,
    pool: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    core = cluster.core()
    crd: Any = client.CustomObjectsApi(cluster.api())

    def nodepool_ready() -> bool:
        np = crd.get_cluster_custom_object(KARPENTER_GROUP, "v1", "nodepools", pool)
        conds = np.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    until(nodepool_ready, 60, f"NodePool {pool} to be Ready (its KWOKNodeClass Ready)")

    cfg = CapacityConfig(
        gpus_per_node=GPUS, node_selector={labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE, POOL_LABEL: pool}
    )
    kernel_obj = crd.create_namespaced_custom_object(
        "notebookos.io",
        "v1alpha1",
        namespace,
        "notebookkernels",
        {"apiVersion": "notebookos.io/v1alpha1", "kind": "NotebookKernel", "metadata": {"name": "k"}, "spec": {}},
    )
    kernel = NotebookKernel.model_validate(kernel_obj)
    pod = capacity.capacity_pod(kernel, builders.owner_reference(kernel_obj), 0, cfg)
    name = pod["metadata"]["name"]

    # ---- scale out -----------------------------------------------------------------------------
    t0 = time.monotonic()
    created = core.create_namespaced_pod(namespace, pod)
    # Admission resolved the class: autoscalers act on this priority, real pods preempt it.
    assert created.spec.priority == capacity.DEFAULT_PRIORITY
    assert created.spec.preemption_policy == "Never"

    def claim() -> Any:
        items = crd.list_cluster_custom_object(
            KARPENTER_GROUP, "v1", "nodeclaims", label_selector=f"{NODEPOOL_LABEL}={pool}"
        )["items"]
        return items[0] if items else None

    nodeclaim = until(claim, 120, f"Karpenter to create a NodeClaim in NodePool {pool} for {name}")
    t_claim = time.monotonic()
    assert nodeclaim["spec"]["resources"]["requests"][labels.GPU_RESOURCE] == str(GPUS)

    def registered_node() -> Any:
        nodes = core.list_node(label_selector=f"{NODEPOOL_LABEL}={pool}").items
        ready = [
            n for n in nodes if _ready(n) and not any(t.key == "karpenter.sh/unregistered" for t in n.spec.taints or [])
        ]
        return ready[0] if ready else None

    node = until(
        registered_node, 120, f"the node of NodeClaim {nodeclaim['metadata']['name']} to be Ready and registered"
    )
    t_ready = time.monotonic()
    node_name = node.metadata.name
    assert node.status.allocatable[labels.GPU_RESOURCE] == str(GPUS)
    assert node.metadata.labels[labels.GPU_POOL_LABEL] == labels.GPU_POOL_VALUE
    assert node.metadata.labels[POOL_LABEL] == pool
    assert {(t.key, t.value, t.effect) for t in node.spec.taints or []} >= {
        (labels.GPU_TAINT_KEY, labels.GPU_TAINT_VALUE, labels.GPU_TAINT_EFFECT)
    }
    # The test bed's kwok manages it because the provider gives it kwok's annotation.
    assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"

    def inventory_of() -> Any:
        ann = core.read_node(node_name).metadata.annotations or {}
        raw = ann.get(labels.GPU_INVENTORY_ANNOTATION)
        return json.loads(raw) if raw else None

    devices = until(inventory_of, 60, f"the GPU inventory of {node_name} to be published")
    t_inventory = time.monotonic()
    assert [d["index"] for d in devices] == list(range(GPUS))
    assert len({d["uuid"] for d in devices}) == GPUS and all(d["healthy"] for d in devices)

    def scheduled() -> Any:
        p = core.read_namespaced_pod(name, namespace)
        return p if p.spec.node_name and p.status.phase == "Running" else None

    running = until(scheduled, 60, f"{name} to be scheduled and Running")
    t_sched = time.monotonic()
    assert running.spec.node_name == node_name

    # ---- scale in ------------------------------------------------------------------------------
    core.delete_namespaced_pod(name, namespace)
    t_del = time.monotonic()

    def node_gone() -> bool:
        try:
            core.read_node(node_name)
        except ApiException as exc:
            return exc.status == 404
        return False

    until(node_gone, 180, f"Karpenter to remove the empty node {node_name} (consolidateAfter 10s, WhenEmpty)")
    t_gone = time.monotonic()
    until(lambda: claim() is None, 60, f"the NodeClaim of {node_name} to be gone")
    assert not inventory.errors or all("NotFound" in e or "404" in e for e in inventory.errors), inventory.errors

    with capsys.disabled():
        print(
            f"\nautoscale: capacity request -> NodeClaim {t_claim - t0:.1f}s, -> node Ready {t_ready - t0:.1f}s, "
            f"-> inventory {t_inventory - t0:.1f}s, -> request Running {t_sched - t0:.1f}s; "
            f"request deleted -> node removed {t_gone - t_del:.1f}s"
        )

"""Capacity-request pods against cluster-autoscaler's documented rules (FAQ: "How does Cluster
Autoscaler work with Pod Priority and Preemption?", "What types of pods can prevent CA from removing
a node?") and what Karpenter needs to launch a node for them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from notebookos import labels
from notebookos.api import NotebookKernel
from notebookos.operator import builders, capacity
from notebookos.operator.capacity import CapacityConfig
from notebookos.operator.config import ConfigError
from tests.operator.factories import kernel_obj

GPU_POOL_TAINT = {"key": labels.GPU_TAINT_KEY, "value": labels.GPU_TAINT_VALUE, "effect": labels.GPU_TAINT_EFFECT}
GPU_POOL_NODE_LABELS = {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE, "kubernetes.io/os": "linux"}


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    """The API's toleration matching (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint["key"]:
                return True
        elif t.get("key") == taint["key"] and t.get("value", "") == taint.get("value", ""):
            return True
    return False


@pytest.fixture
def pod(kernel: NotebookKernel, owner: dict[str, Any]) -> dict[str, Any]:
    return capacity.capacity_pod(kernel, owner, 0, CapacityConfig())


def test_priority_is_above_the_expendable_cutoff_and_below_real_pods() -> None:
    pc = capacity.priority_class(CapacityConfig())
    # cluster-autoscaler does not scale up for pods with priority below the cutoff (default -10).
    assert pc["value"] >= capacity.CLUSTER_AUTOSCALER_EXPENDABLE_CUTOFF
    # Pods without a class get priority 0 (or the global default, which is not this class).
    assert pc["value"] < 0
    assert pc["globalDefault"] is False


def test_capacity_requests_never_preempt_real_pods() -> None:
    assert capacity.priority_class(CapacityConfig())["preemptionPolicy"] == "Never"


def test_the_pod_names_the_class_and_leaves_priority_to_admission(pod: dict[str, Any]) -> None:
    # Setting spec.priority beside priorityClassName is refused unless equal; admission fills it.
    assert pod["spec"]["priorityClassName"] == labels.CAPACITY_PRIORITY_CLASS
    assert "priority" not in pod["spec"] and "preemptionPolicy" not in pod["spec"]


@pytest.mark.parametrize("priority", [-11, 0, 5])
def test_a_priority_autoscalers_ignore_or_real_pods_cannot_preempt_is_refused(priority: int) -> None:
    with pytest.raises(ConfigError, match="priority"):
        CapacityConfig(priority=priority)


def test_no_annotation_keeps_the_node_from_scale_down(pod: dict[str, Any]) -> None:
    ann = pod["metadata"].get("annotations", {})
    assert ann.get(capacity.SAFE_TO_EVICT_ANNOTATION) != "false"
    # A pod of a custom controller (the kernel) keeps its node unless it says it may be evicted.
    assert ann[capacity.SAFE_TO_EVICT_ANNOTATION] == "true"
    assert "karpenter.sh/do-not-disrupt" not in ann
    # Local storage also keeps a node under cluster-autoscaler.
    assert not pod["spec"].get("volumes")


def test_it_requests_a_whole_nodes_gpus_which_autoscalers_simulate(pod: dict[str, Any]) -> None:
    (c,) = pod["spec"]["containers"]
    # An extended resource the GPU pool's nodes advertise: both autoscalers' simulations fit it.
    assert c["resources"]["requests"] == {labels.GPU_RESOURCE: "8"}
    assert c["resources"]["limits"] == c["resources"]["requests"]
    assert c["image"] == capacity.PAUSE_IMAGE
    assert "command" not in c and "args" not in c


def test_the_shape_is_configurable(kernel: NotebookKernel, owner: dict[str, Any]) -> None:
    p = capacity.capacity_pod(kernel, owner, 2, CapacityConfig(gpus_per_node=4, image="mirror/pause:3.10"))
    (c,) = p["spec"]["containers"]
    assert c["resources"]["limits"] == {labels.GPU_RESOURCE: "4"}
    assert c["image"] == "mirror/pause:3.10"
    assert p["metadata"]["name"] == "k-capacity-2"


def test_it_selects_and_tolerates_the_gpu_pool(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    assert spec["schedulerName"] == "default-scheduler"
    assert all(GPU_POOL_NODE_LABELS.get(k) == v for k, v in spec["nodeSelector"].items())
    assert spec["nodeSelector"][labels.GPU_POOL_LABEL] == labels.GPU_POOL_VALUE
    assert tolerates(spec["tolerations"], GPU_POOL_TAINT)
    # Same pool terms as replica pods, so the new node is one a replica can use.
    cfg = CapacityConfig.from_env({"NOTEBOOKOS_NODE_SELECTOR": "zone=a"})
    assert cfg.node_selector == {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE, "zone": "a"}


def test_it_is_owned_by_the_kernel_and_listed_by_label(
    pod: dict[str, Any], kernel: NotebookKernel, owner: dict[str, Any]
) -> None:
    assert pod["metadata"]["ownerReferences"] == [owner] == [builders.owner_reference(kernel_obj("k"))]
    assert pod["metadata"]["namespace"] == "ns"
    lbl = pod["metadata"]["labels"]
    assert lbl[labels.CAPACITY_REQUEST_LABEL] == labels.CAPACITY_REQUEST_VALUE and lbl[labels.KERNEL_LABEL] == "k"
    assert labels.RUNNER_LABEL not in lbl  # nothing to run: kwok alone keeps it Running in e2e
    assert capacity.selector("k") == f"{labels.CAPACITY_REQUEST_LABEL}=true,{labels.KERNEL_LABEL}=k"
    assert capacity.selector() == f"{labels.CAPACITY_REQUEST_LABEL}=true"


def test_the_pod_cannot_do_anything(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    (c,) = spec["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["terminationGracePeriodSeconds"] == 0


@given(
    wanted=hs.integers(0, 20),
    of_kernel=hs.integers(0, 20),
    in_cluster=hs.integers(0, 40),
    per_kernel=hs.integers(0, 10),
    per_cluster=hs.integers(0, 30),
)
def test_requests_stay_within_both_bounds(
    wanted: int, of_kernel: int, in_cluster: int, per_kernel: int, per_cluster: int
) -> None:
    cfg = CapacityConfig(max_per_kernel=per_kernel, max_per_cluster=per_cluster)
    n = capacity.allowed(wanted, of_kernel, in_cluster, cfg)
    assert n >= 0
    if n:
        assert of_kernel + n <= min(wanted, per_kernel)
        assert in_cluster + n <= per_cluster
        # As many as the bounds let it: one more would break one of them.
        assert of_kernel + n == min(wanted, per_kernel) or in_cluster + n == per_cluster


def test_config_from_env() -> None:
    cfg = CapacityConfig.from_env(
        {
            "NOTEBOOKOS_CAPACITY_GPUS_PER_NODE": "4",
            "NOTEBOOKOS_CAPACITY_MAX_PER_KERNEL": "1",
            "NOTEBOOKOS_CAPACITY_MAX_PER_CLUSTER": "6",
            "NOTEBOOKOS_CAPACITY_PRIORITY": "-3",
            "NOTEBOOKOS_CAPACITY_PRIORITY_CLASS": "pc",
            "NOTEBOOKOS_CAPACITY_IMAGE": "img",
        }
    )
    assert (cfg.gpus_per_node, cfg.max_per_kernel, cfg.max_per_cluster) == (4, 1, 6)
    assert (cfg.priority, cfg.priority_class, cfg.image) == (-3, "pc", "img")
    assert CapacityConfig.from_env({}) == CapacityConfig()
    with pytest.raises(ConfigError, match="NOTEBOOKOS_CAPACITY_PRIORITY"):
        CapacityConfig.from_env({"NOTEBOOKOS_CAPACITY_PRIORITY": "-20"})


def test_a_request_keeps_off_nodes_full_of_replicas_so_only_a_new_node_fits() -> None:
    """Replica pods request no nvidia.com/gpu: to a scheduler, a node full of replicas has its GPUs
    free. The request must not land there (nor beside another request), or no node is added."""
    from notebookos.operator import naming

    kernel = NotebookKernel.model_validate(
        {"apiVersion": "notebookos.io/v1alpha1", "kind": "NotebookKernel", "metadata": {"name": "k", "namespace": "ns"}}
    )
    pod = capacity.capacity_pod(kernel, {"uid": "u"}, 0, CapacityConfig())
    terms = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {t["topologyKey"] for t in terms} == {"kubernetes.io/hostname"}
    away = [t["labelSelector"]["matchLabels"] for t in terms]
    assert {labels.COMPONENT_LABEL: naming.COMPONENT_REPLICA} in away
    assert {labels.CAPACITY_REQUEST_LABEL: labels.CAPACITY_REQUEST_VALUE} in away
    assert "nodeAffinity" not in pod["spec"]["affinity"], "Karpenter ignores pods with hostname node affinity"


def test_demand_counts_unplaced_replicas_and_a_move_with_no_target_and_refuses_impossible_shapes() -> None:
    from notebookos.api import KernelReplica
    from notebookos.operator import scaling

    def replica(rid: int, placed: bool) -> KernelReplica:
        status: dict[str, object] = {"nodeName": "n"} if placed else {
            "conditions": [{"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": "x",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip
        return KernelReplica.model_validate(
            {
                "metadata": {"name": f"k-{rid}", "namespace": "ns"},
                "spec": {"kernelName": "k", "replicaId": rid},
                "status": status,
            }
        )

    def kernel(gpus: int) -> NotebookKernel:
        return NotebookKernel.model_validate(
            {"metadata": {"name": "k", "namespace": "ns"}, "spec": {"resources": {"gpus": gpus}}}
        )

    cfg = CapacityConfig(gpus_per_node=8)
    rs = [replica(1, True), replica(2, False), replica(3, True)]
    assert scaling.demand(kernel(2), rs, None, cfg).nodes == 1
    d = scaling.demand(kernel(2), rs, "no node has 2 GPUs free", cfg)
    assert d.nodes == 2 and "replica 2 cannot be placed" in d.why and "no node has 2 GPUs free" in d.why
    assert scaling.demand(kernel(2), [replica(1, True)], None, cfg).nodes == 0
    big = scaling.demand(kernel(8), rs, None, CapacityConfig(gpus_per_node=4))
    assert (
        big.nodes == 0 and big.impossible and "needs 8 GPUs per cell and the GPU pool's nodes have 4" in big.impossible
    )


def test_no_request_for_gpu_memory_no_node_of_the_pool_has() -> None:
    """A request cannot ask for GPU memory: a kernel needing more per GPU than the pool's nodes
    have is told so, and gets no request (nodes like the others would not help)."""
    from notebookos.operator import scaling

    kernel = NotebookKernel.model_validate(
        {"metadata": {"name": "k", "namespace": "ns"}, "spec": {"resources": {"gpus": 1, "gpuMemory": "200Gi"}}}
    )
    d = scaling.demand(kernel, [], "no node has 1 GPU free", CapacityConfig(), pool_gpu_memory=80 << 30)
    assert d.nodes == 0 and d.impossible is not None
    assert "needs 200 GiB of memory per GPU" in d.impossible and "at most 80 GiB" in d.impossible
    assert scaling.demand(kernel, [], "no node has 1 GPU free", CapacityConfig(), pool_gpu_memory=256 << 30).nodes == 1


def test_the_request_on_the_node_a_replica_moves_to_is_held_until_it_lands() -> None:
    """Demand met, a replica on its way to the node that arrived: that node's request stays (else
    the node looks empty and the autoscaler takes it back); requests still pending, or on nodes no
    replica is moving to, go."""
    from notebookos.operator import scaling

    def req(name: str, node: str | None) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"nodeName": node} if node else {}}

    have = [req("k-capacity-0", "new-1"), req("k-capacity-1", None), req("k-capacity-2", "other")]
    assert [p["metadata"]["name"] for p in scaling.held(have, ["new-1"])] == ["k-capacity-0"]
    assert scaling.held(have, []) == []

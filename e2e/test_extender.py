"""The extender, broker and node agent against the real control plane.

The real kube-scheduler (a second one, with the extender in its configuration) places a kernel's
replica pods (made here as the operator makes them) on distinct GPU nodes within the subscription
cap, and leaves them Pending with the extender's reason once the cap is reached. The broker
authenticates callers with real service-account tokens (TokenReview) and records grants in
KernelReplica status. The node agent publishes the inventory and records audit events.

Each test gets its own scheduler name: the session's control plane is shared with other areas'
tests, which may run their own notebookos-scheduler, and two schedulers must never race for a pod.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.testbed.cluster import Cluster, free_port
from e2e.testbed.wait import until
from notebookos import labels
from notebookos.extender.binding_store import KubeBindingStore
from notebookos.extender.cluster_state import binding_from_replica, pod_entry_from_object
from notebookos.extender.scheduler_config import extender_entry
from notebookos.policy.ledger import Grant
from notebookos.policy.placement import SubscriptionRatio

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# Process names of their own: the full stack (e2e/testbed/stack.py) may run "broker" meanwhile.
BROKER = "broker-extender-e2e"
AGENT = "node-agent-extender-e2e"


def replica_pod(name: str, kernel: str, gpus: int, scheduler: str, nodes: list[str]) -> dict[str, Any]:
    """A replica pod as the operator makes it: kernel label, GPU annotation, GPU pool selector and
    toleration, required anti-affinity against its siblings; plus affinity to this test's nodes."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {labels.KERNEL_LABEL: kernel, labels.COMPONENT_LABEL: "replica"},
            "annotations": {labels.REPLICA_GPUS_ANNOTATION: str(gpus)},
        },
        "spec": {
            "schedulerName": scheduler,
            "nodeSelector": {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE},
            "tolerations": [
                {
                    "key": labels.GPU_TAINT_KEY,
                    "operator": "Equal",
                    "value": labels.GPU_TAINT_VALUE,
                    "effect": labels.GPU_TAINT_EFFECT,
                }
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}
                        ]
                    }
                },
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "labelSelector": {"matchLabels": {labels.KERNEL_LABEL: kernel}},
                            "topologyKey": "kubernetes.io/hostname",
                        }
                    ]
                },
            },
            "containers": [{"name": "replica", "image": "registry.k8s.io/pause:3.10"}],
        },
    }


def start_extender(cluster: Cluster, name: str, max_ratio: float, extra: tuple[str, ...] = ()) -> str:
    port = free_port()
    cluster.spawn(
        name,
        [
            PY,
            "-m",
            "notebookos.extender.extender_main",
            f"--port={port}",
            f"--max-subscription-ratio={max_ratio}",
            "--ratio-interval=1",
            "--log-level=DEBUG",
            *extra,
        ],
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def scheduler(cluster: Cluster) -> Iterator[Any]:
    """start(max_ratio) -> scheduler name; the extender and scheduler are stopped afterwards."""
    started: list[str] = []

    def start(max_ratio: float, node_cache_capable: bool = True, tag: str | None = None) -> str:
        tag = tag or uuid.uuid4().hex[:6]
        url = start_extender(cluster, f"extender-{tag}", max_ratio)
        started.append(f"extender-{tag}")
        sched = f"{labels.SCHEDULER_NAME}-{tag}"
        cluster.start_scheduler(
            sched, [extender_entry(url, node_cache_capable=node_cache_capable)], proc_name=f"scheduler-{tag}"
        )
        started.append(f"scheduler-{tag}")
        return sched

    yield start
    for name in reversed(started):
        cluster.stop(name)


def node_of(core: client.CoreV1Api, ns: str, name: str) -> str | None:
    return core.read_namespaced_pod(name, ns).spec.node_name


@pytest.mark.parametrize("node_cache_capable", [True, False], ids=["names", "objects"])
def test_scheduler_places_replicas_on_distinct_nodes_within_cap(
    cluster: Cluster, namespace: str, scheduler: Any, node_cache_capable: bool
) -> None:
    core = cluster.core()
    nodes = cluster.add_gpu_nodes(4, gpus=2, prefix="ext-place")
    try:
        sched = scheduler(7.0, node_cache_capable)
        pods = []
        for kernel in ("ka", "kb"):
            for r in (1, 2, 3):
                body = replica_pod(f"{kernel}-{r}", kernel, 2, sched, nodes)
                core.create_namespaced_pod(namespace, body)
                pods.append((kernel, f"{kernel}-{r}"))
        placed = until(
            lambda: (p := {name: node_of(core, namespace, name) for _, name in pods}) and all(p.values()) and p,
            60,
            "the notebookos scheduler to bind all replica pods",
        )
        for kernel in ("ka", "kb"):
            hosts = [placed[f"{kernel}-{r}"] for r in (1, 2, 3)]
            assert len(set(hosts)) == 3, f"siblings of {kernel} share a node: {hosts}"
        per_node: dict[str, int] = {}
        for n in placed.values():
            per_node[n] = per_node.get(n, 0) + 2
        assert all(v <= 2 * 3 * 7.0 for v in per_node.values())
        assert set(placed.values()) <= set(nodes)
        # the extender's prioritize spreads: with 4 empty nodes the 6 replicas use all of them
        assert len(set(placed.values())) == 4
    finally:
        cluster.delete_nodes(nodes)


def test_cap_reached_leaves_pods_pending_with_the_extenders_reason(
    cluster: Cluster, namespace: str, scheduler: Any
) -> None:
    core = cluster.core()
    nodes = cluster.add_gpu_nodes(3, gpus=1, prefix="ext-cap")
    try:
        # SR capped at 1.0 (nothing busy): each 1-GPU node may be promised 1 x 3 x 1.0 = 3 GPUs.
        sched = scheduler(1.0)
        names = []
        for k in range(3):
            for r in (1, 2, 3):
                core.create_namespaced_pod(namespace, replica_pod(f"k{k}-{r}", f"k{k}", 1, sched, nodes))
                names.append(f"k{k}-{r}")
        until(lambda: all(node_of(core, namespace, n) for n in names), 60, "9 replica pods to fill the cap of 3 nodes")
        core.create_namespaced_pod(namespace, replica_pod("over-1", "over", 1, sched, nodes))

        def failed_event() -> str | None:
            evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=over-1").items
            for e in evs:
                if e.reason == "FailedScheduling" and "GPU subscription cap reached" in (e.message or ""):
                    return str(e.message)
            return None

        message = until(failed_event, 60, "a FailedScheduling event with the extender's reason")
        assert "3 of 3 GPUs promised" in message, message
        assert node_of(core, namespace, "over-1") is None
        assert core.read_namespaced_pod("over-1", namespace).status.phase == "Pending"
        # a replica leaving frees room: the pending pod is placed where it left
        freed = node_of(core, namespace, "k0-1")
        core.delete_namespaced_pod("k0-1", namespace, grace_period_seconds=0)
        assert until(lambda: node_of(core, namespace, "over-1"), 90, "the pending replica to be placed") == freed
    finally:
        cluster.delete_nodes(nodes)


def test_a_burst_of_kernels_never_passes_the_cap(cluster: Cluster, namespace: str, scheduler: Any) -> None:
    """Eight kernels' replicas created at once against one node whose cap is 3: the scheduler's
    assumed pods are invisible to the extender, which waits for each passed pod to show bound."""
    core = cluster.core()
    nodes = cluster.add_gpu_nodes(1, gpus=1, prefix="ext-burst")
    try:
        # all pods queued before the scheduler starts: it takes them back to back
        tag = uuid.uuid4().hex[:6]
        names = [f"b{k}-1" for k in range(8)]
        for k, name in enumerate(names):
            core.create_namespaced_pod(
                namespace, replica_pod(name, f"b{k}", 1, f"{labels.SCHEDULER_NAME}-{tag}", nodes)
            )
        scheduler(1.0, tag=tag)

        def settled() -> list[str] | None:
            bound = [n for n in names if node_of(core, namespace, n)]
            evs = core.list_namespaced_event(namespace).items
            failed = {e.involved_object.name for e in evs if e.reason == "FailedScheduling"}
            return bound if len(bound) + len(failed - set(bound)) == len(names) else None

        bound = until(settled, 60, "every pod to be bound or refused")
        assert len(bound) == 3, f"cap of 3 GPUs passed: {bound}"
    finally:
        cluster.delete_nodes(nodes)


def expected_ratio(cluster: Cluster) -> float:
    """SR from a fresh LIST: demand (each live kernel's per-cell GPUs, once) over busy (GPUs in
    KernelReplica bindings), clamped to [1, 7]. Cluster-wide: other tests' kernels count too."""
    core = cluster.core()
    custom = client.CustomObjectsApi(cluster.api())
    raw = core.list_pod_for_all_namespaces(label_selector=labels.KERNEL_LABEL, _preload_content=False)
    entries = [pod_entry_from_object(p) for p in json.loads(raw.data)["items"]]
    demand = sum({e.kernel: e.gpus for e in entries if e is not None}.values())
    replicas = custom.list_cluster_custom_object("notebookos.io", "v1alpha1", "kernelreplicas")["items"]
    busy = sum(b[1] for b in map(binding_from_replica, replicas) if b is not None)
    return SubscriptionRatio.instantaneous(demand, busy, 7.0)


def test_extender_sees_bindings_and_computes_the_ratio(cluster: Cluster, namespace: str, crds: None) -> None:
    """The extender's watches end to end: a replica pod on a node and its KernelReplica's GPU
    binding become the node's subscribed and bound GPUs, and SR = demand / busy as a fresh LIST
    of the whole cluster gives it."""
    core = cluster.core()
    custom = client.CustomObjectsApi(cluster.api())
    [node] = cluster.add_gpu_nodes(1, gpus=4, prefix="ext-ratio")
    name = "extender-ratio"
    try:
        url = start_extender(cluster, name, 7.0, ("--ratio-window=1",))
        for k, gpus in (("r0", 2), ("r1", 1)):  # demand 3
            pod = replica_pod(f"{k}-1", k, gpus, "default-scheduler", [node])
            pod["spec"]["nodeName"] = node
            core.create_namespaced_pod(namespace, pod)
        custom.create_namespaced_custom_object(
            "notebookos.io",
            "v1alpha1",
            namespace,
            "kernelreplicas",
            {
                "apiVersion": "notebookos.io/v1alpha1",
                "kind": "KernelReplica",
                "metadata": {"name": "r0-1"},
                "spec": {"kernelName": "r0", "replicaId": 1},
            },
        )
        inv = json.loads(core.read_node(node).metadata.annotations[labels.GPU_INVENTORY_ANNOTATION])
        binding = {
            "node": node,
            "devices": [d["uuid"] for d in inv[:2]],
            "executionId": "cell-1",
            "since": "2026-01-01T00:00:00Z",
            "grantSeq": 1,
        }
        custom.patch_namespaced_custom_object_status(
            "notebookos.io", "v1alpha1", namespace, "kernelreplicas", "r0-1", {"status": {"gpuBinding": binding}}
        )
        expected = [
            f'notebookos_node_bound_gpus{{node="{node}"}} 2.0',
            f'notebookos_node_idle_gpus{{node="{node}"}} 2.0',
            f'notebookos_node_subscribed_gpus{{node="{node}"}} 3.0',
        ]
        seen = [""]

        def shows_all() -> bool:
            seen[0] = requests.get(f"{url}metrics", timeout=5).text
            ratio = re.search(r"^notebookos_subscription_ratio (\S+)$", seen[0], re.M)
            return (
                all(line in seen[0] for line in expected)
                and ratio is not None
                and abs(float(ratio[1]) - expected_ratio(cluster)) < 1e-6
            )

        try:
            until(shows_all, 30, f"the extender's metrics to show {expected}")
        except TimeoutError as e:
            raise AssertionError(f"{e}; last metrics:\n{seen[0]}") from None
    finally:
        cluster.stop(name)
        cluster.delete_nodes([node])


# ------------------------------------------------------------------------------------------ broker


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))


def _kernel_pod(core: client.CoreV1Api, ns: str, name: str, sa: str, node: str, kernel: str | None) -> str:
    core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})
    meta: dict[str, Any] = {"name": name}
    if kernel:
        meta["labels"] = {labels.KERNEL_LABEL: kernel}
    pod = core.create_namespaced_pod(
        ns,
        {
            "metadata": meta,
            "spec": {
                "serviceAccountName": sa,
                "nodeName": node,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
            },
        },
    )
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[],
            expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=name, uid=pod.metadata.uid
            ),
        )
    )
    return str(core.create_namespaced_service_account_token(sa, ns, req).status.token)


def ready_answer(r: requests.Response) -> requests.Response | None:
    """The answer once the broker knows the node (404 UnknownNode before its watch has it).
    Not `r` itself in a condition: a 4xx Response is falsy."""
    return None if r.status_code == 404 else r


def test_broker_with_real_tokens_and_status_records(cluster: Cluster, namespace: str, crds: None) -> None:
    core = cluster.core()
    custom = client.CustomObjectsApi(cluster.api())
    node, other = cluster.add_gpu_nodes(2, gpus=2, prefix="ext-broker")
    try:
        for r in (1, 2):
            custom.create_namespaced_custom_object(
                "notebookos.io",
                "v1alpha1",
                namespace,
                "kernelreplicas",
                {
                    "apiVersion": "notebookos.io/v1alpha1",
                    "kind": "KernelReplica",
                    "metadata": {"name": f"k1-{r}"},
                    "spec": {"kernelName": "k1", "replicaId": r},
                },
            )
        # the operator records where replica 1 runs; replica 2's node is not known yet
        custom.patch_namespaced_custom_object_status(
            "notebookos.io", "v1alpha1", namespace, "kernelreplicas", "k1-1", {"status": {"nodeName": node}}
        )
        tok_k1 = _kernel_pod(core, namespace, "k1-router", "k1", node, "k1")
        tok_k2 = _kernel_pod(core, namespace, "k2-router", "k2", node, "k2")
        tok_plain = _kernel_pod(core, namespace, "plain", "plain", node, None)

        port = free_port()
        argv = [PY, "-m", "notebookos.extender.broker_main", "--host=127.0.0.1", f"--port={port}"]
        cluster.spawn(BROKER, argv, ready_url=f"http://127.0.0.1:{port}/readyz")
        url = f"http://127.0.0.1:{port}"

        def acquire(token: str, replica: int, eid: str, gpus: int = 1) -> requests.Response:
            body = {"kernel": "k1", "replica": replica, "node": node, "gpus": gpus, "executionId": eid}
            return requests.post(
                f"{url}/v1/acquire", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )

        # the broker learns the node's inventory from its watch
        r = until(lambda: ready_answer(acquire(tok_k1, 1, "cell-1")), 30, "the broker to see the node")
        assert r.status_code == 200, r.text
        devices = r.json()["devices"]
        inventory = json.loads(core.read_node(node).metadata.annotations[labels.GPU_INVENTORY_ANNOTATION])
        assert len(devices) == 1 and devices[0] in {d["uuid"] for d in inventory}
        status = custom.get_namespaced_custom_object("notebookos.io", "v1alpha1", namespace, "kernelreplicas", "k1-1")
        binding = status["status"]["gpuBinding"]
        assert binding["devices"] == devices and binding["executionId"] == "cell-1" and binding["node"] == node

        # wrong kernel, no kernel, forged token
        r = acquire(tok_k2, 2, "cell-x")
        assert r.status_code == 403 and "k1" in r.json()["reason"]
        r = acquire(tok_plain, 2, "cell-y")
        assert r.status_code == 403 and "label" in r.json()["reason"]
        assert acquire("not-a-token", 2, "cell-z").status_code == 401

        # restart: the ledger comes back from status.gpuBinding; nothing is granted twice
        cluster.stop(BROKER)
        cluster.spawn(BROKER, argv, ready_url=f"http://127.0.0.1:{port}/readyz")
        again = until(lambda: ready_answer(acquire(tok_k1, 1, "cell-1")), 30, "the broker again")
        assert again.status_code == 200 and again.json()["devices"] == devices
        r2 = acquire(tok_k1, 2, "cell-2", gpus=2)
        assert r2.status_code == 409 and r2.json()["code"] == "Unavailable"
        r2 = acquire(tok_k1, 2, "cell-2", gpus=1)
        assert r2.status_code == 200 and r2.json()["devices"] != devices

        rel = requests.post(
            f"{url}/v1/release",
            json={"executionId": "cell-1"},
            headers={"Authorization": f"Bearer {tok_k1}"},
            timeout=30,
        )
        assert rel.json() == {"released": True, "devices": devices}
        status = custom.get_namespaced_custom_object("notebookos.io", "v1alpha1", namespace, "kernelreplicas", "k1-1")
        assert "gpuBinding" not in status.get("status", {})
        assert status["status"]["gpuSecondsBound"] > 0  # the grant's GPU-seconds, added as it ended

        # never on a node where replica 1 does not run
        body = {"kernel": "k1", "replica": 1, "node": other, "gpus": 1, "executionId": "cell-w"}
        r = requests.post(f"{url}/v1/acquire", json=body, headers={"Authorization": f"Bearer {tok_k1}"}, timeout=30)
        assert r.status_code == 409 and f"runs on node {node}, not {other}" in r.json()["reason"]

        # the store's conditional clear (read, check the execution, write on that version) never
        # removes a newer execution's record
        store = KubeBindingStore(cluster.api())
        stale = Grant(f"{namespace}/k1", 2, node, ("GPU-old",), "cell-old", 1)
        asyncio.run(store.clear(stale))
        records = asyncio.run(store.load())
        assert [g.execution_id for g in records if g.kernel == f"{namespace}/k1"] == ["cell-2"]

        # deleting a replica frees what it held: both GPUs become grantable again
        custom.delete_namespaced_custom_object("notebookos.io", "v1alpha1", namespace, "kernelreplicas", "k1-2")
        r3 = until(
            lambda: (x := acquire(tok_k1, 1, "cell-3", gpus=2)).status_code == 200 and x,
            30,
            "the broker to free the deleted replica's GPUs",
        )
        assert sorted(r3.json()["devices"]) == sorted(d["uuid"] for d in inventory)
    finally:
        cluster.stop(BROKER)
        cluster.delete_nodes([node, other])


# -------------------------------------------------------------------------------------- node agent


def test_node_agent_publishes_inventory_and_audits(cluster: Cluster) -> None:
    [node] = cluster.add_gpu_nodes(1, gpus=8, prefix="ext-agent")
    core = cluster.core()
    try:
        out = cluster.spawn(
            AGENT,
            [PY, "-m", "notebookos.extender.node_agent_main", f"--node={node}", "--nvml=fake:3", "--once"],
        )
        assert out.wait(60) == 0, cluster.tail(AGENT)
        inv = json.loads(core.read_node(node).metadata.annotations[labels.GPU_INVENTORY_ANNOTATION])
        assert [d["uuid"] for d in inv] == [f"GPU-fake-{node}-{i}" for i in range(3)]

        # The audit, as the DaemonSet runs it: a process on a GPU that no grant covers gives one
        # Warning event on the node and one count in the agent's metrics, however many audits see it.
        devices = [{"uuid": f"GPU-{node}-{i}", "memoryMiB": 81559} for i in range(3)]
        devices[1]["pids"] = [4242]
        port = free_port()
        agent = [
            PY,
            "-m",
            "notebookos.extender.node_agent_main",
            f"--node={node}",
            f"--nvml=fake:{json.dumps(devices)}",
        ]
        cluster.spawn(AGENT, [*agent, "--interval=0.5", f"--metrics-port={port}"])

        def metric(name: str) -> dict[str, float]:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except requests.ConnectionError:
                return {}
            return {
                line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(name)
            }

        until(lambda: metric("notebookos_gpu_audits_total").get("notebookos_gpu_audits_total", 0) >= 3, 60, "3 audits")
        assert metric("notebookos_gpu_audit_violations_total") == {
            f'notebookos_gpu_audit_violations_total{{device="GPU-{node}-1",reason="GPUUsedWithoutGrant"}}': 1.0
        }
        ungranted = metric("notebookos_gpu_ungranted_processes")
        assert ungranted[f'notebookos_gpu_ungranted_processes{{device="GPU-{node}-1"}}'] == 1.0
        assert ungranted[f'notebookos_gpu_ungranted_processes{{device="GPU-{node}-0"}}'] == 0.0

        def event() -> Any:
            evs = core.list_namespaced_event("default", field_selector=f"involvedObject.name={node}").items
            return [e for e in evs if e.reason == "GPUUsedWithoutGrant"]

        [ev] = until(event, 30, "the audit event on the node")
        assert "4242" in ev.message and f"GPU-{node}-1" in ev.message and ev.type == "Warning"
    finally:
        cluster.stop(AGENT)
        cluster.delete_nodes([node])
        try:
            core.delete_collection_namespaced_event("default", field_selector=f"involvedObject.name={node}")
        except ApiException:
            pass

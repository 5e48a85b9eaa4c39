"""What the e2e tests do with a NotebookKernel as a user would: read it and its replicas, connect
a Jupyter client through its status and Secret, and change what a GPU node's agent publishes."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from jupyter_client import BlockingKernelClient
from kubernetes import client

from e2e.testbed.cluster import Cluster
from e2e.testbed.wait import until
from notebookos import labels
from notebookos.connection import connection_info, hmac_key

G, V = "notebookos.io", "v1alpha1"


def apply_kernel(cluster: Cluster, ns: str, name: str, spec: dict[str, Any] | None = None) -> dict[int, str]:
    """`kubectl apply` a NotebookKernel and wait until it is Ready; the node of each replica."""
    body = {"apiVersion": f"{G}/{V}", "kind": "NotebookKernel", "metadata": {"name": name}, "spec": spec or {}}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    until(lambda: (kernel_obj(cluster, ns, name).get("status") or {}).get("phase") == "Ready", 240, f"{name} Ready")
    return {r["spec"]["replicaId"]: r["status"]["nodeName"] for r in replicas_of(cluster, ns, name)}


def kernel_obj(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(cluster.api())
    return dict(api.get_namespaced_custom_object(G, V, ns, "notebookkernels", name))


def replicas_of(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    items = client.CustomObjectsApi(cluster.api()).list_namespaced_custom_object(
        G, V, ns, "kernelreplicas", label_selector=f"{labels.KERNEL_LABEL}={name}"
    )["items"]
    return sorted(items, key=lambda r: r["spec"]["replicaId"])


def condition(cluster: Cluster, ns: str, name: str, type_: str, status: str | None = None) -> dict[str, Any] | None:
    conds = (kernel_obj(cluster, ns, name).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_ and (status is None or c["status"] == status)), None)


def client_for(cluster: Cluster, ns: str, name: str) -> BlockingKernelClient:
    """A Jupyter client connected the way `notebookos connect` connects: the kernel's status names
    its Service and Secret."""
    from notebookos.api import NotebookKernel
    from notebookos.kube import router_pod_ip

    api = cluster.api()
    kernel = NotebookKernel.model_validate(kernel_obj(cluster, ns, name))
    assert kernel.status.connection is not None
    secret = client.CoreV1Api(api).read_namespaced_secret(kernel.status.connection.secret_name, ns)
    host = router_pod_ip(api, ns, kernel.status.connection.service_name)
    assert host is not None
    info = connection_info(kernel, hmac_key(secret.data or {}), host)

    def connected() -> BlockingKernelClient | None:
        # kwok marks the router pod Ready at once; its process may still be binding its ports.
        kc = BlockingKernelClient()
        kc.load_connection_info(info)
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            return kc
        except RuntimeError:
            kc.stop_channels()
            return None

    return until(connected, 120, "the router to answer kernel_info", interval=1.0)


def set_gpu_health(cluster: Cluster, node: str, healthy: bool, broker_url: str | None = None) -> None:
    """What the node agent publishes when a node's GPUs fail (or recover): the inventory annotation.
    With `broker_url`, return once the GPU broker has seen it (its per-node idle GPUs on /metrics):
    the broker learns it from a watch, and a cell sent before then would still be granted GPUs."""
    core = cluster.core()
    annotations = core.read_node(node).metadata.annotations or {}
    inventory = json.loads(annotations[labels.GPU_INVENTORY_ANNOTATION])
    for device in inventory:
        device["healthy"] = healthy
    core.patch_node(node, {"metadata": {"annotations": {labels.GPU_INVENTORY_ANNOTATION: json.dumps(inventory)}}})
    if broker_url is not None:
        seen = (lambda idle: idle > 0) if healthy else (lambda idle: idle == 0)
        until(
            lambda: seen(broker_idle_gpus(broker_url, node)), 30, f"the broker to see {node}'s GPUs healthy={healthy}"
        )


def broker_idle_gpus(broker_url: str, node: str) -> float:
    """The GPU broker's count of idle healthy GPUs on `node` (its Prometheus gauge)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{broker_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "notebookos_node_idle_gpus":
            for sample in family.samples:
                if sample.labels.get("node") == node:
                    return float(sample.value)
    return -1.0

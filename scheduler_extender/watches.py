"""Feeds ClusterState from the API server: GPU-pool nodes, kernel replica pods, and KernelReplica
bindings, each through one Informer (LIST once, then WATCH)."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from notebookos.api.models import GROUP, VERSION, KernelReplica
from notebookos.labels import GPU_POOL_LABEL, GPU_POOL_VALUE, KERNEL_LABEL

from .cluster_state import ClusterState, binding_from_replica, node_info_from_object, object_key, pod_entry_from_object
from .informer import Informer

SYNC_NAMES = frozenset({"nodes", "pods", "replicas"})


def start_watches(api: client.ApiClient, state: ClusterState, *, all_nodes: bool = False) -> list[Informer]:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)

    def synced(name: str) -> Any:
        return lambda: state.synced.add(name)

    def nodes_replace(items: list[dict[str, Any]]) -> None:
        state.replace_nodes({o["metadata"]["name"]: node_info_from_object(o) for o in items})

    def nodes_event(kind: str, o: dict[str, Any]) -> None:
        state.set_node(o["metadata"]["name"], None if kind == "DELETED" else node_info_from_object(o))

    def pods_replace(items: list[dict[str, Any]]) -> None:
        entries = {object_key(o): pod_entry_from_object(o) for o in items}
        state.replace_pods({k: e for k, e in entries.items() if e is not None})

    def pods_event(kind: str, o: dict[str, Any]) -> None:
        state.set_pod(object_key(o), None if kind == "DELETED" else pod_entry_from_object(o))

    def replicas_replace(items: list[dict[str, Any]]) -> None:
        bindings = {object_key(o): binding_from_replica(o) for o in items}
        state.replace_bindings({k: b for k, b in bindings.items() if b is not None})

    def replicas_event(kind: str, o: dict[str, Any]) -> None:
        state.set_binding(object_key(o), None if kind == "DELETED" else binding_from_replica(o))

    node_kwargs: dict[str, Any] = {} if all_nodes else {"label_selector": f"{GPU_POOL_LABEL}={GPU_POOL_VALUE}"}
    informers = [
        Informer("nodes", core.list_node, nodes_replace, nodes_event, on_synced=synced("nodes"), **node_kwargs),
        Informer(
            "pods",
            core.list_pod_for_all_namespaces,
            pods_replace,
            pods_event,
            on_synced=synced("pods"),
            label_selector=KERNEL_LABEL,
        ),
        Informer(
            "replicas",
            custom.list_cluster_custom_object,
            replicas_replace,
            replicas_event,
            on_synced=synced("replicas"),
            group=GROUP,
            version=VERSION,
            plural=KernelReplica.crd_plural,
        ),
    ]
    for i in informers:
        i.start()
    return informers

"""Pod and Node events: a replica's pod changed, or a node with replicas went away."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from notebookos import labels as names

from .. import naming
from ..migration import draining
from ..reconcile import Reconciler


def _route(reconciler: Reconciler, namespace: str, pod_labels: Mapping[str, str]) -> None:
    kernel = pod_labels.get(names.KERNEL_LABEL)
    if not kernel:
        return
    component = pod_labels.get(names.COMPONENT_LABEL)
    rid = pod_labels.get(names.REPLICA_ID_LABEL, "")
    if pod_labels.get(names.CAPACITY_REQUEST_LABEL):
        reconciler.kernel(namespace, kernel)  # placed on a new node, or preempted: look again
    elif component == naming.COMPONENT_REPLICA and rid.isdigit():
        reconciler.replica(namespace, naming.replica_name(kernel, int(rid)))
    elif component == naming.COMPONENT_ROUTER:
        reconciler.kernel(namespace, kernel)


@kopf.on.event("v1", "pods", labels={"app.kubernetes.io/managed-by": names.MANAGED_BY})
def pod_event(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _route(memo["reconciler"], namespace or "", labels)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


# A vanished node (its replicas are replaced) and a node being drained (cordoned, or tainted for
# removal: its kernels move their replicas off). The filters keep the frequent heartbeats of other
# nodes from invoking a handler at all.
def _route_pods_on(reconciler: Reconciler, node: str) -> None:
    selector = naming.label_selector({"app.kubernetes.io/managed-by": names.MANAGED_BY})
    for pod in reconciler.kube.list_pods_on_node(node, selector):
        meta = pod.get("metadata") or {}
        _route(reconciler, meta.get("namespace", ""), meta.get("labels") or {})


@kopf.on.event("v1", "nodes", when=_deleted)
def node_event(name: str, memo: Any, **_: Any) -> None:
    _route_pods_on(memo["reconciler"], name)


def _draining(type: str, body: Mapping[str, Any], **_: Any) -> bool:
    return type != "DELETED" and draining(body)


@kopf.on.event("v1", "nodes", when=_draining)
def node_draining(name: str, memo: Any, **_: Any) -> None:
    # Its replicas record it (their NodeDraining condition), and their kernels move them off.
    _route_pods_on(memo["reconciler"], name)

"""Pod and Node events: a replica's pod changed, or a node with replicas went away."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from notebookos import labels as names

from .. import naming
from ..reconcile import Reconciler


def _route(reconciler: Reconciler, namespace: str, pod_labels: Mapping[str, str]) -> None:
    kernel = pod_labels.get(names.KERNEL_LABEL)
    if not kernel:
        return
    component = pod_labels.get(names.COMPONENT_LABEL)
    rid = pod_labels.get(names.REPLICA_ID_LABEL, "")
    if component == naming.COMPONENT_REPLICA and rid.isdigit():
        reconciler.replica(namespace, naming.replica_name(kernel, int(rid)))
    elif component == naming.COMPONENT_ROUTER:
        reconciler.kernel(namespace, kernel)


@kopf.on.event("v1", "pods", labels={"app.kubernetes.io/managed-by": names.MANAGED_BY})
def pod_event(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _route(memo["reconciler"], namespace or "", labels)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


# Only a vanished node matters here: pods on live nodes report their own changes. (A cordoned node
# is drained by migration, which is not this handler's job.) The filter keeps the frequent node
# heartbeats from invoking the handler at all.
@kopf.on.event("v1", "nodes", when=_deleted)
def node_event(type: str, name: str, memo: Any, **_: Any) -> None:
    reconciler: Reconciler = memo["reconciler"]
    selector = naming.label_selector({"app.kubernetes.io/managed-by": names.MANAGED_BY})
    for pod in reconciler.kube.list_pods_on_node(name, selector):
        meta = pod.get("metadata") or {}
        _route(reconciler, meta.get("namespace", ""), meta.get("labels") or {})
